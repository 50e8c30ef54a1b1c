"""JaneLM's models as transformers architectures: configs and weights, both ways.

JaneLM's default architecture (rotary positions, RMSNorm, SwiGLU, no biases) is Llama's
(`LlamaForCausalLM`); learned positions with LayerNorm and GELU are GPT-2's (`GPT2LMHeadModel`).
Rotary embeddings pair feature i with i + D/2 in both, with the same frequencies, so query and
key weights map without permutation. JaneLM makes queries, keys and values with one Linear laid
out [q | k | v]; Llama has three, GPT-2 one (a Conv1D, stored transposed).

Each architecture is a table from JaneLM's tensor names to transformers', plus the fused qkv
for Llama; weights go either way through the same table.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from janelm.config import ModelConfig
from janelm.errors import InputError

if TYPE_CHECKING:
    import torch

FLOAT32_EPS = 1.1920928955078125e-07  # torch.finfo(torch.float32).eps: RMSNorm's eps when none is set
LAYER_NORM_EPS = 1e-5  # LayerNorm's default, and GPT-2's
GELU = {"gelu": "gelu", "gelu_tanh": "gelu_new"}  # JaneLM's MLP kind → GPT-2's activation_function
GELU_FROM_HF = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}


def _get(hf: dict[str, Any], key: str, kind: type = int, default: Any = None) -> Any:
    """A config.json value of the right type (null or absent: `default`); InputError naming the key otherwise."""
    value = hf.get(key)
    value = default if value is None else value
    if value is None or isinstance(value, bool) or not isinstance(value, kind if kind is not float else (int, float)):
        raise InputError(f"config.json's {key} is {value!r}, not a {kind.__name__}: the folder is damaged or not a "
                         f"transformers model")
    return value


class Llama:
    name, model_type = "LlamaForCausalLM", "llama"
    needs = "--norm rms --mlp swiglu --no-bias"

    @staticmethod
    def mismatches(cfg: ModelConfig) -> list[str]:
        """The settings of a rotary-position config that Llama lacks."""
        return [setting for setting, wrong in ((f"--norm {cfg.norm}", cfg.norm != "rms"),
                                               (f"--mlp {cfg.mlp}", cfg.mlp != "swiglu"), ("--bias", cfg.bias)) if wrong]

    @staticmethod
    def config_to_hf(cfg: ModelConfig) -> dict[str, Any]:
        return {
            "architectures": [Llama.name], "model_type": Llama.model_type, "vocab_size": cfg.vocab_size,
            "hidden_size": cfg.n_embed, "intermediate_size": cfg.mlp_width, "num_hidden_layers": cfg.n_block,
            "num_attention_heads": cfg.n_head, "num_key_value_heads": cfg.kv_heads, "head_dim": cfg.head_dim,
            "max_position_embeddings": cfg.context, "rms_norm_eps": cfg.norm_eps or FLOAT32_EPS,
            # rope_theta for transformers 4, rope_parameters for 5.
            "rope_theta": cfg.rope_base, "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_base},
            "hidden_act": "silu", "attention_bias": False, "mlp_bias": False, "attention_dropout": cfg.attention_dropout,
            "tie_word_embeddings": cfg.tie_embeddings,
        }

    @staticmethod
    def config_from_hf(hf: dict[str, Any]) -> ModelConfig:
        if hf.get("hidden_act", "silu") not in ("silu", "swish"):
            raise InputError(f"config.json's hidden_act {hf['hidden_act']!r} is not supported: JaneLM's Llama MLP is SwiGLU (silu)")
        for key in ("attention_bias", "mlp_bias"):
            if hf.get(key):
                raise InputError(f"config.json sets {key}: JaneLM's Llama has no biases; use a model without them")
        rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
        if rope.get("rope_type", rope.get("type", "default")) != "default":
            raise InputError(f"config.json asks for {rope.get('rope_type', rope.get('type'))!r} rotary scaling, which "
                             f"JaneLM does not implement: use a model with plain rotary positions")
        n_embed, n_head = _get(hf, "hidden_size"), _get(hf, "num_attention_heads")
        n_kv_head = _get(hf, "num_key_value_heads", default=n_head)
        head_dim = _get(hf, "head_dim", default=n_embed // max(n_head, 1))
        return ModelConfig(
            vocab_size=_get(hf, "vocab_size"), context=_get(hf, "max_position_embeddings"),
            n_block=_get(hf, "num_hidden_layers"), n_embed=n_embed, n_head=n_head,
            n_kv_head=0 if n_kv_head == n_head else n_kv_head,
            head_size=0 if head_dim * n_head == n_embed else head_dim,
            mlp_hidden=_get(hf, "intermediate_size"), attention_dropout=_get(hf, "attention_dropout", float, 0.0),
            norm="rms", mlp="swiglu", position="rope", tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
            bias=False, norm_eps=_get(hf, "rms_norm_eps", float, 1e-6),
            rope_base=_get(rope, "rope_theta", float, hf.get("rope_theta", 10000.0)),
        )

    @staticmethod
    def names(cfg: ModelConfig) -> list[tuple[str, str]]:
        pairs = [("tok_embed.weight", "model.embed_tokens.weight"), ("norm.weight", "model.norm.weight")]
        for i in range(cfg.n_block):
            j, h = f"blocks.{i}.", f"model.layers.{i}."
            pairs += [(j + "norm1.weight", h + "input_layernorm.weight"), (j + "attn.proj.weight", h + "self_attn.o_proj.weight"),
                      (j + "norm2.weight", h + "post_attention_layernorm.weight"), (j + "mlp.gate.weight", h + "mlp.gate_proj.weight"),
                      (j + "mlp.up.weight", h + "mlp.up_proj.weight"), (j + "mlp.down.weight", h + "mlp.down_proj.weight")]
        return pairs

    @staticmethod
    def fused(cfg: ModelConfig) -> list[tuple[str, list[str], list[int]]]:
        """Each block's qkv: the transformers tensors it concatenates, and their rows."""
        rows = [cfg.n_head * cfg.head_dim, cfg.kv_heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim]
        return [(f"blocks.{i}.attn.qkv.weight", [f"model.layers.{i}.self_attn.{p}_proj.weight" for p in "qkv"], rows)
                for i in range(cfg.n_block)]

    transposed: tuple[str, ...] = ()
    ignored = ("rotary_emb.inv_freq",)


