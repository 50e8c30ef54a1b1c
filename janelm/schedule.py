"""The learning-rate schedule and the run's budget: warm-up, a hold, then a cosine that always finishes.

A run has a step budget (`max_iters`), a time budget (`max_time`), or both. After warm-up the
rate may hold at its peak for a share of the steps (`lr_hold`) before the cosine starts: nothing
up to there depends on the run's length, so a time budget can plan its steps from the pace of the
steps so far and plan them again at the end of the hold, and `--max-iters N` still replays the
run. The cosine follows steps while the run will end by steps: the learning rate is then a
function of the step alone, so the same seed reproduces a run bit for bit. When the pace
measured so far says the time limit will come first (a machine slower than planned for), the run
becomes *time-bound*: from that moment the rest of the cosine is spread over the time left,
starting from where it was, so the learning rate still reaches its floor as the time runs out
instead of being cut off half-way down. A planned run whose machine turns quicker, so that its
steps would end well before the time (`ends_early`), follows the clock the same way from where it
is, with room for more steps (janelm.trainer), whether it followed the steps or the clock before.
The moment of the switch is kept in the run's state, so a resumed run continues the same schedule.

Nothing here reads a clock: callers pass elapsed seconds, so tests can use a fake one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

from janelm.config import TrainConfig

MIN_STEPS_TO_PROJECT = 10  # steps timed in this process before their pace is trusted
# A projected end this share past the time limit still leaves the run bound by steps: were it
# right, the limit would cut the cosine at 97%, within 0.3% of its range from the floor. A run
# planned to fill 96% of its time would otherwise go over to the clock at a few slower steps.
OVERRUN_TOLERANCE = 0.03
# A planned run (its steps fill 96% of the time: janelm.recipe.FILL) whose pace then says its steps
# end before this share of the time follows the clock for the rest: 3% either way stays by steps.
# On an AMX Xeon whose steps went from 0.201 to 0.155 s after the plan, a ten-minute run ended at 8.3.
EARLY_END_SHARE = 0.93
EARLY_STOP_AFTER = 0.5  # share of the budget before evaluations without improvement count


class Progress(Protocol):
    """What the schedule reads of a run's state (janelm.trainer.RunState)."""

    step: int
    elapsed: float
    time_bound_progress: float  # the schedule's progress when the run became time-bound; < 0: never
    time_bound_elapsed: float  # seconds of training at that moment


def _fraction(x: float) -> float:
    return min(max(x, 0.0), 1.0)


def cosine_start(cfg: TrainConfig, max_iters: int | None = None) -> int:
    """The step the cosine starts from (in a run of `max_iters` steps, else the config's): the end
    of warm-up and of the hold at the peak rate."""
    steps = cfg.max_iters if max_iters is None else max_iters
    return cfg.warmup_iters + math.ceil(cfg.lr_hold * max(0, steps - cfg.warmup_iters))


def fewest_steps_holding_to(cfg: TrainConfig, step: int) -> int:
    """The smallest `max_iters` whose hold lasts to `step`: a plan made at `step` can end the hold
    no sooner, since every step so far was taken at the peak rate."""
    if not cfg.lr_hold or step <= cfg.warmup_iters:
        return step
    n = cfg.warmup_iters + math.floor((step - cfg.warmup_iters - 1) / cfg.lr_hold)
    while cosine_start(cfg, n) < step:
        n += 1
    return n


def step_progress(cfg: TrainConfig, step: int) -> float:
    """How far the cosine is by steps alone: 0 until `cosine_start`, 1 at `max_iters`."""
    if not cfg.max_iters:
        return 0.0
    start = cosine_start(cfg)
    return _fraction((step - start) / max(1, cfg.max_iters - start))


def schedule_progress(cfg: TrainConfig, state: Progress) -> float:
    """How far the cosine is: by steps, or, once the run is time-bound, by the time left. A time
    budget not planned into steps yet (janelm.trainer plans it after warm-up) is at the start."""
    if not cfg.max_iters:
        return 0.0
    progress = step_progress(cfg, state.step)
    if state.time_bound_progress >= 0 and cfg.max_time:
        start, since = state.time_bound_progress, state.time_bound_elapsed
        by_time = start + (1 - start) * _fraction((state.elapsed - since) / max(cfg.max_time - since, 1e-9))
        progress = max(progress, by_time)
    return progress


def mix_progress(cfg: TrainConfig, state: Progress) -> float:
    """Where the step `state.step` is about to take stands in the extra-text share's schedule
    (janelm.mixing): 0 through warm-up and the hold and at the first step after them, then on by
    steps, as the cosine, to 1 at the last step (max_iters - 1). Before a time budget is planned
    into steps, 0: warm-up and the hold do not depend on the run's length, so the `--max-iters N`
    that replays the run draws the same batches. Once a run is time-bound its share follows the
    clock, as its cosine does, so it still ends on the share it was given."""
    if not cfg.max_iters:
        return 0.0
    return max(mix_step_progress(cfg, state.step), schedule_progress(cfg, state))


