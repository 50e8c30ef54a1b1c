"""Named presets and the compute table `--preset auto` chooses from (janelm.recipe).

Pure Python, as janelm.config: the CLI lists them in `--help` without importing torch. Each preset
is a set of `ModelConfig` and `TrainConfig` fields over their defaults; the comments hold the
measurements that chose them (docs/quality.md has the studies).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from janelm.config import ModelConfig, TrainConfig
from janelm.errors import InputError


@dataclass(frozen=True)
class Preset:
    description: str
    model: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)


# The original research script's model: 6 × 512, 4 heads of 128, context 96, GPT-2's architecture.
SEED_MODEL = {"n_block": 6, "n_embed": 512, "n_head": 4, "head_size": 128, "context": 96, "norm": "layer",
              "mlp": "gelu", "position": "learned", "tie_embeddings": False, "dropout": 0.2,
              "attention_dropout": 0.2}

# What every row of the compute table trains with: batch 8 beat 16 at every budget the study ran;
# 6 evaluation batches keep the run's 8 evaluations under 3% of it; and no more than 6.5 passes over
# the text unless a row says otherwise (before weight decay 0.3: 3 × 256 scored best at 6.4 passes,
# 2 × 256 worse at 10.4 than at 5.1, and a 1,200 s run of 3 × 256, 13.7 passes, 0.041 worse than
# the 600 s one): a faster machine finishes early.
# A hold at the peak rate for a fifth of the steps lets the plan be made again a minute in (janelm.schedule),
# and cost nothing: 2 × 256 for 1,000 steps, Northanger Abbey 1.6208 bits/char against 1.6224 without.
# The model kept is an average of the weights over ~500 steps (janelm.averaging): cpu-5x256's ten
# minutes on an AMX Xeon, 3,474 steps, 1.5119 against the weights' own 1.5228 (0.999: 1.5127).
# Weight decay 0.3, three times AdamW's usual: it holds a model that sees each token five times or
# more back from memorising them (data-bound training's lesson: Kim et al., "Pre-training under
# infinite compute", 2025). On an AMX Xeon, each row's run replayed with the same steps and seed
# (Northanger Abbey, bits/char; docs/quality.md): cpu-3x256 in float32 1.5172 against 1.5327,
# cpu-4x256 1.5303 against 1.5355, cpu-5x256 1.4998 against 1.5147, cpu-5x256-d2 1.4789 against
# 1.4961; 0.5 tied 0.3 there, and 1.0 trailed by 0.13 in validation loss halfway. Two rows measured
# more on a Zen 4 and take it: cpu-3x256 1.0, cpu-5x256 0.5 (their comments).
TABLE_TRAIN = {"batch_size": 8, "eval_batches": 6, "max_iters": 0, "max_time": 600.0, "max_passes": 6.5,
               "lr_hold": 0.2, "average": 0.998, "weight_decay": 0.3, "compile": True, "compile_decode": True}

# The ensembles' member: cpu-3x256 (the best single model per token of compute), allowed 12.5
# passes, since the compute a row adds goes to its members.
ENSEMBLE_MEMBER = {"n_block": 3, "n_embed": 256, "n_head": 4}
ENSEMBLE_TRAIN = {**TABLE_TRAIN, "lr": 2e-3, "max_passes": 12.5, "min_lr_ratio": 0.4, "weight_decay": 1.0}

# `janelm train` with no flags runs `--preset auto`: the compute table's row for what this machine
# measures (janelm.recipe); the other presets are named by hand.
PRESETS: dict[str, Preset] = {
    "cpu": Preset("3 × 384, batch 16, 750 steps (~9.5 minutes on a 2-core Zen 4): the probe auto measures with"),
    # The compute study's rows (docs/quality.md): time-bound, their steps planned from the measured
    # pace; compiled (+9-15% a step on the CPU), and the decode step compiled at the end.
    "cpu-2x256": Preset(
        "2 × 256, batch 8, up to 9 passes, trains for --max-time: the study's best at low compute",
        model={"n_block": 2, "n_embed": 256, "n_head": 4},
        # Up to 9 passes: at the row's top (2.6M) ten minutes fit ~3,820 steps (8.8 passes), and the
        # 6.5 of TABLE_TRAIN ended such a run in 7.5 minutes. Same seed (1337), step-bound: 2,822
        # steps (6.5 passes) 1.5332, 3,822 (8.8) 1.5316 (docs/quality.md).
        train={**TABLE_TRAIN, "max_passes": 9.0},
    ),
    "cpu-3x256": Preset(
        "3 × 256, batch 8, lr 2e-3 to a floor of 8e-4, weight decay 1.0, up to 10.5 passes, trains for --max-time: the study's best at higher compute",
        model={"n_block": 3, "n_embed": 256, "n_head": 4},
        # lr 2e-3: 1.5486 bits/char against 3e-3's 1.5545 in ten minutes, the same 2,822 steps and batches.
        # Up to 10.5 passes, what ten minutes fit at the row's top (5M): with weight decay 0.3 and the
        # average, the 6.5 measured before them only cut runs short (a fast moment of the Zen 4 at 8.5
        # minutes). Same seeds, step-bound (docs/quality.md): 2,822 steps (6.5 passes) 1.5167, 3,360
        # (7.6) 1.5123, 4,600 (10.4; best.pt from 3,300, where validation loss turned) 1.5047; seed
        # 1337: 3,474 (8) 1.5182, 4,600 1.5132. Past the turn best.pt keeps the model, as it should.
        # Its floor 0.4 of the peak (0.1 elsewhere): the longer runs' best models came from mid-cosine
        # (lr ~8e-4), and the same steps annealed to 8e-4 scored 1.5074 against 1.5123 (seed 11, 3,360)
        # and 1.5131 against 1.5182 (seed 1337, 3,474). cpu-5x256, whose dropout already holds it back,
        # did not gain (1.4958 against 1.4944, seed 1337, 3,150 steps).
        # Weight decay 1.0: the Zen 4's ten minutes of seed 11 (3,192 steps, 7.4 passes) replayed
        # scored 1.4907 against 0.5's 1.4937 and 0.3's 1.5076: without dropout, this row is the one
        # that memorises most, and at lr 2e-3 the pull is 0.2% a step.
        train={**TABLE_TRAIN, "lr": 2e-3, "max_passes": 10.5, "min_lr_ratio": 0.4, "weight_decay": 1.0},
    ),
    "cpu-3x256-x2": Preset(
        "two cpu-3x256 models trained side by side, batch 8 each, their predictions averaged (an ensemble), up to 12.5 passes each: where one model no longer gains from more compute",
        # The Zen 4's ten-minute cpu-3x256 models of seeds 1337 and 11 (2,997 and 3,192 steps; 1.5061
        # and 1.4907 bits/char on Northanger Abbey) averaged: 1.4693, where cpu-5x256 given both ten
        # minutes scored 1.4861 and 1.4869 (docs/quality.md). Each member reads its own 8 rows of
        # the step's 16. Up to 12.5 passes: what each member's half fills up to the next row (13M);
        # past the validation turn best.pt keeps the model, as cpu-3x256 showed at 10.4.
        model={**ENSEMBLE_MEMBER, "members": 2},
        train={**ENSEMBLE_TRAIN, "batch_size": 16},
    ),
    "cpu-3x256-x3": Preset(
        "three cpu-3x256 models trained side by side, batch 8 each, averaged, up to 12.5 passes each: the compute table's row from 13M to 20M until cpu-4x256-x3 took it",
        # An AMX Xeon's twenty minutes (seed 1337, docs/quality.md): three members, 4,825 steps (11
        # passes each), 1.4443 bits/char; four, 3,664 steps (8.4 each), 1.4532; cpu-5x256-d2, the
        # single model the row replaced, 1.4789; and ten minutes of cpu-3x256-x2 there, 1.4795.
        # Three 4 × 256 members tie or beat it at every compute both were run at (cpu-4x256-x3).
        model={**ENSEMBLE_MEMBER, "members": 3},
        train={**ENSEMBLE_TRAIN, "batch_size": 24},
    ),
    "cpu-4x256-x3": Preset(
        "three 4 × 256 models trained side by side, batch 8 each, averaged, up to 12.5 passes each: where cpu-3x256-x2's members reach theirs",
        # Twenty minutes of an AMX Xeon in a quick hour (~20M probe tokens): cpu-3x256-x3's members
        # reach their 12.5 passes at 86-94% of the budget (5,427 steps), where three 4 × 256 members
        # fill it with 4,311 steps (9.9 passes each): seed 1337 1.4391 against 1.4424, seed 11 (the
        # same steps replayed) 1.4354 against 1.4415 bits/char on Northanger Abbey (docs/quality.md);
        # seed 42's twenty minutes (5,426 steps, 1.4438) replayed as 4,240 of these, 1.4420.
        # Below that they tie or it leads: at the compute of three 3 × 256 members' 4,825 steps (seed
        # 1337, 1.4443) three 4 × 256 members' 3,770 (a step costs 1.28× as much) scored 1.4446; seed
        # 11, 4,204 steps (1.4482, 13.4M in a slow hour) against 3,319 (1.4460). So the row starts
        # at 13M, where cpu-3x256-x2's members reach their passes, in cpu-3x256-x3's place.
        # Past its own passes (5,427 steps, ~25M: seed 11 1.4271) `auto` adds members (recipe.grow): at
        # ~28M a fourth member (4,522 steps, 10.4 passes each) scored 1.4287, a fifth block in each
        # (4,946 steps) 1.4286, the three past their passes (6,029 steps, 13.9) 1.4274: no worse than the
        # three stopped early, and the run fills its budget.
        model={**ENSEMBLE_MEMBER, "n_block": 4, "members": 3},
        train={**ENSEMBLE_TRAIN, "batch_size": 24},
    ),
    "cpu-4x256": Preset(
        "4 × 256, dropout 0.1, batch 8, trains for --max-time: the study's best at the most CPU compute",
        # Dropout lets a deeper model train for more passes over Austen's 0.9M tokens without
        # overfitting them: 8.1 passes in the 1,200 s run scored 1.5209 bits/char, but 10 (a 2,400 s
        # budget, which the cap ended at 1,490 s) 1.5275: a faster machine stops at 8.
        model={"n_block": 4, "n_embed": 256, "n_head": 4, "dropout": 0.1},
        train={**TABLE_TRAIN, "max_passes": 8.0},
    ),
    "cpu-5x256": Preset(
        "5 × 256, dropout 0.1, batch 8, lr 2e-3, weight decay 0.5, trains for --max-time: where cpu-4x256's 8 passes take less than the budget",
        # On an AMX Xeon (7.9M probe tokens in 600 s) cpu-4x256 reached its 8 passes in 82% of the ten
        # minutes: a fifth block costs a quarter more a token, so the same passes fill the budget.
        # lr 2e-3, as cpu-3x256: the Zen 4's twenty-minute runs replayed step for step (docs/quality.md)
        # scored 1.4934 against 3e-3's 1.4990 (seed 1337, 3,286 steps) and 1.4927 against 1.5009 (seed 11, 3,375).
        # Weight decay 0.5, replayed the same way: 1.4861 against 0.3's 1.4956 and 1.0's 1.4942 (seed
        # 1337, 3,427 steps), 1.4869 against 1.4927 (seed 11, 3,375).
        model={"n_block": 5, "n_embed": 256, "n_head": 4, "dropout": 0.1},
        train={**TABLE_TRAIN, "lr": 2e-3, "max_passes": 8.0, "weight_decay": 0.5},
    ),
    "cpu-5x256-d2": Preset(
        "5 × 256, dropout 0.2, batch 8, up to 14 passes, trains for --max-time: where cpu-5x256's 8 passes take half the budget",
        # Twice the dropout lets the same model learn from more passes over Austen: on an AMX Xeon,
        # 1,200 s (6,079 steps, 14 passes) scored 1.5052, 1.5131 and 1.5020 bits/char, against
        # cpu-5x256's 1.5213 and 1.5243 in 600 s; 6 × 320 at dropout 0.1 and 8 passes scored 1.5473
        # there (docs/quality.md).
        # Its 6,079 steps average over ~1,000 (1.4968 against the weights' 1.5059; 0.998: 1.4985).
        model={"n_block": 5, "n_embed": 256, "n_head": 4, "dropout": 0.2},
        train={**TABLE_TRAIN, "max_passes": 14.0, "average": 0.999},
    ),
    "gpu": Preset(
        "about 6 minutes on one CUDA GPU, compiled; best with period novels as extra text (docs/quality.md)",
        # Today's architecture at the seed's width, with the context of the CPU presets: the time-bound
        # cosine always anneals, and dropout 0.1 suits Austen with the period novels (issue 17's runs).
        # At most 8 passes over the text, as cpu-5x256 (the same dropout): alone on an H200 the 360 s
        # filled 30,785 steps, 73 passes over the mixed corpus, and its validation loss was lowest
        # at the first of eight evaluations (1.449 bits/char on Northanger Abbey). With the cosine
        # over 8,000 steps it was lowest at step 3,600 (8.5 passes; 1.432), as on a shared H100
        # (1.425); Austen alone was lowest at 7.3 passes. A faster GPU finishes early.
        model={"n_block": 6, "n_embed": 512, "n_head": 8, "context": 256, "dropout": 0.1,
               "attention_dropout": 0.1},
        train={"batch_size": 32, "lr": 1e-3, "max_iters": 0, "max_time": 360.0, "max_passes": 8.0,
               "warmup_iters": 200, "eval_interval": 200, "save_interval": 1000, "compile": True},
    ),
    "cpu-long": Preset(
        "about an hour on a 2-core CPU",
        model={"n_block": 8, "n_embed": 384, "n_head": 6},
        train={"max_iters": 1300, "max_time": 3900.0, "lr": 2e-3},
    ),
    "seed": Preset(
        "the original research script's ~70M-parameter model; meant for a GPU",
        model=SEED_MODEL,
        train={"batch_size": 32, "lr": 3e-4, "max_iters": 20000, "max_time": 0.0, "warmup_iters": 500,
               "patience": 5},
    ),
    "bench": Preset(
        "the reference shape for speed comparisons (janelm bench)",
        model={"n_block": 6, "n_embed": 384, "n_head": 6, "context": 256},
        train={"batch_size": 8},
    ),
    "tiny": Preset(
        "a toy model for smoke tests: seconds on any machine",
        model={"n_block": 2, "n_embed": 64, "n_head": 4, "context": 64},
        train={"batch_size": 8, "max_iters": 50, "eval_interval": 25, "eval_batches": 2, "warmup_iters": 5},
    ),
}
# The probe of `--preset auto` (janelm.recipe): its tokens/s times the budget is a run's compute.
PROBE_PRESET = "cpu"
# (compute in probe tokens from which a row applies, preset): the CPU rows come from the study in
# docs/quality.md (150-600 s on a 2-core Zen 4: 0.9M-3.7M; 1,200 s there: 6.3-7.7M; ten minutes of a
# 2-core AMX Xeon: 7.3-10.5M, twenty minutes there: 14-21M); the gpu row from the GPU study (an
# H100: far above 60M), and compute between was not measured. From 6M, where cpu-4x256's 8 passes
# fill the budget (~5.6M), an ensemble: cpu-3x256-x2 at 7.7M (the Zen 4's 1,200 s; each member a
# ten-minute cpu-3x256 run) scored 1.4693 against the single cpu-5x256's 1.4861 (which had beaten
# cpu-4x256 at 6.4M: 1.4944 against 1.4996), and the Zen 4's twenty minutes measure 6.3-7.7M, so
# that budget does not fall on both sides of a row. From 13M, where two members' 12.5 passes fill
# the budget, a third member, a block deeper: at the compute of three 3 × 256 members' 4,204, 4,825,
# 5,426 and 5,427 steps (the AMX Xeon's twenty minutes, 13.4-21M as its hour ran), three 4 × 256
# members scored 0.0022, -0.0003, 0.0019, 0.0033 and 0.0061 better (seeds 11, 1337, 42, 1337, 11;
# cpu-4x256-x3's comment); cpu-3x256-x3, the row from 13M to 20M before, is kept by name.
COMPUTE_TABLE: tuple[tuple[float, str], ...] = ((0.0, "cpu-2x256"), (2.6e6, "cpu-3x256"), (5e6, "cpu-4x256"),
                                                 (6e6, "cpu-3x256-x2"), (13e6, "cpu-4x256-x3"), (60e6, "gpu"))
# Rows measured on a GPU alone, chosen only there. A CPU that reads their compute (a 16-32-core AMX
# server) trains more members of the last CPU row instead (janelm.recipe.grow), which fill its
# budget: one 6 × 512 model (3.6× a probe token's multiplies) reaches its 8 passes over Austen,
# 7.1M tokens, at 42% of a 60M budget, and sooner on more.
CUDA_ROWS = frozenset({"gpu"})
# `janelm train`'s time budget with no flags, in seconds: ten minutes on a CPU; on a GPU the budget of
# the GPU study (docs/quality.md: the gpu recipe's validation loss stopped improving within it).
DEFAULT_BUDGET = {"cpu": 600.0, "cuda": 360.0}
AUTO = "auto"  # not a preset of its own: janelm.recipe chooses a table row by measuring
DEFAULT_PRESET = AUTO
PRESET_CHOICES = (AUTO, *PRESETS)


def preset_configs(name: str) -> tuple[ModelConfig, TrainConfig]:
    """The model and train configs a preset stands for (resolve `auto` first)."""
    if name not in PRESETS:
        raise InputError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}")
    p = PRESETS[name]
    return replace(ModelConfig(), **p.model), replace(TrainConfig(), **p.train)
