"""The `janelm` command line: one argparse tree that dispatches to janelm/commands/<name>.py.

Nothing heavy is imported here (no torch, no tiktoken), so `janelm --help` is instant; a
command's module is imported only when that command runs. Errors become one stderr line and an
exit code: 2 for bad usage or input, 1 for failures at run time; `--debug` shows the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from dataclasses import asdict, fields

from janelm import __version__
from janelm.config import (AUTO_COMPILE_TOKENS, DTYPES, MLPS, NORMS, OPTIMIZERS, POSITIONS, SAMPLE_DEFAULTS,
                           STREAM_INTERVAL_S, PrepareDefaults)
from janelm.errors import JaneLMError
from janelm.launch import report_error
from janelm.mixing import SCHEDULE_HELP, extra_weight_arg
from janelm.recipe import CLIMB_SHARE, MAX_MEMBERS
from janelm.presets import (AUTO, COMPUTE_TABLE, CUDA_ROWS, DEFAULT_BUDGET, DEFAULT_PRESET, PRESET_CHOICES, PRESETS, PROBE_PRESET,
                            preset_configs)

MODEL_HELP = {
    "context": "tokens of history the model sees",
    "n_block": "number of transformer blocks",
    "n_embed": "width of the residual stream",
    "n_head": "attention heads per block",
    "n_kv_head": "key/value heads per block, each shared by n_head / n_kv_head query heads (0: n_head)",
    "head_size": "features per head (0: n_embed / n_head)",
    "mlp_ratio": "MLP hidden width as a multiple of n_embed",
    "mlp_hidden": "MLP hidden width itself (0: from --mlp-ratio)",
    "dropout": "dropout probability while training, on the embeddings and residual branches",
    "attention_dropout": "dropout probability on the attention weights while training (slow on the CPU)",
    "norm": f"normalisation layer ({', '.join(NORMS)})",
    "mlp": f"MLP kind ({', '.join(MLPS)})",
    "position": f"position information ({', '.join(POSITIONS)})",
    "tie_embeddings": "share the input embedding and output head weights",
    "bias": "use biases in linear and norm layers",
    "norm_eps": "epsilon inside the norms (0: the precision's eps for rms, 1e-5 for layer)",
    "rope_base": "base of the rotary frequencies",
    "members": "models of this shape trained side by side, each on its share of the batch's rows, their "
               "predictions averaged (an ensemble: what more compute buys where the text limits one model); "
               "without --batch-size each member trains on as many rows as the preset's",
}
TRAIN_HELP = {
    "batch_size": "sequences per micro-batch (per process)",
    "grad_accum": "micro-batches accumulated per optimizer step",
    "lr": "peak learning rate",
    "min_lr_ratio": "final learning rate as a fraction of --lr",
    "warmup_iters": "steps of linear learning-rate warm-up",
    "lr_hold": "share of the steps after warm-up held at the peak rate before the cosine (a time budget "
               "re-plans its steps at the end of the hold)",
    "max_iters": "optimizer steps to train; alone, the run has no time limit and replays bit for bit with the same "
                 "seed (0: as many as --max-time fits, planned from the pace of the warm-up steps, and with "
                 "--lr-hold again at the hold's end)",
    "max_time": "the time budget in seconds, the measurements of auto included; alone, the run plans steps that "
                "fill it, and its schedule follows the clock if the machine then turns slower or quicker; with "
                "--max-iters, a limit that ends the schedule on the clock if the steps would overrun it (0: no time limit)",
    "weight_decay": "AdamW weight decay on weight matrices",
    "average": "evaluate and save an exponential moving average of the weights, with this decay per step (0: off)",
    "beta1": "AdamW beta1",
    "beta2": "AdamW beta2",
    "grad_clip": "clip the gradient norm to this (0: off)",
    "optimizer": f"optimizer ({', '.join(OPTIMIZERS)}); muon updates hidden matrices, AdamW the rest",
    "eval_interval": "steps between evaluations",
    "eval_batches": "fixed batches per evaluation",
    "patience": "stop after this many evaluations without a better val loss (0: never)",
    "save_interval": "steps between saves of the `last` checkpoint",
    "seed": "random seed: the same seed and flags give the same run",
    "device": "auto, cpu or cuda",
    "dtype": f"autocast precision ({', '.join(DTYPES)}); auto: bf16 on GPUs and CPUs with native bf16",
    "max_passes": "a --max-time budget planned into steps stops after this many passes over the training tokens; "
                  "0 is no cap",
    "compile": "compile the model's training step with torch.compile (a failure is a note: training goes on uncompiled)",
    "compile_decode": "on a CPU, compile the decode step for the trained model at the end, inside --max-time, "
                      "so the first `janelm sample` is fast",
    "extra_weight": f"training windows drawn from the corpus's --extra sources: {SCHEDULE_HELP}; the schedule holds A "
                    "through warm-up and the hold and follows the steps, so --max-iters N replays a planned run "
                    "(negative: the corpus's own share, from prepare)",
}
CHOICES = {"norm": NORMS, "mlp": MLPS, "position": POSITIONS, "optimizer": OPTIMIZERS, "dtype": DTYPES,
           "device": ("auto", "cpu", "cuda")}
TYPES = {"extra_weight": extra_weight_arg}  # where a field's default's type is not the flag's
QUANTIZE = ("int8",)


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: the problem and where to look, nothing else."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_config_flags(p: argparse.ArgumentParser, preset: str, why: str = "") -> None:
    """One flag per ModelConfig/TrainConfig field, defaulting to None so a preset or checkpoint
    fills what the user did not give; help shows the preset's value."""
    model_defaults, train_defaults = preset_configs(preset)
    for title, defaults, helps in (("model", model_defaults, MODEL_HELP), ("training", train_defaults, TRAIN_HELP)):
        group = p.add_argument_group(f"{title} (defaults: the {preset!r} preset{why})")
        for f in fields(defaults):
            if f.name not in helps:
                continue
            value = getattr(defaults, f.name)
            text = f"{helps[f.name]} (default: {value})"
            if isinstance(value, bool):
                group.add_argument(flag(f.name), action=argparse.BooleanOptionalAction, default=None, help=text)
            else:
                group.add_argument(flag(f.name), type=TYPES.get(f.name, type(value)), default=None,
                                   choices=CHOICES.get(f.name), metavar=f.name.upper() if f.name not in CHOICES else None,
                                   help=text)


