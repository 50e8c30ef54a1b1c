"""How often a greedy text decoded in a batch parts from the same request decoded alone.

    python3 benchmarks/serve_parting.py -c CKPT [--rows 16] [--tokens 200] [--dtype auto]

Each of --rows prompts (Austen's openings, then their first sentences cut at different words) runs
alone through the server's batcher, then all together as one batch; prints one JSON object: how
many texts parted, and at which token each first differed. Alone, a request is `janelm sample`'s
text exactly; a batch rounds its products as batched arithmetic does.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from janelm.checkpoint import load_model  # noqa: E402
from janelm.device import pick_device, pick_weight_dtype  # noqa: E402
from janelm.config import SamplingOptions  # noqa: E402
from janelm.serving.batcher import Batcher  # noqa: E402
from janelm.serving.jobs import Job  # noqa: E402

OPENINGS = ("It is a truth universally acknowledged, that a single man in possession of a good fortune",
            "Emma Woodhouse, handsome, clever, and rich, with a comfortable home and happy disposition",
            "The family of Dashwood had long been settled in Sussex. Their estate was large",
            "No one who had ever seen Catherine Morland in her infancy would have supposed her born")


def decode(batcher: Batcher, prompts: list[list[int]], tokens: int) -> list[str]:
    """Greedy texts of `tokens` tokens per prompt, all submitted at once (one batch when they fit)."""
    texts: list[list[str]] = [[] for _ in prompts]
    finished = threading.Semaphore(0)

    def deliver(i: int):
        def take(event) -> None:
            texts[i].append(event.text)
            if event.finish:
                finished.release()
        return take

    batcher.submit([Job(p, tokens, SamplingOptions(temperature=0), 0, [], deliver(i)) for i, p in enumerate(prompts)])
    for _ in prompts:
        finished.acquire()
    return ["".join(t) for t in texts]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--checkpoint", required=True)
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--dtype", default="auto")
    args = parser.parse_args()
    device = pick_device("auto")
    model, tokenizer, _ = load_model(args.checkpoint, device, pick_weight_dtype(args.dtype, device))
    prompts = [tokenizer.encode(" ".join(OPENINGS[i % len(OPENINGS)].split()[: 3 + i // len(OPENINGS)]))
               for i in range(args.rows)]
    batcher = Batcher(model, tokenizer, max_rows=args.rows, max_waiting=args.rows).start()
    alone = [decode(batcher, [p], args.tokens)[0] for p in prompts]
    together = decode(batcher, prompts, args.tokens)
    batcher.close(0)
    batcher.join(10)  # a decoding thread still running at exit aborts the interpreter
    parted = [next((i for i, (a, b) in enumerate(zip(x, y)) if a != b), None) for x, y in zip(alone, together)]
    print(json.dumps({"rows": args.rows, "tokens": args.tokens, "dtype": str(model.tok_embed.weight.dtype),
                      "weights": args.dtype, "batch_step": "compiled" if batcher.batch_step else "eager", "parted": sum(p is not None for p in parted),
                      "first_difference_at_character": parted, "torch": torch.__version__}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
