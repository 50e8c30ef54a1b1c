"""The training loop: optimizer and schedule, evaluation, early stopping, checkpoints, metrics.

Used by `janelm train` and `janelm bench train`. Everything a resumed run needs is in the `last`
checkpoint; batches are a function of (seed, step), so resuming replays the same data.
"""

from __future__ import annotations

import math
import os
import random
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

import torch

from janelm.averaging import WeightAverage
from janelm.checkpoint import BEST, LAST, build_model, checkpoint_tokenizer, refuse_to_overwrite, save_checkpoint
from janelm.config import ModelConfig, TrainConfig
from janelm.console import note, progress_bar
from janelm.data import BatchSampler, Corpus, Mix, tokenizer_fingerprint
from janelm.device import keep_freed_memory, peak_matmul_flops, pick_device, pick_dtype
from janelm.distributed import AgreedClock, Distributed
from janelm.errors import InputError, Interrupted, JaneLMError, catch_stop_signals
from janelm.files import reporting_write_failures
from janelm.metrics_log import METRICS_FILE, MetricsLog
from janelm.ensemble import make_model
from janelm.optim import make_optimizer
from janelm.random_state import rng_state, set_rng_state
from janelm.recipe import PLAN_MIN_STEPS, Pace, plan_run, stretch_limit
from janelm.schedule import (PaceMeter, ends_early, follow_the_clock, learning_rate, mix_progress, patience_counts,
                             projected_end, schedule_progress, update_time_bound)
from janelm.scoring import mean_loss
from janelm.training_step import TrainingStep


@dataclass
class RunState:
    """Counters that move as training goes; saved in every checkpoint."""

    step: int = 0
    tokens_seen: int = 0
    best_val_loss: float = math.inf
    bad_evals: int = 0  # evaluations since the last improvement (early stopping)
    elapsed: float = 0.0  # seconds of training, summed across resumes
    # Where the schedule was when the time limit was found to come first (janelm.schedule); < 0: bound by steps.
    time_bound_progress: float = -1.0
    time_bound_elapsed: float = 0.0
    replan_step: int = -1  # where a planned run with a hold plans its steps again (Trainer._plan); < 0: none
    # The steps a planned run may go on to when its machine turns quicker (Trainer._stretch); 0: none.
    stretch_limit: int = 0


