"""`--preset auto`: the recipe this machine's compute buys in the time budget, and the steps that fill it.

A time budget means different compute on different machines: ten minutes on one core, on a 2-core
AVX2 laptop, on an AMX Xeon or on a GPU differ by orders of magnitude in tokens trained. So `auto`
measures before it trains:

1. The *probe*: a few real training steps of one fixed shape (3 blocks × 384, batch 16, context
   256) in the precision the run will use. Budget × its tokens/s is the run's compute, counted in
   probe tokens, a unit that means the same on every machine.
2. The table (`janelm.presets.COMPUTE_TABLE`, made by the study in docs/quality.md) maps compute to
   the recipe that scored best there: shape, dropout and batch, and how many passes over the text
   it may make (`--max-passes`). The rows measured on a GPU alone (CUDA_ROWS) apply only there.
3. The chosen recipe's own pace (measured the same way; the probe's, when it is the probe's shape)
   gives the first line's estimate. Where that pace says an ensemble's members would reach their
   passes before CLIMB_SHARE of the budget and the next row is more of the same members, or deeper
   ones, `auto` takes the next row (`climb`): the probe's shape stands in for the members'
   imperfectly, and a member more, or a block more in each, is what the rest of the time buys. Past
   the table's last row of members, more of the same members (`grow`, up to MAX_MEMBERS): a faster
   CPU's budget would otherwise end at their passes. The trainer plans the real count from the pace of its own
   steps once warm-up ends, before the count matters to the schedule, and plans it again from the
   steps since then at the end of the hold at the peak rate (`Trainer._plan`, `planned_steps`,
   capped by `--max-passes`). The cosine then follows steps, so `--max-iters N` with the same seed
   replays the run bit for bit, unless the machine's pace then moves by more than 3% either way:
   the rest of the cosine then follows the clock (janelm.schedule), with room for more steps when
   the machine turned quicker (`stretch_limit`).

Pure Python apart from `measure_pace`, which imports torch inside: `janelm train --help` reads this.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from typing import Callable

from janelm.config import ModelConfig, TrainConfig
from janelm.errors import InputError
from janelm.presets import COMPUTE_TABLE, CUDA_ROWS, PROBE_PRESET, preset_configs
from janelm.schedule import cosine_start, fewest_steps_holding_to

# The share of the budget the planned steps fill: evaluations, checkpoint writes and the machine's
# noise take the rest, and the time limit itself (a guard at 100%) catches a slower spell.
FILL = 0.96
EVALS_PER_RUN = 8  # evaluations in a planned run: the log's resolution, and the best.pt checkpoints
# The share of the time left that a run's first plan fills when a hold at the peak rate follows: the
# plan at the hold's end, from hundreds of steps, may add steps but never take them away (every step
# so far was at the peak rate). Timed over the warm-up, the pace was 6-7% quicker than the run
# then kept in five no-flags runs on the Zen 4 (planned 2,592-2,940 steps, 93-98% of them fitted),
# so a full first plan left a slower run no way but the clock, and no `--max-iters` replay.
FIRST_PLAN_SHARE = 0.92
PROBE_SECONDS = 2.5  # of timed steps per measured recipe, after two untimed ones
PLAN_MIN_STEPS = 5  # a planned run warms up for at least this many steps: the pace they show sets its length
# An ensemble row whose members' passes end the run before this share of the budget gives way to the
# next row when that adds members (issue 22: a run ends within 90-100% of its budget). On an AMX Xeon
# the probe read 12.7M for twenty minutes (cpu-3x256-x2), whose two members then reached their 12.5
# passes at 68% of it: 1.4490 bits/char, where three members, 4,825 steps, 87%, scored 1.4443.
CLIMB_SHARE = 0.9
# Past the table's last row of members (three 4 × 256 on a CPU), a faster machine's budget buys more
# of them (`grow`), as many as keep each within its passes, up to this many: 8 fill ten minutes of up
# to ~110M probe tokens on Austen (a CPU's; a GPU takes the gpu row from 60M), and a small text would
# otherwise ask for dozens. Past that the members' passes end the run early again.
MAX_MEMBERS = 8
# A planned run that follows the clock once its machine turns quicker may take as many steps as its
# passes allow, or without --max-passes this many times its plan (a bound the clock ends it before):
# an AMX Xeon whose two busy neighbours left after the plan ran 3× its planned pace.
STRETCH_LIMIT = 4.0


@dataclass(frozen=True)
class Pace:
    """What one recipe costs on this machine."""

    step_s: float  # seconds per optimizer step
    eval_s: float  # seconds per evaluation (train and val batches)
    tokens_per_step: int

    @property
    def tokens_per_s(self) -> float:
        return self.tokens_per_step / self.step_s


def choose_preset(compute: float, cuda: bool = False) -> str:
    """The table's recipe for `compute` probe tokens: the last row whose threshold it reaches (on a
    CPU, of the rows not measured on a GPU alone). The rows are ordered by compute and each scored
    better at its own compute than the rows before it did at theirs, so more compute never chooses
    a worse recipe."""
    chosen = COMPUTE_TABLE[0][1]
    for threshold, preset in COMPUTE_TABLE:
        if compute >= threshold and (cuda or preset not in CUDA_ROWS):
            chosen = preset
    return chosen


def plan_steps(seconds: float, pace: Pace, evals: int = EVALS_PER_RUN) -> int:
    """Optimizer steps that fill FILL of `seconds` at `pace`, with `evals` evaluations among them."""
    usable = seconds * FILL - evals * pace.eval_s
    return max(1, math.floor(usable / pace.step_s))


def planned_steps(cfg: TrainConfig, step: int, seconds_left: float, pace: Pace, train_tokens: int,
                  share: float = 1.0, members: int = 1) -> tuple[int, str]:
    """The run's step count, planned at `step` with `seconds_left` at `pace`, and the plan in words:
    the steps that fill the time (`share` of it), at most --max-passes over the `train_tokens` (by
    each of an ensemble's `members`, which read a share of a step's tokens each), and never fewer
    than keep the hold at the peak rate past the steps already taken at it."""
    fill = step + plan_steps(seconds_left * share, pace) if seconds_left > 0 else step
    steps, plan = fill, f"{fill:,} steps fill {f'{share:.0%} of ' if share < 1 else ''}--max-time {cfg.max_time:g} s"
    cap = pass_cap(cfg, train_tokens, pace.tokens_per_step, members) or fill
    if cap < fill:  # more steps than the text can use: stop early rather than overfit
        steps = max(cap, step)
        each = f" by each of {members} members" if members > 1 else ""
        plan += f", but {cfg.max_passes:g} passes over the {train_tokens:,} training tokens{each} (--max-passes) end at {steps:,}"
    held = fewest_steps_holding_to(cfg, step)
    if steps < held:  # slower than planned: the time limit ends the schedule on the clock if need be
        steps = held
        plan += f", but the rate has held at its peak to step {step}: {held:,}"
    return steps, plan


def pass_cap(cfg: TrainConfig, train_tokens: int, tokens_per_step: int, members: int = 1) -> int:
    """The steps after which --max-passes ends the run (each of `members` reads a share of a
    step's tokens); 0 where there is no cap."""
    return math.ceil(cfg.max_passes * train_tokens * members / tokens_per_step) if cfg.max_passes else 0


def stretch_limit(cfg: TrainConfig, train_tokens: int, tokens_per_step: int, members: int = 1) -> int:
    """How many steps a run planned to `cfg.max_iters` may take if its machine turns quicker and it
    follows the clock instead (janelm.schedule.ends_early): its passes' cap, else STRETCH_LIMIT
    times its plan; 0 where it may take none more (the cap already ends it)."""
    limit = pass_cap(cfg, train_tokens, tokens_per_step, members) or math.floor(STRETCH_LIMIT * cfg.max_iters)
    return limit if limit > cfg.max_iters else 0


def plan_run(cfg: TrainConfig, step: int, seconds_left: float, pace: Pace, train_tokens: int,
             replan: bool, members: int = 1) -> tuple[TrainConfig, int, str]:
    """The run's config planned at `step` (`Trainer._plan`), where it plans again (< 0: nowhere),
    and the plan in words. A first plan followed by a hold at the peak rate fills FIRST_PLAN_SHARE
    of the time and is made again at the hold's end, from the pace since."""
    steps, plan = planned_steps(cfg, step, seconds_left, pace, train_tokens, members=members)
    first_of_two = bool(cfg.lr_hold) and not replan
    if first_of_two and cosine_start(cfg, steps) > step:
        steps, plan = planned_steps(cfg, step, seconds_left, pace, train_tokens, FIRST_PLAN_SHARE, members)
    planned = with_steps(cfg, steps)
    again = cosine_start(planned) if first_of_two and cosine_start(planned) > step else -1
    return planned, again, plan


def with_steps(cfg: TrainConfig, steps: int) -> TrainConfig:
    """A train config for `steps` planned steps: its evaluations and saves spread over the run."""
    every = max(1, math.ceil(steps / EVALS_PER_RUN))
    return replace(cfg, max_iters=steps, eval_interval=every, save_interval=every)


def measure_pace(model_cfg: ModelConfig, train_cfg: TrainConfig, vocab_size: int,
                 seconds: float = PROBE_SECONDS) -> Pace:
    """Time real training steps and one evaluation of this recipe on random tokens, here and now."""
    from janelm.speed import random_token_trainer, time_eval, time_steps

    # Uncompiled: compiling takes longer than the measurement, and the trainer plans from the real pace.
    probe_cfg = replace(train_cfg, max_iters=1_000_000, max_time=0.0, compile=False)
    with random_token_trainer(model_cfg, probe_cfg, vocab_size) as trainer:
        steps, elapsed = time_steps(trainer, seconds=seconds)
        eval_s = time_eval(trainer)
    tokens = train_cfg.batch_size * train_cfg.grad_accum * model_cfg.context
    return Pace(elapsed / steps, eval_s, tokens)


@dataclass(frozen=True)
class AutoChoice:
    """What `--preset auto` measured and chose."""

    preset: str
    compute: float  # probe tokens the budget buys here
    steps: int  # the estimate; the trainer plans the real count after warm-up
    message: str  # the run's first line
    grown: dict[str, int] = field(default_factory=dict)  # config fields past the preset's (`grow`): more members

    @property
    def flags(self) -> list[str]:
        """The recipe as `janelm train` flags: what replays it (with --max-iters) or another process takes."""
        return recipe_flags(self.preset, self.grown)


def recipe_flags(preset: str, grown: dict[str, int]) -> list[str]:
    """`--preset NAME` and the config fields `grow` added, as flags."""
    from janelm.cli import flag  # the CLI imports this module for its help

    return ["--preset", preset, *(x for name, value in grown.items() for x in (flag(name), str(value)))]


def choose_by_measuring(budget: float, vocab_size: int, train_tokens: int,
                        configs_for: Callable[..., tuple[ModelConfig, TrainConfig]]) -> AutoChoice:
    """Measure the probe here, choose the table's recipe for the compute `budget` seconds buy, and
    estimate its steps from its own pace (over `train_tokens`, which its passes count).
    `configs_for(preset, **fields)` is the run's configs with that preset and those config fields
    (the user's flags applied over both), on the run's device and in its precision."""
    from janelm.device import describe_machine, pick_device, pick_dtype

    start = time.perf_counter()
    # The table is indexed by what the probe's own shape and batch train here: the user's model flags
    # and batch apply to the row chosen, not to the measurement (`--dropout 0.3` had the probe read
    # 12,139 tokens/s where it reads 17,276); the device, precision and compiling are the run's.
    own_model, own_train = preset_configs(PROBE_PRESET)
    run_model, run_train = configs_for(PROBE_PRESET)
    probe_model = replace(own_model, vocab_size=run_model.vocab_size)
    probe_train = replace(run_train, batch_size=own_train.batch_size, grad_accum=own_train.grad_accum)
    probe = measure_pace(probe_model, probe_train, vocab_size)
    compute = budget * probe.tokens_per_s
    device = pick_device(run_train.device)
    preset = choose_preset(compute, cuda=device.type == "cuda")
    model_cfg, train_cfg = configs_for(preset)
    same = (model_cfg, replace(train_cfg, max_iters=0, max_time=0)) == (probe_model, replace(probe_train, max_iters=0, max_time=0))
    pace = probe if same else measure_pace(model_cfg, train_cfg, vocab_size)
    climbed = []  # the rows passed over, and where their members' passes would have ended the run
    grown: dict[str, int] = {}  # flags past the table's last row of members: more of them
    while True:
        left = budget - (time.perf_counter() - start)  # the measurements came out of the budget
        fill = plan_steps(left, pace)
        steps = planned_steps(train_cfg, 0, left, pace, train_tokens, members=model_cfg.members)[0]  # --max-passes
        if steps >= CLIMB_SHARE * fill:
            break
        more = climb(preset, model_cfg, train_cfg, configs_for)
        flags = grow(preset, model_cfg, train_cfg, fill, train_tokens, configs_for) if more is None else {}
        if more is None and not flags:
            break
        who = f"{model_cfg.members} members'" if grown else f"{preset}'s"
        climbed.append(f"{who} at {steps / fill:.0%}" if climbed else
                       f"{preset}'s members would reach their {train_cfg.max_passes:g} passes at {steps / fill:.0%} of the budget")
        if flags:
            grown = flags
            model_cfg, train_cfg = configs_for(preset, **flags)
        else:
            preset, model_cfg, train_cfg = more
        pace = measure_pace(model_cfg, train_cfg, vocab_size)
    machine = describe_machine(device, pick_dtype(train_cfg.dtype, device))
    passed_over = f" ({', '.join(climbed)})" if climbed else ""
    recipe = "preset " + " ".join(recipe_flags(preset, grown)[1:])
    message = (f"auto: {machine} ≈ {probe.tokens_per_s:,.0f} tokens/s at {describe_shape(probe_model)} → "
               f"{budget:g} s ≈ {tokens_text(compute)} tokens → {recipe}{passed_over}: {describe_shape(model_cfg)}, "
               f"batch {train_cfg.batch_size}, ≈ {steps:,} steps (--preset NAME picks another)")
    return AutoChoice(preset, compute, steps, message, grown)


def climb(preset: str, model_cfg: ModelConfig, train_cfg: TrainConfig,
          configs_for: Callable[[str], tuple[ModelConfig, TrainConfig]]) -> tuple[str, ModelConfig, TrainConfig] | None:
    """The table's next row and its configs if it trains members of the same width as `preset`'s,
    each on as many rows a step, and more of them or deeper ones: what the time the members' passes
    leave over buys; else None."""
    rows = [name for _, name in COMPUTE_TABLE]
    if preset not in rows or rows.index(preset) + 1 == len(rows):
        return None
    following = rows[rows.index(preset) + 1]
    try:
        next_model, next_train = configs_for(following)
    except InputError:  # the user's flags do not fit it (a --batch-size its members cannot share)
        return None
    now, then = (model_cfg.members, model_cfg.n_block), (next_model.members, next_model.n_block)
    more = all(b >= a for a, b in zip(now, then)) and then != now
    if model_cfg.members == 1 or not more:  # a single model's row does not climb (docs/quality.md)
        return None

    def member(m: ModelConfig, t: TrainConfig) -> tuple[ModelConfig, TrainConfig]:
        return replace(m, members=1, n_block=0), replace(t, batch_size=t.batch_size // m.members)

    same = member(model_cfg, train_cfg) == member(next_model, next_train)
    return (following, next_model, next_train) if same else None


def grow(preset: str, model_cfg: ModelConfig, train_cfg: TrainConfig, fill: int, train_tokens: int,
         configs_for: Callable[..., tuple[ModelConfig, TrainConfig]]) -> dict[str, int]:
    """Where no next row of members follows (`climb` found none: the table's last, or the user's
    flags fix the rest): the flags for as many more of the same members as the `fill` steps' time
    buys, each within its passes, up to MAX_MEMBERS; {} where that adds none (a single model, the
    user's own --members or --batch-size, no --max-passes, or the cap)."""
    if model_cfg.members == 1 or not train_cfg.max_passes:
        return {}
    rows = train_cfg.batch_size // model_cfg.members  # each member's rows a step, as the row trains them
    # A step's cost grows with its members: the time that fills `fill` steps of these fills
    # fill × members / k steps of k, each member then reading `passes` × members / k passes.
    passes = fill * rows * model_cfg.context / train_tokens
    members = min(MAX_MEMBERS, math.ceil(passes * model_cfg.members / train_cfg.max_passes))
    flags = {"members": members, "batch_size": members * rows}
    try:
        more_model, more_train = configs_for(preset, **flags)
    except InputError:  # the user's --members cannot share the batch of more
        return {}
    if members <= model_cfg.members or (more_model.members, more_train.batch_size) != (members, members * rows):
        return {}
    return flags


def describe_shape(model_cfg: ModelConfig) -> str:
    dropout = f", dropout {model_cfg.dropout:g}" if model_cfg.dropout else ""
    shape = f"{model_cfg.n_block} blocks × {model_cfg.n_embed}{dropout}"
    return f"{model_cfg.members} models of {shape}, averaged" if model_cfg.members > 1 else shape


def tokens_text(n: float) -> str:
    """4.2M, 830k: a token count for a one-line message."""
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.0f}k"