class GPT2:
    name, model_type = "GPT2LMHeadModel", "gpt2"
    needs = "--norm layer --mlp gelu (or gelu_tanh), no --n-kv-head, and --n-head × --head-size = --n-embed"

    @staticmethod
    def mismatches(cfg: ModelConfig) -> list[str]:
        """The settings of a learned-position config that GPT-2 lacks."""
        return [setting for setting, wrong in ((f"--norm {cfg.norm}", cfg.norm != "layer"),
                                               (f"--mlp {cfg.mlp}", cfg.mlp not in GELU),
                                               (f"--n-kv-head {cfg.n_kv_head}", cfg.kv_heads != cfg.n_head),
                                               (f"--head-size {cfg.head_size}", cfg.n_head * cfg.head_dim != cfg.n_embed))
                if wrong]

    @staticmethod
    def config_to_hf(cfg: ModelConfig) -> dict[str, Any]:
        return {
            "architectures": [GPT2.name], "model_type": GPT2.model_type, "vocab_size": cfg.vocab_size,
            "n_positions": cfg.context, "n_embd": cfg.n_embed, "n_layer": cfg.n_block, "n_head": cfg.n_head,
            "n_inner": cfg.mlp_width, "activation_function": GELU[cfg.mlp],
            "layer_norm_epsilon": cfg.norm_eps or LAYER_NORM_EPS,
            # JaneLM drops out where GPT-2 does: embeddings and residual branches, and attention weights.
            "embd_pdrop": cfg.dropout, "attn_pdrop": cfg.attention_dropout, "resid_pdrop": cfg.dropout,
            "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False,
            "tie_word_embeddings": cfg.tie_embeddings,
        }

    @staticmethod
    def config_from_hf(hf: dict[str, Any]) -> ModelConfig:
        activation = hf.get("activation_function", "gelu_new")
        if activation not in GELU_FROM_HF:
            raise InputError(f"config.json's activation_function {activation!r} is not supported: JaneLM's GPT-2 MLP "
                             f"takes {', '.join(GELU_FROM_HF)}")
        if not hf.get("scale_attn_weights", True) or hf.get("scale_attn_by_inverse_layer_idx") or hf.get("add_cross_attention"):
            raise InputError("config.json changes GPT-2's attention (scaling or cross-attention), which JaneLM does not "
                             "implement: use a plain GPT-2")
        n_embed = _get(hf, "n_embd")
        return ModelConfig(
            vocab_size=_get(hf, "vocab_size"), context=_get(hf, "n_positions"), n_block=_get(hf, "n_layer"),
            n_embed=n_embed, n_head=_get(hf, "n_head"), mlp_hidden=_get(hf, "n_inner", default=4 * n_embed),
            dropout=_get(hf, "resid_pdrop", float, 0.1), attention_dropout=_get(hf, "attn_pdrop", float, 0.1),
            norm="layer", mlp=GELU_FROM_HF[activation],
            position="learned", tie_embeddings=bool(hf.get("tie_word_embeddings", True)), bias=True,
            norm_eps=_get(hf, "layer_norm_epsilon", float, LAYER_NORM_EPS),
        )

    @staticmethod
    def names(cfg: ModelConfig) -> list[tuple[str, str]]:
        pairs = [("tok_embed.weight", "transformer.wte.weight"), ("pos_embed.weight", "transformer.wpe.weight"),
                 ("norm.weight", "transformer.ln_f.weight"), ("norm.bias", "transformer.ln_f.bias")]
        for i in range(cfg.n_block):
            j, h = f"blocks.{i}.", f"transformer.h.{i}."
            for ours, theirs in (("norm1", "ln_1"), ("attn.qkv", "attn.c_attn"), ("attn.proj", "attn.c_proj"),
                                 ("norm2", "ln_2"), ("mlp.up", "mlp.c_fc"), ("mlp.down", "mlp.c_proj")):
                pairs += [(j + ours + ".weight", h + theirs + ".weight"), (j + ours + ".bias", h + theirs + ".bias")]
        return pairs

    @staticmethod
    def fused(cfg: ModelConfig) -> list[tuple[str, list[str], list[int]]]:
        return []

    transposed = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")  # Conv1D: (in, out)
    ignored = ("attn.bias", "attn.masked_bias")  # causal-mask buffers in older files