def add_checkpoint_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--checkpoint", default="checkpoints",
                   help="checkpoint file, or run folder (its best.pt) (default: checkpoints)")


def add_sampling_flags(p: argparse.ArgumentParser, seed: bool = True) -> None:
    d = asdict(SAMPLE_DEFAULTS)
    p.add_argument("--temperature", type=float, default=d["temperature"], help=f"sampling temperature; 0 is greedy (default: {d['temperature']})")
    p.add_argument("--top-k", type=int, default=d["top_k"], help=f"sample among the k most likely tokens; 0 is no limit (default: {d['top_k']})")
    p.add_argument("--top-p", type=float, default=d["top_p"], help=f"nucleus sampling: the smallest set of tokens with this much probability (default: {d['top_p']})")
    p.add_argument("--repetition-penalty", type=float, default=d["repetition_penalty"], help=f"discourage tokens already in the window; 1 is none (default: {d['repetition_penalty']})")
    if seed:
        p.add_argument("--seed", type=int, default=None, help="random seed: the same seed and options give the same text (default: random)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    p.add_argument("--dtype", choices=DTYPES, default="auto",
                   help="weight matrices' precision; auto: on the CPU bf16 with AMX, else the fastest format measured (activations stay float32); bf16 on GPUs (default: auto)")
    add_decoding_flags(p)


def add_decoding_flags(p: argparse.ArgumentParser) -> None:
    """How the model runs when generating: both change speed only, apart from int8's rounding."""
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="compile the decoding step (serve: a lone text's and the batches'). On the CPU it is compiled once per model (about 30 s on 2 cores) and kept "
                        "in ~/.cache/janelm ($JANELM_CACHE), and later runs use it without the flag; --no-compile never "
                        "does. On a GPU it is compiled in every run (default: on the CPU, a cached step if there is one, "
                        f"and compiled for -n {AUTO_COMPILE_TOKENS:,} or more; serve compiles at its first start; on a GPU, off)")
    p.add_argument("--quantize", choices=QUANTIZE, default=None,
                   help="store the weight matrices as int8 for generation: fewer bytes per token, slightly different outputs (default: off)")


