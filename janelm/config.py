"""Model and training configuration: the dataclasses (named presets: janelm.presets).

Pure Python on purpose: the CLI reads these to show defaults in `--help` without importing torch.
Every `ModelConfig` field is a `janelm train` flag of the same name (`n_block` → `--n-block`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from janelm.errors import InputError
from janelm.mixing import parse_extra_weight

NORMS = ("rms", "layer")
MLPS = ("swiglu", "gelu", "gelu_tanh", "relu2")
POSITIONS = ("rope", "learned")
OPTIMIZERS = ("adamw", "muon")
DTYPES = ("auto", "float32", "bfloat16", "float16")
DEVICES = ("auto", "cpu", "cuda")


# Without --compile, sampling on the CPU compiles its decode step for outputs of at least this many
# tokens (janelm.decode_step): compiling takes 28-37 s on a 2-core AVX2 CPU and saves ~2.5 ms a
# token there (docs/speed.md), so this run alone already gains from it; from then on every run of
# the same model starts with it at once.
AUTO_COMPILE_TOKENS = 20_000
# `janelm serve` sends a stream's text at most this often (seconds), all decoded since the last
# chunk at once: a chunk a token cost the decoding its speed on the same cores (docs/speed.md),
# and 20 updates a second still read as a stream.
STREAM_INTERVAL_S = 0.05

@dataclass(frozen=True)
class ModelConfig:
    """The shape of the transformer. Stored in every checkpoint."""

    vocab_size: int = 0  # set from the tokenizer by `train`
    context: int = 256  # tokens of history the model attends to
    # 3 wide blocks beat 6 narrow ones in ten minutes on the CPU (docs/quality.md): wider matmuls
    # run nearer the peak, so the budget buys more tokens.
    n_block: int = 3
    n_embed: int = 384
    n_head: int = 6
    n_kv_head: int = 0  # key/value heads, shared by groups of query heads; 0 means n_head
    head_size: int = 0  # 0 means n_embed // n_head
    mlp_ratio: float = 4.0  # hidden width of the MLP as a multiple of n_embed
    mlp_hidden: int = 0  # the MLP's hidden width itself (imported models); 0 derives it from mlp_ratio
    dropout: float = 0.0  # on the embeddings and each block's two residual branches
    # On the attention weights. Separate because it is costly on the CPU: PyTorch's fused attention
    # kernel there has no dropout, so the 4 × 384 training step ran 40% slower with 0.1 (docs/speed.md).
    attention_dropout: float = 0.0
    norm: str = "rms"
    mlp: str = "swiglu"
    position: str = "rope"
    tie_embeddings: bool = True
    bias: bool = False
    norm_eps: float = 0.0  # 0: the norm's own default (float eps for RMSNorm, 1e-5 for LayerNorm)
    rope_base: float = 10000.0  # rotary frequencies are rope_base ** (-2i / head_dim)
    # Models of this shape trained side by side, their probabilities averaged (janelm.ensemble):
    # where Austen's text, not compute, limits one model.
    members: int = 1

    @property
    def head_dim(self) -> int:
        return self.head_size or self.n_embed // self.n_head

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def mlp_width(self) -> int:
        """The MLP's hidden width: `mlp_hidden`, or derived from `mlp_ratio`, two thirds of it for
        SwiGLU (whose two input matrices then hold as many weights as a plain MLP's one)."""
        if self.mlp_hidden:
            return self.mlp_hidden
        hidden = int(self.mlp_ratio * self.n_embed)
        return int(2 * hidden / 3) if self.mlp == "swiglu" else hidden

    def validate(self) -> None:
        """Raise InputError for a shape the model cannot be built with."""
        for name in ("context", "n_block", "n_embed", "n_head", "members"):
            if getattr(self, name) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        for name in ("n_kv_head", "mlp_hidden", "norm_eps"):
            if getattr(self, name) < 0:
                raise InputError(f"--{name.replace('_', '-')} must not be negative, got {getattr(self, name)}")
        if self.n_head % self.kv_heads:
            raise InputError(f"--n-head {self.n_head} is not a multiple of --n-kv-head {self.n_kv_head}: "
                             f"each key/value head serves an equal group of query heads")
        if self.rope_base <= 0:
            raise InputError(f"--rope-base must be positive, got {self.rope_base}")
        if self.head_size < 0:
            raise InputError(f"--head-size must be positive (or 0 for n_embed / n_head), got {self.head_size}")
        if not self.head_size and self.n_embed % self.n_head:
            raise InputError(
                f"--n-embed {self.n_embed} is not divisible by --n-head {self.n_head}: "
                f"pick an n_embed that is a multiple of n_head, or give --head-size"
            )
        if self.position == "rope" and self.head_dim % 2:
            raise InputError(f"rotary positions need an even head size, got {self.head_dim}: change --n-embed/--n-head")
        for name in ("dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise InputError(f"--{name.replace('_', '-')} must be in [0, 1), got {getattr(self, name)}")
        if self.mlp_ratio <= 0:
            raise InputError(f"--mlp-ratio must be positive, got {self.mlp_ratio}")
        for name, allowed in (("norm", NORMS), ("mlp", MLPS), ("position", POSITIONS)):
            if getattr(self, name) not in allowed:
                raise InputError(f"--{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        """Build from a checkpoint's dict; fields missing in old checkpoints take their defaults."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class TrainConfig:
    """How to train. Stored in every checkpoint so a resumed run continues the same schedule."""

    batch_size: int = 16
    grad_accum: int = 1
    lr: float = 3e-3
    min_lr_ratio: float = 0.1  # the cosine decays to lr * min_lr_ratio
    warmup_iters: int = 50
    # Share of the steps after warm-up held at the peak rate before the cosine starts. Nothing
    # before the cosine depends on the run's length, so a time budget may (re-)plan its steps
    # until then and `--max-iters N` still replays the run (janelm.schedule).
    lr_hold: float = 0.0
    # The `cpu` preset's: ~9.5 minutes on a 2-core Zen 4. The schedule follows steps, so a seed
    # reproduces a run exactly; on a machine too slow for the step budget the time limit takes
    # over and the schedule finishes on the clock instead (janelm.schedule).
    max_iters: int = 750  # 0 means: no step limit, the schedule follows --max-time
    max_time: float = 690.0  # seconds; 0 means no time limit
    # A time budget planned into steps stops at this many passes over the training tokens (0: no
    # cap): past ~6.5 the compute study's models overfitted Austen and scored worse (docs/quality.md).
    max_passes: float = 0.0
    weight_decay: float = 0.1
    # Evaluate and save an exponential moving average of the weights with this decay per step (0:
    # the weights themselves): janelm.averaging.
    average: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    optimizer: str = "adamw"
    eval_interval: int = 100
    eval_batches: int = 20
    patience: int = 0  # evaluations without improvement before stopping; 0 never stops early
    save_interval: int = 500
    seed: int = 1337
    device: str = "auto"
    dtype: str = "auto"
    compile: bool = False
    # On a CPU, compile the decode step of the trained model at the end (janelm.decode_step), inside
    # the time budget, so the first `janelm sample` decodes at the compiled speed.
    compile_decode: bool = False
    # Share of training windows drawn from the corpus's --extra sources: a number, or a schedule as
    # given ("1:0", janelm.mixing); negative: the corpus's own default (janelm prepare --extra-weight,
    # else plain mixing). Checked against the corpus (janelm.data).
    extra_weight: float | str = -1.0

    def validate(self) -> None:
        """Raise InputError for settings training cannot run with."""
        positive = ("batch_size", "grad_accum", "lr", "eval_interval", "eval_batches", "save_interval")
        for name in positive:
            if getattr(self, name) <= 0:
                raise InputError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        for name in ("max_iters", "max_time", "max_passes", "warmup_iters", "weight_decay", "grad_clip", "patience"):
            if getattr(self, name) < 0:
                raise InputError(f"--{name.replace('_', '-')} must not be negative, got {getattr(self, name)}")
        if not self.max_iters and not self.max_time:
            raise InputError("give a budget: --max-iters N, --max-time SECONDS, or both")
        parse_extra_weight(self.extra_weight)
        if not 0.0 <= self.lr_hold < 1.0:
            raise InputError(f"--lr-hold must be in [0, 1), got {self.lr_hold}")
        if not 0.0 <= self.average < 1.0:
            raise InputError(f"--average must be in [0, 1) (a decay per step, such as 0.998; 0 is off), got {self.average}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise InputError(f"--min-lr-ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.optimizer not in OPTIMIZERS:
            raise InputError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.dtype not in DTYPES:
            raise InputError(f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.device not in DEVICES:
            raise InputError(f"--device must be one of {', '.join(DEVICES)}, got {self.device!r}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class PrepareDefaults:
    """`janelm prepare`'s defaults (the tokenizer is chosen by the quality study in docs/quality.md)."""

    out: str = "corpus"
    tokenizer: str = "bpe"
    vocab_size: int = 2048
    val_fraction: float = 0.1
    tokenizer_sample: int = 20_000_000  # characters; bounds the BPE trainer's memory on huge corpora
    mirror: str = "https://www.gutenberg.org"


def to_dict(config: ModelConfig | TrainConfig) -> dict[str, Any]:
    return asdict(config)


@dataclass(frozen=True)
class SamplingOptions:
    """How the next token is drawn (sample, chat, serve); generation is janelm.generate."""

    temperature: float = 0.8  # 0 means greedy: always the most likely token
    top_k: int = 0  # 0 means no top-k filter
    top_p: float = 1.0  # 1 means no nucleus filter
    repetition_penalty: float = 1.0  # 1 means none

    def validate(self) -> None:
        """Checked before any model is loaded, so a typo costs nothing."""
        # Not inf or nan either: the draw's arithmetic needs a number (an infinite penalty can make
        # every logit -inf, and no distribution is left to draw from).
        if not 0 <= self.temperature < math.inf:
            raise InputError(f"--temperature must be 0 (greedy) or a positive number, got {self.temperature}")
        if self.top_k < 0:
            raise InputError(f"--top-k must be at least 1 (or 0 for no limit), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise InputError(f"--top-p must be in (0, 1], got {self.top_p}")
        if not 0 < self.repetition_penalty < math.inf:
            raise InputError(f"--repetition-penalty must be a positive number (1 means none), got {self.repetition_penalty}")


# What sample, chat and serve draw with unless told otherwise (their flags' defaults).
SAMPLE_DEFAULTS = SamplingOptions(temperature=0.8, top_k=0, top_p=0.95, repetition_penalty=1.0)