def mix_step_progress(cfg: TrainConfig, step: int) -> float:
    """mix_progress by steps alone, for a run whose `max_iters` is known."""
    start = cosine_start(cfg)
    return _fraction((step - start) / max(1, cfg.max_iters - 1 - start))


def learning_rate(cfg: TrainConfig, step: int, progress: float) -> float:
    """Linear warm-up over `warmup_iters` steps, then cosine decay from `lr` to lr * min_lr_ratio as
    `progress` (see `schedule_progress`) goes from 0 to 1 (0 through the hold)."""
    if step < cfg.warmup_iters:
        return cfg.lr * (step + 1) / cfg.warmup_iters
    min_lr = cfg.lr * cfg.min_lr_ratio
    return min_lr + 0.5 * (cfg.lr - min_lr) * (1 + math.cos(math.pi * _fraction(progress)))


@dataclass
class PaceMeter:
    """What this process's training steps and evaluations took, apart: a pace from them leaves out
    what comes once (start-up, compiling, a plan's evaluations), which, spread over the steps taken
    so far, once made every planned run look too slow for its plan right after making it."""

    steps: int = 0
    step_s: float = 0.0
    eval_s: float = math.inf  # the quickest evaluation: the first of a compiled model compiles too

    def add_step(self, seconds: float) -> None:
        self.steps, self.step_s = self.steps + 1, self.step_s + seconds

    def add_eval(self, seconds: float) -> None:
        self.eval_s = min(self.eval_s, seconds)

    def seconds_per_step(self, eval_interval: int = 0) -> float:
        """A step's seconds, with its share of an evaluation every `eval_interval` steps (0: none)."""
        evals = self.eval_s / eval_interval if eval_interval and math.isfinite(self.eval_s) else 0.0
        return self.step_s / max(1, self.steps) + evals


def projected_end(cfg: TrainConfig, state: Progress, pace: PaceMeter) -> float | None:
    """The seconds at which the run reaches `max_iters` at `pace`, with the evaluations after
    `state.step` (every eval_interval steps and at the end); None where there is nothing to project
    (no time limit, too few steps timed)."""
    if not (cfg.max_time and cfg.max_iters) or pace.steps < MIN_STEPS_TO_PROJECT:
        return None
    every = cfg.eval_interval
    evals = cfg.max_iters // every - state.step // every + bool(cfg.max_iters % every)
    eval_s = pace.eval_s if math.isfinite(pace.eval_s) else 0.0
    return state.elapsed + (cfg.max_iters - state.step) * pace.seconds_per_step() + evals * eval_s


def follow_the_clock(cfg: TrainConfig, state: Progress) -> None:
    """Make the rest of the run's cosine follow the time left, from where it is now (a time-bound
    run's too: its steps may have led the clock)."""
    state.time_bound_progress, state.time_bound_elapsed = schedule_progress(cfg, state), state.elapsed


def update_time_bound(cfg: TrainConfig, state: Progress, pace: PaceMeter) -> bool:
    """Make the run time-bound when its `pace` says `max_time` will end it before `max_iters`.
    Returns True when this call made the switch; a time-bound run stays so."""
    projected = projected_end(cfg, state, pace) if state.time_bound_progress < 0 else None
    if projected is None or projected <= cfg.max_time * (1 + OVERRUN_TOLERANCE):
        return False
    follow_the_clock(cfg, state)
    return True


def ends_early(cfg: TrainConfig, state: Progress, pace: PaceMeter) -> bool:
    """Whether `pace` says the run's steps end before EARLY_END_SHARE of `max_time` (a time-bound
    run's too, once its machine has turned quicker again)."""
    projected = projected_end(cfg, state, pace)
    return projected is not None and projected < cfg.max_time * EARLY_END_SHARE


def budget_used(cfg: TrainConfig, state: Progress) -> float:
    """The larger of the step and time fractions used: 1 when either budget is spent."""
    used = state.step / cfg.max_iters if cfg.max_iters else 0.0
    if cfg.max_time:
        used = max(used, state.elapsed / cfg.max_time)
    return used


def patience_counts(cfg: TrainConfig, state: Progress) -> bool:
    """Whether an evaluation without improvement counts towards early stopping. Not in the first
    half of the budget: under a cosine, most of the gain comes as the rate decays, and a plateau at
    the peak rate says nothing about the end (the seed preset once stopped after 44 s of a 150 s
    budget). `best.pt` keeps the best weights anyway, so training on costs only time."""
    return budget_used(cfg, state) >= EARLY_STOP_AFTER