ARCHITECTURES = {arch.name: arch for arch in (Llama, GPT2)}
BY_MODEL_TYPE = {arch.model_type: arch for arch in (Llama, GPT2)}


def architecture_for(cfg: ModelConfig):
    """The transformers architecture a JaneLM config is, or one InputError naming what has none."""
    if cfg.members > 1:
        raise InputError(f"an ensemble of {cfg.members} models has no transformers equivalent (a folder holds one model): "
                         f"sample, eval and serve it with janelm, or train with --members 1 to export")
    arch = Llama if cfg.position == "rope" else GPT2
    wrong = arch.mismatches(cfg)
    if wrong:
        raise InputError(f"{wrong[0]} with --position {cfg.position} has no transformers equivalent: "
                         f"{arch.name} needs {arch.needs}; train with the default architecture (Llama) or the seed "
                         f"preset's (GPT-2)")
    return arch


def architecture_of(hf: dict[str, Any]):
    """The architecture of a config.json; InputError for one JaneLM cannot load."""
    names = hf.get("architectures") or []
    arch = next((ARCHITECTURES[n] for n in names if n in ARCHITECTURES), None) or BY_MODEL_TYPE.get(hf.get("model_type"))
    if arch is None:
        found = ", ".join(map(str, names)) or repr(hf.get("model_type"))
        raise InputError(f"the model's architecture {found} is not supported: JaneLM loads LlamaForCausalLM and "
                         f"GPT2LMHeadModel folders")
    return arch


def weights_to_hf(arch, cfg: ModelConfig, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers' tensors from JaneLM's state dict. GPT-2 always has biases: a JaneLM model
    without them gets zeros. A tied output layer is not written (transformers ties it)."""
    import torch

    out = {}
    for ours, theirs in arch.names(cfg):
        if ours in state:
            tensor = state[ours]
        else:  # a bias JaneLM left out
            tensor = torch.zeros(state[ours.replace(".bias", ".weight")].shape[:1], dtype=state["tok_embed.weight"].dtype,
                                 device=state["tok_embed.weight"].device)
        out[theirs] = tensor.t() if theirs.endswith(arch.transposed) else tensor
    for ours, parts, rows in arch.fused(cfg):
        out.update(zip(parts, state[ours].split(rows)))
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = state["head.weight"]
    return {name: t.detach().contiguous().clone() for name, t in out.items()}


def weights_from_hf(arch, cfg: ModelConfig, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """JaneLM's state dict from transformers' tensors (already checked by `expected_shapes`)."""
    import torch

    state = {}
    for ours, theirs in arch.names(cfg):
        tensor = tensors[theirs]
        state[ours] = tensor.t().contiguous() if theirs.endswith(arch.transposed) else tensor
    for ours, parts, _ in arch.fused(cfg):
        state[ours] = torch.cat([tensors[p] for p in parts])
    state["head.weight"] = state["tok_embed.weight"] if cfg.tie_embeddings else tensors["lm_head.weight"]
    return state


def expected_shapes(arch, cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The transformers tensors a folder of this config must hold, and their shapes (computed on
    the meta device: no memory)."""
    import torch

    from janelm.model import GPT, weights_uninitialised

    with torch.device("meta"), weights_uninitialised():
        model = GPT(cfg)
    return {name: tuple(t.shape) for name, t in weights_to_hf(arch, cfg, model.state_dict()).items()}
