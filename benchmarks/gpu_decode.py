"""Batch-1 decoding on one CUDA GPU against transformers' cached `generate`, in one process.

At the reference shape (`--preset bench`: 6 blocks × 384, context 256, vocabulary 2048, random
weights from seed 0, bf16 as `janelm sample` uses on a GPU) it times, greedy, 255 new tokens:

    janelm, CUDA graph   the default: each cached step replayed from a captured graph
    janelm, eager        the same cached steps launched one kernel at a time
    janelm, recompute    no cache: the whole window again at every step
    janelm, --compile    the cached step compiled (its kernels fused), then replayed from a graph
    transformers         the same weights exported with `janelm export`'s code, loaded with
                         AutoModelForCausalLM and run through `generate` (its own KV cache)

and checks that the graph gives the eager path's greedy tokens, in and past the context (the
window slides at 256). Results are appended to benchmarks/results/gpu_decode.jsonl.

    python3 benchmarks/gpu_decode.py            # needs a CUDA GPU; transformers for the last row
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from janelm.presets import preset_configs  # noqa: E402
from janelm.generate import generate_tokens  # noqa: E402
from janelm.model import GPT  # noqa: E402
from janelm.quantize import inference_weights  # noqa: E402
from janelm.speed import GREEDY, measure_sampling, timed_generation  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "gpu_decode.jsonl"
NEW_TOKENS = 255
VOCAB = 2048


def reference_model() -> GPT:
    """The reference shape with random weights, scaled up so that greedy decoding wanders over the
    vocabulary (at the usual small initialisation it repeats one token: nothing to compare)."""
    torch.manual_seed(0)
    model = GPT(replace(preset_configs("bench")[0], vocab_size=VOCAB)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.1)
    return model


def greedy_tokens(model, n: int, cuda_graphs: bool) -> list[int]:
    return [t.item() for t in generate_tokens(model, [0], n, GREEDY, cuda_graphs=cuda_graphs)]


def agreeing_prefix(a: list[int], b: list[int]) -> int:
    """How many tokens two generations share before they first differ."""
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def transformers_tokens_per_s(model: GPT, dtype: torch.dtype) -> tuple[float, list[int]]:
    """Greedy `generate` of NEW_TOKENS after one prompt token, best of three, and its tokens."""
    from transformers import AutoModelForCausalLM

    from janelm.interop.folder import write_folder
    from janelm.tokenizer.char import CharTokenizer

    tokenizer = CharTokenizer("".join(chr(0x100 + i) for i in range(VOCAB)))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "model"
        write_folder(folder, model.config, model.state_dict(), tokenizer, "benchmark", force=True)
        hf = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).cuda().eval()
    prompt = torch.zeros(1, 1, dtype=torch.long, device="cuda")
    kwargs = dict(max_new_tokens=NEW_TOKENS, do_sample=False, use_cache=True, pad_token_id=0)
    with torch.inference_mode():
        hf.generate(prompt, **{**kwargs, "max_new_tokens": 32})  # warm-up
        best, out = 0.0, None
        for _ in range(3):
            torch.cuda.synchronize()
            start = time.perf_counter()
            out = hf.generate(prompt, **kwargs)
            torch.cuda.synchronize()
            best = max(best, (out.size(1) - 1) / (time.perf_counter() - start))
    return best, out[0, 1:].tolist()


def main() -> None:
    if not torch.cuda.is_available():
        sys.exit("gpu_decode.py needs a CUDA GPU")
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    row: dict = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "dtype": str(dtype)[6:],
                 "date": time.strftime("%Y-%m-%d %H:%M")}
    model = reference_model().cuda()
    ours = measure_sampling(model, dtype, new_tokens=NEW_TOKENS, samples=8)
    row.update({k: ours[k] for k in ("decode_tokens_per_s", "eager_decode_tokens_per_s", "recompute_tokens_per_s",
                                     "prefill_tokens_per_s", "long_decode_tokens_per_s", "batched_decode_tokens_per_s")})
    row["graph_vs_recompute"] = ours["decode_tokens_per_s"] / ours["recompute_tokens_per_s"]

    gpu = inference_weights(reference_model(), "cuda", dtype)
    n = 3 * gpu.config.context  # past the context: the window slides and is processed again
    graphed, eager = greedy_tokens(gpu, n, True), greedy_tokens(gpu, n, False)
    row["greedy_identical"] = graphed == eager
    row["greedy_tokens_compared"] = n
    try:
        hf_speed, hf_tokens = transformers_tokens_per_s(reference_model(), dtype)
        row["transformers_tokens_per_s"] = hf_speed
        row["graph_vs_transformers"] = ours["decode_tokens_per_s"] / hf_speed
        row["transformers_same_first_tokens"] = agreeing_prefix(graphed, hf_tokens)
    except Exception as e:  # noqa: BLE001 - the comparison is optional; our figures still count
        row["transformers_error"] = f"{type(e).__name__}: {e}"[:300]
    # --compile: the step's kernels fused by torch.compile, then captured in the same CUDA graph.
    try:
        timed_generation(gpu, [0], 32, True, compile=True)  # compilation
        row["compiled_decode_tokens_per_s"] = max(timed_generation(gpu, [0], NEW_TOKENS, True, compile=True)
                                                  for _ in range(3))
        compiled = [t.item() for t in generate_tokens(gpu, [0], n, GREEDY, compile=True)]
        row["compiled_same_first_tokens"] = agreeing_prefix(compiled, eager)
    except Exception as e:  # noqa: BLE001 - recorded, so the other figures still land
        row["compiled_error"] = f"{type(e).__name__}: {e}"[:300]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with open(RESULTS, "a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row, indent=1))


if __name__ == "__main__":
    main()
