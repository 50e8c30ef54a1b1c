"""`janelm train`: wire the flags, a preset and the corpus to the Trainer, then report."""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import fields, replace
from pathlib import Path

from janelm.cli import flag
from janelm.config import ModelConfig, TrainConfig
from janelm.errors import InputError
from janelm.presets import AUTO, DEFAULT_BUDGET, PROBE_PRESET, preset_configs
from janelm.recipe import with_steps

FINE_TUNE_LR_FACTOR = 0.1  # fine-tuning starts from trained weights: a gentler default step


def resolve_preset(args: argparse.Namespace) -> str:
    """The preset to start from. Until `auto` has measured this machine (`choose_auto`, once the
    corpus is read), it stands for the probe's preset, against which flags are checked."""
    return PROBE_PRESET if args.preset == AUTO else args.preset


# Of --max-time, left beside the decode step's compilation for the final evaluation and the process's
# own exit after compiling (2.3 s measured on 2 cores): without it a no-flags run ended 3.9 s past 600.
FINAL_SECONDS = 3.0


def choose_auto(args: argparse.Namespace, vocab_size: int, train_tokens: int) -> None:
    """Resolve `--preset auto` by measuring this machine (janelm.recipe) and say what it measured
    and chose on the run's first line.
    Under a torchrun started by hand every process would measure alone and might choose apart,
    so there auto takes the probe's preset."""
    from janelm.console import note
    from janelm.recipe import choose_by_measuring

    if os.environ.get("RANK") is not None:
        args.preset = PROBE_PRESET
        if os.environ["RANK"] == "0":
            note(f"preset {PROBE_PRESET} (auto does not measure under torchrun: pass --preset NAME, or use --nproc)")
        return
    budget = args.max_time or default_budget(args)
    if args.max_iters is None:
        args.max_time = budget  # the chosen recipe trains for the budget: the trainer plans its steps
    choice = choose_by_measuring(budget, vocab_size, train_tokens, lambda preset, **grown: configs_for_preset(args, preset, **grown))
    note(choice.message)
    args.preset = choice.preset
    for name, value in choice.grown.items():  # more members than the preset's (never a flag the user gave)
        setattr(args, name, value)
    args.recipe = " ".join(choice.flags)


def default_budget(args: argparse.Namespace) -> float:
    import torch

    cuda = torch.cuda.is_available() and getattr(args, "device", None) != "cpu"
    return DEFAULT_BUDGET["cuda" if cuda else "cpu"]


def configs_for_preset(args: argparse.Namespace, preset: str, **grown) -> tuple[ModelConfig, TrainConfig]:
    """The run's configs had `--preset` been `preset` and `grown` (config fields) been flags the
    user did not give: the user's own flags win."""
    own = {name: value for name, value in grown.items() if getattr(args, name, None) is None}
    return configs_from_args(argparse.Namespace(**{**vars(args), **own, "preset": preset}))