class Trainer:
    """One training run into `out_dir`: fresh, resumed from `out_dir/last.pt`, or fine-tuned from a checkpoint."""

    def __init__(self, model_cfg: ModelConfig, cfg: TrainConfig, corpus: Corpus, out_dir: Path, *,
                 resume: dict[str, Any] | None = None, init: dict[str, Any] | None = None, force: bool = False,
                 progress: bool = True, dist: Distributed | None = None, clock: Callable[[], float] = time.perf_counter,
                 started: float | None = None, keep_at_end: Callable[[float], tuple[float, str]] | None = None):
        """`resume` is the run's last checkpoint to continue; `init` a checkpoint whose weights to
        fine-tune (fresh optimizer and schedule). Either fixes the model config. `clock` (seconds)
        times the budget; tests pass a fake one. `started`: the clock's reading when the budget began
        (`janelm train`'s start, so loading PyTorch and the corpus, auto's measurements and setting up
        this trainer count), else when `run` starts. `keep_at_end(s)`: the seconds of `max_time` kept
        from training for what follows it, and what for, asked once the first step has run (`s`: the
        seconds it took when it compiled the training step, a reading of the compiler's speed; else 0).

        A time budget alone (`max_iters` 0) is planned: after warm-up, whose rates do not depend on
        the run's length, the pace of the steps so far sets `max_iters`, and with a hold
        (`lr_hold`) the pace of the steps since then sets it again at the hold's end (`_plan`)."""
        cfg.validate()
        if not cfg.max_iters and cfg.max_time:
            cfg = replace(cfg, warmup_iters=max(cfg.warmup_iters, PLAN_MIN_STEPS))
        self.dist = dist or Distributed()
        if self.dist.active:  # every process's budget follows one clock, so all end at the same step
            clock, started = AgreedClock(clock, self.dist, clock() if started is None else started), (
                None if started is None else 0.0)
        self.cfg, self.corpus, self.out_dir, self.clock = cfg, corpus, Path(out_dir), clock
        self.progress = progress and self.dist.is_main
        self.device = self.dist.device or pick_device(cfg.device)
        if self.device.type == "cpu":
            keep_freed_memory()
        self.dtype = pick_dtype(cfg.dtype, self.device)
        self.state = RunState()
        self.bar = None
        self.fingerprint = tokenizer_fingerprint(corpus.tokenizer)

        if resume is None:
            self._refuse_to_overwrite(force)
        base = resume or init
        if base is not None:
            if tokenizer_fingerprint(checkpoint_tokenizer(base)) != self.fingerprint:
                flag = "--resume" if resume else "--init-from"
                raise InputError(
                    f"{flag}: the checkpoint uses another tokenizer than the data in {corpus.path}/: "
                    f"prepare the data with `janelm prepare TEXT --tokenizer-from CHECKPOINT`, or pass the run's --data"
                )
            model_cfg = ModelConfig.from_dict(base["model_config"])
        else:
            model_cfg = replace(model_cfg, vocab_size=corpus.tokenizer.vocab_size)
        self.model_cfg = model_cfg
        if len(corpus.val) < model_cfg.context + 2:
            raise InputError(
                f"the validation split has {len(corpus.val)} tokens, fewer than one context of {model_cfg.context}: "
                f"prepare with a larger --val-fraction or more text, or train with a smaller --context"
            )

        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        self.model = build_model(base) if base is not None else make_model(model_cfg)
        self.model.to(self.device).train()
        self.optimizer = make_optimizer(self.model, cfg)
        self.average = WeightAverage(self.model, cfg.average) if cfg.average else None
        if resume is not None:
            self.optimizer.load_state_dict(resume["optimizer"])
            if self.average is not None and resume.get("average"):
                self.average.load_state_dict(resume["average"])
            self.state = RunState(**resume["state"])
            if cfg.max_iters != resume["train_config"]["max_iters"]:  # the user's steps now: none to plan again
                self.state.replan_step, self.state.stretch_limit = -1, 0
            set_rng_state(resume["rng"])
        self.training_step = TrainingStep(self.model, self.optimizer, cfg, self.device, self.dtype, self.dist,
                                          self.average, note)
        self.ctx = self.training_step.ctx  # evaluation runs in the training steps' precision

        sampler = lambda tokens, mix=Mix(): BatchSampler(  # noqa: E731
            tokens, model_cfg.context, cfg.batch_size, cfg.grad_accum, cfg.seed,
            self.dist.rank, self.dist.world_size, self.device, mix)
        # The mix draws training windows from the corpus's groups; val is the main sources' alone.
        self.mix = mix = corpus.mix(cfg.extra_weight)
        self.train_batches = sampler(corpus.train, mix)
        # Every rank evaluates the same fixed batches, so all agree on early stopping.
        self.eval_sets = {"train": sampler(corpus.train, mix).fixed_batches(cfg.eval_batches, salt=1),
                          "val": sampler(corpus.val).fixed_batches(cfg.eval_batches, salt=2)}
        self.metrics = None
        if self.dist.is_main:
            # Created only now that every check has passed: a refused run leaves nothing behind.
            try:
                self.out_dir.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise InputError(f"cannot create {self.out_dir}/ ({e.strerror or e}): choose another --out") from None
            if not os.access(self.out_dir, os.W_OK):
                raise InputError(f"cannot write to {self.out_dir}/: choose another --out")
        self.resumed = resume is not None
        self.planned_steps = 0  # the steps a time budget chose in this process (_plan)
        self.started, self.keep_at_end = started, keep_at_end
        self.pace = PaceMeter()  # this process's steps and evaluations, for the time limit's projection
        self.plan_eval_s = 0.0  # an evaluation's seconds, as the processes agreed at the last plan
        self.save_s = 0.0  # the last periodic write of last.pt, as the processes agreed

    def _refuse_to_overwrite(self, force: bool) -> None:
        if self.dist.is_main and not force:
            refuse_to_overwrite(self.out_dir)

    def _start_run_folder(self) -> None:
        """A new run saves last.pt (step 0) before anything else, so a kill at any later moment
        leaves a run `--resume` continues; then a replaced run's best.pt goes, and metrics.csv
        starts over (or, resumed, keeps the rows up to the checkpoint's step)."""
        if not self.dist.is_main:
            return
        if not self.resumed:
            self.save(LAST)
            with reporting_write_failures(self.out_dir / BEST):
                (self.out_dir / BEST).unlink(missing_ok=True)
        self.metrics = MetricsLog(self.out_dir / METRICS_FILE, self.state.step if self.resumed else None)

    def _payload(self, name: str) -> dict[str, Any]:
        """What checkpoint `name` holds; `best` holds the averaged weights as its model, `last` the
        trained ones and the average beside them (janelm.averaging)."""
        return {
            "average": self.average.state_dict() if self.average is not None and name == LAST else None,
            "model_config": asdict(self.model_cfg),
            "train_config": asdict(self.cfg),
            "tokenizer": self.corpus.tokenizer.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "state": asdict(self.state),
            "rng": rng_state(),
            "data": {"path": str(self.corpus.path), "tokenizer": self.fingerprint,
                     "chars_per_token": self.corpus.meta.get("chars_per_token", {})},
        }

    def save(self, name: str) -> None:
        if self.dist.is_main:
            save_checkpoint(self.out_dir / name, self._payload(name))

    def evaluate(self) -> dict[str, float]:
        return {split: mean_loss(self.model, batches, self.ctx) for split, batches in self.eval_sets.items()}

    def evaluated(self):
        """The weights evaluation scores and `best` keeps: the average where there is one."""
        return self.average.swapped_in() if self.average is not None else nullcontext()

    def _done(self) -> bool:
        cfg, s = self.cfg, self.state
        if not cfg.max_iters and s.step < cfg.warmup_iters:  # a time budget always buys its warm-up and plan
            return False
        out_of_steps = bool(cfg.max_iters) and s.step >= cfg.max_iters
        out_of_time = bool(cfg.max_time) and s.elapsed + self._after_last_step_s() >= cfg.max_time
        return out_of_steps or out_of_time

    def _after_last_step_s(self) -> float:
        """After the last step, inside --max-time: an evaluation, and best.pt and last.pt written as
        long as the last periodic save took (agreed readings: every process ends at the same step)."""
        return self.plan_eval_s + 2 * self.save_s

    def train_step(self) -> float:
        """One optimizer step at the schedule's rate on the step's batches (janelm.training_step);
        returns the mean loss."""
        cfg, s = self.cfg, self.state
        micro = self.train_batches.step_batches(s.step, mix_progress(cfg, s))
        return self.training_step(micro, learning_rate(cfg, s.step, schedule_progress(cfg, s)), s.step)

    def run(self) -> dict[str, Any]:
        """Train until a budget or early stopping ends the run; returns a summary."""
        cfg, s = self.cfg, self.state
        self._start_run_folder()
        tokens_per_step = cfg.batch_size * cfg.grad_accum * self.model_cfg.context * self.dist.world_size
        flops_per_step = self.model.flops_per_token() * tokens_per_step
        peak = peak_matmul_flops(self.device, self.dtype, seconds=0.3) if self.progress else 0.0
        bar = self.bar = self._bar()
        stop_reason = None
        last_loss = math.nan
        start = self.started if self.started is not None else self.clock()
        elapsed_before, step_before = s.elapsed, s.step
        # Paces leave out the first steps of the process (allocation, compilation). A plan's is that
        # of the steps since the last plan (`window`); the time limit's projection goes on from it.
        pace_mark, window = step_before + max(1, (cfg.warmup_iters - step_before) // 5), PaceMeter()
        # The bar closes however the loop ends, so an error line never lands on the end of it.
        with catch_stop_signals() as signals, nullcontext() if bar is None else bar:
            while not self._done():
                t0 = self.clock()
                last_loss = self.train_step()
                if not math.isfinite(last_loss):
                    raise JaneLMError(
                        f"the loss became {last_loss} at step {s.step + 1}; the last good checkpoint in {self.out_dir}/ "
                        f"is kept: lower --lr, or try --dtype float32"
                    )
                s.step += 1
                s.tokens_seen += tokens_per_step
                now = self.clock()
                dt = max(now - t0, 1e-9)
                # Wall time, evaluations included: --max-time is what the user waits.
                s.elapsed = elapsed_before + now - start
                if s.step == step_before + 1 and self.keep_at_end is not None:
                    self._keep_for_the_end(dt if cfg.compile else 0.0)
                    cfg = self.cfg
                if s.step > pace_mark:
                    window.add_step(dt)
                    self.pace.add_step(dt)
                planned_now = (not cfg.max_iters and s.step >= cfg.warmup_iters) or s.step == s.replan_step
                if planned_now:
                    self._plan(window.seconds_per_step() if window.steps else dt, tokens_per_step)
                    cfg, self.pace, window = self.cfg, replace(window, eval_s=self.pace.eval_s), PaceMeter()
                    s.elapsed = elapsed_before + self.clock() - start
                    if bar is not None:
                        bar.total = cfg.max_iters
                elif update_time_bound(cfg, s, self.pace):
                    self._say(f"step {s.step}: at this pace --max-time {cfg.max_time:g} s ends the run before "
                              f"step {cfg.max_iters}; the rest of the schedule now follows the clock")
                if bar is not None:
                    mfu = flops_per_step / dt / peak if peak else 0.0
                    bar.set_postfix_str(f"loss {last_loss:.3f} | {tokens_per_step / dt:,.0f} tok/s | MFU {mfu:.0%}", refresh=False)
                    bar.update(1)
                if (s.step % cfg.eval_interval == 0 or self._done()) and not planned_now:  # the plan evaluated
                    if self._eval_and_log():
                        stop_reason = "early stop"
                        break
                    s.elapsed = elapsed_before + self.clock() - start  # the evaluation counts too
                    if s.step < cfg.max_iters and self._ends_early():
                        expected = self._stretch()
                        cfg = self.cfg
                        if bar is not None:
                            bar.total = expected
                if s.step % cfg.save_interval == 0:
                    t0 = self.clock()
                    self.save(LAST)
                    now = self.clock()
                    self.save_s, s.elapsed = now - t0, elapsed_before + now - start  # the write counts too
                if signals:
                    self.save(LAST)
                    name = signal.Signals(signals[0]).name
                    raise Interrupted(
                        f"{name} received: saved {self.out_dir / LAST} at step {s.step}; "
                        f"continue with `janelm train --resume --out {self.out_dir} --data {self.corpus.path}`",
                        signals[0],
                    )
            # Still under the signal catcher: a Ctrl-C that lands after the last step lets the final
            # checkpoint be written whole, and the finished run ends as finished.
            if stop_reason is None:
                stop_reason = "step budget" if cfg.max_iters and s.step >= cfg.max_iters else "time limit"
            self.save(LAST)
            self._plot()
        return {"stop": stop_reason, "step": s.step, "tokens_seen": s.tokens_seen, "elapsed_s": s.elapsed,
                "planned": self.planned_steps if s.time_bound_progress < 0 else 0,  # a replay follows steps
                "clock_from_s": s.time_bound_elapsed if s.time_bound_progress >= 0 else None,
                "best_val_loss": s.best_val_loss, "last_train_loss": last_loss,
                "tokens_per_s": s.tokens_seen / s.elapsed if s.elapsed else 0.0}

    def _keep_for_the_end(self, first_step_s: float) -> None:
        keep, what = self.keep_at_end(first_step_s)
        total = self.cfg.max_time
        self.cfg = replace(self.cfg, max_time=max(total - keep, 1.0))
        self._say(f"--max-time {total:g} s: {self.cfg.max_time:g} s of training, and about {keep:.0f} s {what}")

    def _plan(self, step_s: float, tokens_per_step: int) -> None:
        """Turn the time budget into steps, at the end of warm-up: an evaluation (logged, and timed),
        then as many steps as `step_s`, the pace measured so far, fits in the time left
        (janelm.recipe). From here on the run is bound by steps, like `--max-iters N`, which replays
        it bit for bit. With a hold at the peak rate (`lr_hold`), planned again at its end from the
        pace since: on a noisy machine a pace timed over seconds can be off by a third."""
        s, cfg = self.state, self.cfg
        replan = s.step == s.replan_step
        if replan and s.time_bound_progress >= 0:  # the clock already ends the schedule
            s.replan_step = -1
            return
        start = self.clock()
        self._eval_and_log()
        eval_s = self.clock() - start
        if cfg.compile and not replan:  # that first evaluation compiled the no-grad graph (7 s against 0.5): time another
            start = self.clock()
            self.evaluate()
            eval_s = self.clock() - start
        self.plan_eval_s = eval_s  # every process plans the same steps: its readings are the job's (AgreedClock)
        pace, left = Pace(step_s, eval_s, tokens_per_step), cfg.max_time - s.elapsed - eval_s
        self.cfg, s.replan_step, plan = plan_run(cfg, s.step, left, pace, len(self.corpus.train), replan,
                                                     self.model_cfg.members)
        steps = self.planned_steps = self.cfg.max_iters
        s.stretch_limit = stretch_limit(self.cfg, len(self.corpus.train), tokens_per_step, self.model_cfg.members)
        again = f"; again at step {s.replan_step:,}, the hold's end" if s.replan_step > 0 else ""
        self._say(f"step {s.step}: {step_s:.3g} s a step{' since the first plan' if replan else ''}, {eval_s:.2g} s "
                  f"an evaluation → {plan} (--max-iters {steps} replays this run{again})")

    def _ends_early(self) -> bool:
        """Whether this planned run, its plans made, would at its pace end its steps well before its
        time, and may take more (janelm.schedule.ends_early)."""
        s = self.state
        return s.stretch_limit > self.cfg.max_iters and s.replan_step < 0 and ends_early(self.cfg, s, self.pace)

    def _stretch(self) -> int:
        """The machine turned quicker after the last plan: rather than end early, the rest of the
        cosine follows the clock from where it is, as on a machine that turned slower, with room for
        more steps (up to `stretch_limit`). `--max-iters` no longer replays the run. Returns the
        step the clock will end it at, at the pace so far."""
        s, cfg = self.state, self.cfg
        share = projected_end(cfg, s, self.pace) / cfg.max_time
        follow_the_clock(cfg, s)
        self.cfg, s.stretch_limit = replace(cfg, max_iters=s.stretch_limit), 0
        expected = self._projected_steps()
        self._say(f"step {s.step}: at this pace the run's {cfg.max_iters:,} steps end at {share:.0%} of --max-time "
                  f"{cfg.max_time:g} s; the rest of the schedule now follows the clock (≈ {expected:,} "
                  f"steps, at most {self.cfg.max_iters:,})")
        return expected

    def _projected_steps(self) -> int:
        """The step the time limit ends this run at, at the pace so far (at most its `max_iters`)."""
        s, cfg = self.state, self.cfg
        left = max(0.0, cfg.max_time - s.elapsed - self._after_last_step_s())
        return min(cfg.max_iters, s.step + math.floor(left / self.pace.seconds_per_step(cfg.eval_interval)))

    def _eval_and_log(self) -> bool:
        """Evaluate, log a metrics row, keep `best`; True when early stopping says stop."""
        s = self.state
        start = self.clock()
        with self.evaluated():
            losses = self.evaluate()
            self.pace.add_eval(self.clock() - start)
            improved = losses["val"] < s.best_val_loss
            if improved:
                s.best_val_loss, s.bad_evals = losses["val"], 0
                self.save(BEST)
        lr = self.optimizer.param_groups[0]["lr"]
        if self.metrics is not None:
            self.metrics.append(step=s.step, tokens=s.tokens_seen, train_loss=f"{losses['train']:.5f}",
                                val_loss=f"{losses['val']:.5f}", lr=f"{lr:.6g}", elapsed_s=f"{s.elapsed:.1f}")
        self._say(f"step {s.step}: train {losses['train']:.4f}, val {losses['val']:.4f}, lr {lr:.2e}")
        if improved:
            return False
        if patience_counts(self.cfg, s):
            s.bad_evals += 1
        return bool(self.cfg.patience) and s.bad_evals >= self.cfg.patience

    def _say(self, message: str) -> None:
        """A line for the user on stderr, above the progress bar when there is one."""
        if self.progress:
            self.bar.write(message, file=sys.stderr) if self.bar is not None else note(message)

    def _plot(self) -> None:
        """loss.png beside metrics.csv, when matplotlib is installed (janelm[plot])."""
        from janelm.plotting import have_matplotlib, plot_runs

        if self.dist.is_main and have_matplotlib():
            plot_runs([self.out_dir], self.out_dir / "loss.png", option="--out")

    def _bar(self):
        if not self.progress:
            return None
        total = self.cfg.max_iters or None
        return progress_bar(total=total, initial=self.state.step if total else 0, desc="train", unit="step")