def bundled_names() -> str:
    """The bundled works' names for --help (which must not fail on a damaged install)."""
    from janelm.bundled import PREFIX, bundled_works

    try:
        return ", ".join(PREFIX + name for name in bundled_works())
    except JaneLMError as e:
        return str(e)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks on errors (default: off)")

    parser = Parser(prog="janelm", description="Train a small language model on Jane Austen, sample it, and measure it.",
                    formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--version", action="version", version=f"janelm {__version__}")
    parser.add_argument("--debug", action="store_true", default=False, help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)

    def command(name: str, help: str, module: str | None = None) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help, parents=[common])
        p.set_defaults(module=module or name)
        return p

    pd = PrepareDefaults()
    p = command("prepare", "clean text, train a tokenizer and write token files")
    p.add_argument("paths", nargs="*", metavar="PATH",
                   help=".txt files, folders of them, - for standard input, or austen:NAME for a work of Jane Austen bundled "
                   f"with JaneLM ({bundled_names()}) (default: all the bundled works)")
    p.add_argument("--gutenberg", metavar="BOOKS", help="download from Project Gutenberg: an author (austen, dickens, eliot) or eBook numbers like 105,1342 (default: none)")
    p.add_argument("--extra", nargs="+", action="extend", default=[], metavar="PATH",
                   help="extra sources: training text only, no validation split taken from them (after the main PATHs) (default: none)")
    p.add_argument("--extra-gutenberg", metavar="BOOKS", help="download extra sources, as --gutenberg: e.g. dickens,eliot (default: none)")
    p.add_argument("--extra-weight", type=float, metavar="W",
                   help="share of training windows drawn from the extra sources, 0 to 1; train --extra-weight overrides it (default: plain mixing, windows uniform over all training text)")
    p.add_argument("--mirror", default=pd.mirror, help=f"Project Gutenberg mirror (default: {pd.mirror})")
    p.add_argument("--out", default=pd.out, help=f"output folder (default: {pd.out})")
    p.add_argument("--tokenizer", choices=("bpe", "char", "gpt2"), default=pd.tokenizer, help=f"tokenizer kind (default: {pd.tokenizer})")
    p.add_argument("--vocab-size", type=int, default=pd.vocab_size, help=f"BPE vocabulary size (default: {pd.vocab_size})")
    p.add_argument("--tokenizer-from", metavar="CKPT", help="encode with a checkpoint's tokenizer, for fine-tuning it (default: none)")
    p.add_argument("--val-fraction", type=float, default=pd.val_fraction, help=f"share of each work held out for validation (default: {pd.val_fraction})")
    p.add_argument("--no-clean", dest="clean", action="store_false", help="do not strip Gutenberg boilerplate or join wrapped lines (default: clean)")
    p.add_argument("--ascii", action="store_true", help="map curly quotes to straight ones and em-dashes to -- (default: off)")
    p.add_argument("--tokenizer-sample", type=int, default=pd.tokenizer_sample, metavar="CHARS", help=f"train the BPE on at most this many characters (default: {pd.tokenizer_sample})")
    p.add_argument("--force", action="store_true", help="replace a corpus already in --out (default: refuse)")

    p = command("train", "train a model on a prepared corpus")
    p.add_argument("--data", default=pd.out, help=f"prepared corpus folder (default: {pd.out})")
    p.add_argument("--out", default="checkpoints", help="run folder for checkpoints and metrics (default: checkpoints)")
    table = ", ".join(f"{preset} from {threshold / 1e6:g}M{' on a GPU' if preset in CUDA_ROWS else ''}"
                      for threshold, preset in COMPUTE_TABLE)
    p.add_argument("--preset", choices=PRESET_CHOICES, default=DEFAULT_PRESET,
                   help=f"named configuration; flags override it (default: {AUTO}: times a few training steps of the "
                   f"{PROBE_PRESET} preset here (a few seconds of the budget), takes the budget × its tokens/s as the "
                   f"run's compute in probe tokens, and picks by compute: {table}; where an ensemble's members would "
                   f"reach their passes before {CLIMB_SHARE * 100:.0f}%% of the budget, it takes the next row of more or deeper "
                   f"members, and past the last one more of them (up to {MAX_MEMBERS}); the budget is --max-time, "
                   f"{DEFAULT_BUDGET['cpu']:g} s on a CPU and {DEFAULT_BUDGET['cuda']:g} s on a GPU without it). "
                   + "; ".join(f"{k}: {v.description}" for k, v in PRESETS.items()))
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt (default: off)")
    p.add_argument("--init-from", metavar="CKPT", help="start from a checkpoint's weights to fine-tune (default: none)")
    p.add_argument("--force", action="store_true", help="replace a run already in --out (default: refuse)")
    p.add_argument("--nproc", type=int, default=1, help="processes to launch with torchrun (default: 1)")
    p.add_argument("--quiet", action="store_true", help="no progress bar (default: off)")
    add_config_flags(p, PROBE_PRESET, ", the probe of auto, which may pick another")

    p = command("sample", "generate text; only the text goes to stdout")
    add_checkpoint_flag(p)
    p.add_argument("-n", "--num-tokens", type=int, default=500, help="new tokens to generate (default: 500)")
    p.add_argument("--prompt", help="text to continue (default: stdin when piped, else a newline)")
    p.add_argument("--prompt-file", metavar="FILE", help="read the prompt from FILE (- for stdin) (default: none)")
    add_sampling_flags(p)
    p.add_argument("--stop", action="append", default=[], metavar="TEXT", help="stop when TEXT appears; repeatable (default: none)")
    p.add_argument("--num-samples", type=int, default=1, help="samples to generate as one batch (default: 1)")
    p.add_argument("--separator", default="\n---\n", help="line between samples (default: a line of ---)")
    p.add_argument("--max-time", type=float, default=0.0, help="stop after this many seconds; 0 is no limit (default: 0)")
    p.add_argument("--no-echo", dest="echo", action="store_false", help="do not print the prompt (default: print it)")

    p = command("eval", "held-out loss, perplexity and bits per character", module="evaluate")
    add_checkpoint_flag(p)
    p.add_argument("files", nargs="*", metavar="FILE", help="text files to score (default: the prepared validation split)")
    p.add_argument("--data", default=None, help="prepared corpus whose val split to score (default: the one the model was trained on)")
    p.add_argument("--batch-size", type=int, default=16, help="windows scored per forward pass (default: 16)")
    p.add_argument("--clean", action="store_true", help="strip Gutenberg boilerplate and join wrapped lines first (default: off)")
    p.add_argument("--json", action="store_true", help="print one JSON object to stdout (default: a table on stderr)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    p.add_argument("--dtype", choices=DTYPES, default="float32",
                   help="weight matrices' precision; float32 gives exact figures, auto is sampling's (default: float32)")
    p.add_argument("--quantize", choices=QUANTIZE, default=None,
                   help="score the model with int8 weight matrices, to see what --quantize costs (default: off)")

    p = command("chat", "talk with a character, in Austen's dialogue form")
    add_checkpoint_flag(p)
    p.add_argument("--as", dest="user", default="Elizabeth", help="the character you speak as (default: Elizabeth)")
    p.add_argument("--with", dest="bot", default="Mr. Darcy", help="the character who answers (default: Mr. Darcy)")
    p.add_argument("--max-reply", type=int, default=120, help="most tokens in one reply (default: 120)")
    add_sampling_flags(p)

    p = command("serve", "serve the model over an OpenAI-compatible HTTP API, with a page to talk to it")
    add_checkpoint_flag(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on; any but loopback needs --api-key (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on; 0 picks a free one (default: 8000)")
    p.add_argument("--api-key", metavar="KEY", default=None,
                   help="clients must send Authorization: Bearer KEY (default: $JANELM_API_KEY, else none)")
    p.add_argument("--model-name", default=None, help="the model's id in the API (default: the run folder's name)")
    p.add_argument("--as", dest="user", default="Elizabeth", help="chat: the character who speaks, unless a request names one (default: Elizabeth)")
    p.add_argument("--with", dest="bot", default="Mr. Darcy", help="chat: the character who answers, unless a request names one (default: Mr. Darcy)")
    p.add_argument("--max-reply", type=int, default=120, help="chat: max_tokens when a request gives none (default: 120)")
    p.add_argument("--max-rows", type=int, default=16, help="texts decoded together in one batch; more wait in the queue (default: 16)")
    p.add_argument("--max-queue", type=int, default=64, help="texts waiting for a row; past that, requests get 429 (default: 64)")
    p.add_argument("--max-tokens", type=int, default=4096, help="the most max_tokens a request may ask for (default: 4096)")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20, help="the largest request body; larger ones get 413 (default: 1048576)")
    p.add_argument("--stream-interval", type=float, default=STREAM_INTERVAL_S, metavar="SECONDS",
                   help="a stream's text goes out at most this often, each chunk all that was decoded since the last "
                        "(the first text and the end at once); 0: every token, at a cost in speed "
                        f"(default: {STREAM_INTERVAL_S})")
    # The cores this process may run on (a container's or taskset's share), not the machine's: two
    # threads on one allowed core decoded 10-20% slower than one (taskset -c 0, 2-core Zen 4).
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    p.add_argument("--threads", type=int, default=cores,
                   help="threads for the model's arithmetic, lone texts and batches alike; 0: PyTorch's choice "
                        f"(default: the cores, here {cores})")
    add_sampling_flags(p, seed=False)

    p = command("bench", "measure speed: sampling or training throughput")
    p.add_argument("what", choices=("sample", "train", "serve"),
                   help="what to measure: generation, training, or janelm serve under concurrent clients")
    p.add_argument("-c", "--checkpoint", default=None, help="measure this checkpoint's model (default: sample and train a random model of the given shape, serve checkpoints/)")
    p.add_argument("--json", action="store_true", help="print one JSON object to stdout (default: a table on stderr)")
    p.add_argument("--steps", type=int, default=0, help="steps or tokens to time (default: 255 new tokens for sample, 20 steps for train)")
    p.add_argument("--vocab-size", type=int, default=100, help="vocabulary of the random model (default: 100)")
    p.add_argument("--quantize", choices=QUANTIZE, default=None,
                   help="sample: decode with int8 weight matrices (the recompute baseline keeps full precision) (default: off)")
    p.add_argument("--num-samples", type=int, default=1,
                   help="sample: also time this many samples decoded as one batch (default: 1, no batch)")
    p.add_argument("--clients", type=int, default=16, help="serve: concurrent streaming clients (default: 16)")
    p.add_argument("--tokens", type=int, default=200, help="serve: tokens each client asks for (default: 200)")
    p.add_argument("--server-threads", type=int, default=0, help="serve: the server's --threads (default: its own default)")
    p.add_argument("--preset", choices=PRESET_CHOICES, default="bench", help="configuration; flags override it (default: bench)")
    add_config_flags(p, "bench")

    p = command("export", "write a model as a transformers folder (Llama or GPT-2), with its tokenizer and a model card")
    add_checkpoint_flag(p)
    p.add_argument("out", metavar="OUT", help="folder to write (config.json, model.safetensors, tokenizer.json, README.md, ...)")
    p.add_argument("--force", action="store_true", help="replace OUT if it is not empty (default: refuse)")

    p = command("plot", "draw the loss curves of one or more runs into a PNG")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders (with metrics.csv)")
    p.add_argument("-o", "--output", default="loss.png", help="PNG file to write (default: loss.png)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    args.argv = argv  # for commands that re-launch themselves (train --nproc)
    if not getattr(args, "command", None):
        parser.print_help(sys.stderr)
        return 2
    # Read by MKL as it loads (with PyTorch, below): without it MKL's float32 products may take
    # another path in another process, and one seed gave two compiled runs (4e-5 apart after 30
    # steps, docs/speed.md). AUTO keeps this CPU's fastest path for good, at no measured cost.
    os.environ.setdefault("MKL_CBWR", "AUTO")
    # cuBLAS replays its sums only with a fixed workspace, read as CUDA starts: compiled training
    # steps run in PyTorch's deterministic mode (janelm.device.deterministic_compiling).
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    code = run_command(args)
    if "RANK" in os.environ:  # a process of a torchrun job, its folder unlocked: janelm.distributed.end_process
        from janelm.distributed import end_process

        end_process(code)
    return code


def run_command(args: argparse.Namespace) -> int:
    """The command's exit code; an error is one line on stderr."""
    try:
        module = importlib.import_module(f"janelm.commands.{args.module}")
        return module.run(args) or 0
    except JaneLMError as e:
        if args.debug:
            traceback.print_exc()
        report_error(f"janelm {args.command}: error: {e}")
        return e.exit_code
    except BrokenPipeError:
        # The reader went away (`janelm sample | head`): stop quietly, and keep Python's exit-time
        # flush of stdout from raising again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        report_error(f"janelm {args.command}: interrupted")
        return 130
    except MemoryError:
        report_error(f"janelm {args.command}: error: out of memory: use a smaller model, batch or input")
        return 1
    except Exception as e:  # a bug, or a failure we did not foresee: still one line unless --debug
        if args.debug:
            raise
        first = str(e).splitlines()[0] if str(e) else ""
        report_error(f"janelm {args.command}: error: {type(e).__name__}: {first[:300]} (run with --debug for the traceback)")
        return 1