def configs_from_args(args: argparse.Namespace, base: dict | None = None, source: str = "--resume",
                      training: bool = True) -> tuple[ModelConfig, TrainConfig]:
    """Dataclass defaults ← the preset (or the resumed run's configs) ← flags the user gave.

    `base` is the checkpoint a run continues (`--resume`) or starts from (`--init-from`): its model
    is kept, so model flags may repeat its values (the user's own command again) but not change them.
    `training` False (`bench sample`): the batch is not trained on, so --members need not split it."""
    if base is not None and source == "--resume":  # the run's own configs: the preset has no say
        model_cfg = ModelConfig.from_dict(base["model_config"])
        train_cfg = TrainConfig.from_dict(base["train_config"])
    else:
        model_cfg, train_cfg = preset_configs(resolve_preset(args))
        if base is not None:
            model_cfg = ModelConfig.from_dict(base["model_config"])
    given = lambda cfg: {f.name: getattr(args, f.name) for f in fields(cfg)  # noqa: E731
                         if getattr(args, f.name, None) is not None}
    if base is not None:
        owner = "the run" if source == "--resume" else "the checkpoint"
        differ = [f"{as_flag(k, v)}, but {owner} has {as_flag(k, getattr(model_cfg, k), bare=True)}"
                  for k, v in given(model_cfg).items() if v != getattr(model_cfg, k)]
        if differ:
            raise InputError(f"{source} keeps {owner}'s model: {'; '.join(differ)}: "
                             f"drop {'that flag' if len(differ) == 1 else 'those flags'}, or train a new run")
    plans_its_steps = train_cfg.max_iters == 0 and train_cfg.max_time > 0  # a time-bound recipe
    preset_members = model_cfg.members
    model_cfg, train_cfg = replace(model_cfg, **given(model_cfg)), replace(train_cfg, **given(train_cfg))
    if model_cfg.members != preset_members and getattr(args, "batch_size", None) is None:
        # --members alone: each member trains on as many rows a step as the preset's do
        train_cfg = replace(train_cfg, batch_size=train_cfg.batch_size // preset_members * model_cfg.members)
    if getattr(args, "init_from", None) and args.lr is None:
        train_cfg = replace(train_cfg, lr=train_cfg.lr * FINE_TUNE_LR_FACTOR)
    if getattr(args, "max_time", None) and args.max_iters is None:
        train_cfg = replace(train_cfg, max_iters=0)  # a time budget alone: the trainer plans its steps
    elif getattr(args, "max_iters", None) and args.max_time is None:
        train_cfg = replace(train_cfg, max_time=0.0)  # a step budget alone: replays a run bit for bit
        spaced = any(getattr(args, name, None) is not None for name in ("eval_interval", "save_interval"))
        if plans_its_steps and not spaced:
            # and evaluates where the planned run did, so it keeps the same best.pt
            train_cfg = with_steps(train_cfg, train_cfg.max_iters)
    model_cfg.validate()
    train_cfg.validate()
    if training and train_cfg.batch_size % model_cfg.members:
        raise InputError(f"--batch-size {train_cfg.batch_size} does not split among --members {model_cfg.members}: "
                         f"give a multiple of {model_cfg.members} (each member trains on its share of the rows)")
    return model_cfg, train_cfg


def as_flag(name: str, value, bare: bool = False) -> str:
    """A config value as the flag that sets it: `--n-block 4`, `--no-bias` (`bare`: `4`, `--no-bias`)."""
    if isinstance(value, bool):
        return flag(name) if value else "--no-" + flag(name)[2:]
    return str(value) if bare else f"{flag(name)} {value}"


def launch_torchrun(args: argparse.Namespace) -> int:
    """`--nproc N` re-runs this command under torchrun with N processes on this machine."""
    import subprocess

    if args.nproc < 1:
        raise InputError(f"--nproc must be at least 1, got {args.nproc}")
    if getattr(args, "device", None) != "cpu":
        from janelm.distributed import check_cuda_ranks

        check_cuda_ranks(args.nproc)
    argv, skip = [], False
    for a in args.argv[args.argv.index("train") + 1 :]:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            argv.append(a)
    if args.preset == AUTO and not (args.resume or args.init_from):  # measured here, once, for every process
        from janelm.data import load_corpus

        corpus = load_corpus(args.data)
        choose_auto(args, corpus.tokenizer.vocab_size, len(corpus.train))
        argv += args.recipe.split() + ([] if args.max_iters else ["--max-time", str(args.max_time)])
    cmd = [sys.executable, "-m", "janelm.launch", "--standalone", f"--nproc_per_node={args.nproc}",
           "-m", "janelm", "train", *argv]
    return subprocess.call(cmd)


def run(args: argparse.Namespace) -> int:
    if args.resume and args.init_from:
        raise InputError("--resume and --init-from cannot be combined: resume continues a run, init-from starts a new one")
    from janelm.data import check_corpus_folder

    check_corpus_folder(Path(args.data))  # before `train` says which preset it takes: one line for a newcomer
    if not args.resume:
        configs_from_args(args)  # bad flags fail here, before any data or checkpoint is read
    if args.nproc != 1 and "RANK" not in os.environ:
        check_run_folder(args)  # what the processes would refuse, said once before they start
        return launch_torchrun(args)
    from janelm.files import locked_folder

    # One run per folder, checked before --force or --resume touch it; rank 0 alone writes there.
    with locked_folder(Path(args.out), "train") if os.environ.get("RANK", "0") == "0" else nullcontext():
        return train(args)


def check_resumable(out: Path) -> None:
    from janelm.checkpoint import LAST

    if not (out / LAST).is_file():
        raise InputError(f"--resume: no last.pt in {out}/ to resume from: start the run with `janelm train` "
                         f"(no --resume) first, or pass the run's --out")


def check_run_folder(args: argparse.Namespace) -> None:
    """What each process of `--nproc` would refuse, said once before they start: --resume needs a
    run in --out, a new run a folder that holds none (or --force), and flags that fit the model a
    run continues or starts from."""
    from janelm.checkpoint import refuse_to_overwrite

    if args.resume:
        check_resumable(Path(args.out))
    elif not args.force:
        refuse_to_overwrite(Path(args.out))
    resume, init = checkpoints_of(args)
    if resume or init:
        configs_from_args(args, resume or init, "--resume" if resume else "--init-from")


def checkpoints_of(args: argparse.Namespace) -> tuple[dict | None, dict | None]:
    """The checkpoint the run resumes (--resume), and the one it starts from (--init-from)."""
    from janelm.checkpoint import LAST, load_checkpoint, resolve_checkpoint

    resume = load_checkpoint(Path(args.out) / LAST) if args.resume else None
    return resume, load_checkpoint(resolve_checkpoint(args.init_from)) if args.init_from else None


def train(args: argparse.Namespace) -> int:
    began = time.perf_counter()  # --max-time is the command's: loading PyTorch and the corpus, auto's probe, count
    if args.resume:
        check_resumable(Path(args.out))

    from janelm.console import note
    from janelm.data import load_corpus
    from janelm.decode_step import compile_for_sampling
    from janelm.device import describe_dtype, emulated_bf16_warning, pick_device
    from janelm.distributed import Distributed
    from janelm.step_cache import compile_estimate_s
    from janelm.trainer import Trainer

    resume, init = checkpoints_of(args)
    corpus = load_corpus(args.data)
    if args.preset == AUTO and not (resume or init):
        choose_auto(args, corpus.tokenizer.vocab_size, len(corpus.train))
    model_cfg, train_cfg = configs_from_args(args, resume or init, "--resume" if resume else "--init-from")
    dist = Distributed.from_environment(train_cfg.device)
    compile_decode = train_cfg.compile_decode and (dist.device or pick_device(train_cfg.device)).type == "cpu"
    keep_at_end = None
    # The budget holds the compilation too (a resumed run's recorded budget already does, unless given again).
    if compile_decode and train_cfg.max_time and (args.max_time is not None or not resume):
        def keep_at_end(train_compile_s: float) -> tuple[float, str]:
            return (compile_estimate_s(model_cfg, train_compile_s=train_compile_s) + FINAL_SECONDS,
                    "to compile the decode step for `janelm sample` and finish")
    try:
        trainer = Trainer(model_cfg, train_cfg, corpus, Path(args.out), resume=resume, init=init, force=args.force,
                          progress=not args.quiet, dist=dist, started=began, keep_at_end=keep_at_end)
        if dist.is_main:
            m = trainer.model
            note(f"model: {m.num_params() / 1e6:.2f}M parameters ({m.num_params(embeddings=False) / 1e6:.2f}M "
                 f"without embeddings), {trainer.model_cfg.n_block} blocks × {trainer.model_cfg.n_embed} wide, "
                 f"context {trainer.model_cfg.context}; {trainer.device.type}, "
                 f"{describe_dtype(train_cfg.dtype, trainer.device, trainer.dtype)}"
                 + (f", {dist.world_size} processes" if dist.active else "")
                 + (f"; resuming at step {trainer.state.step}" if args.resume else ""))
            if args.resume and 0 < trainer.cfg.max_iters <= trainer.state.step:
                note(f"the run is already at step {trainer.state.step}, --max-iters {trainer.cfg.max_iters}: nothing to "
                     f"train; give a larger --max-iters to go on")
            if corpus.extra_start is not None:  # what the run draws from the extra text, and when
                note(trainer.mix.describe(train_cfg.extra_weight, trainer.cfg))
            if warning := emulated_bf16_warning(trainer.dtype, trainer.device):
                note(warning)
        summary = trainer.run()
    finally:
        dist.close()
    if dist.is_main:
        if compile_decode:
            summary["decode_compile_s"] = compile_for_sampling(Path(args.out) / "best.pt")
        show_summary(summary, corpus.meta, Path(args.out), getattr(args, "recipe", f"--preset {args.preset}"))
    return 0


def show_summary(summary: dict, meta: dict, out: Path, recipe: str) -> None:
    """The run's table on stderr; `recipe` is its preset as flags (auto's choice, members it added)."""
    from rich.table import Table

    from janelm.console import stderr

    cpt = (meta.get("chars_per_token") or {}).get("val")
    best = summary["best_val_loss"]
    table = Table(title=f"training finished ({summary['stop']}) → {out}/", title_justify="left", show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_row("best val loss", f"{best:.4f} nats/token")
    if cpt and math.isfinite(best):
        table.add_row("bits per character (val)", f"{best / math.log(2) / cpt:.3f}")
    table.add_row("steps", f"{summary['step']:,}")
    table.add_row("tokens seen", f"{summary['tokens_seen']:,}")
    table.add_row("time", f"{summary['elapsed_s']:.0f} s")
    table.add_row("tokens/s", f"{summary['tokens_per_s']:,.0f}")
    if summary.get("decode_compile_s"):
        table.add_row("decode step compiled in", f"{summary['decode_compile_s']:.0f} s")
    if summary["planned"]:
        table.add_row("replay it bit for bit", f"{recipe} --max-iters {summary['planned']} (the same flags otherwise)")
    elif summary.get("clock_from_s") is not None:
        table.add_row("schedule", f"followed the clock from {summary['clock_from_s']:.0f} s (the machine's pace moved): "
                                  f"--max-iters does not replay it")
    stderr().print(table)
