"""Typed backbone configuration and the size registry.

One dataclass describes every encoder this toolkit builds. It is saved next to the weights
(``config.json`` of an export) and is enough, with the tokenizer, to rebuild the model.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from fm_core.errors import UserError

# name -> shape and context length (tokens per sequence, specials included), kept together as
# litgpt keeps ``block_size`` with each config: a size means the same model in every app.
# ESM-2 shapes follow the fair-esm model cards (esm2_t6_8M_UR50D ... esm2_t48_15B).
SIZES: dict[str, dict[str, int]] = {
    "tiny": dict(num_layers=2, embed_dim=64, num_heads=4, max_length=256),  # unit tests
    "mini": dict(num_layers=4, embed_dim=192, num_heads=6, max_length=512),  # README quick start on a laptop CPU
    "esm2_8m": dict(num_layers=6, embed_dim=320, num_heads=20, max_length=1024),
    "esm2_35m": dict(num_layers=12, embed_dim=480, num_heads=20, max_length=1024),
    "esm2_150m": dict(num_layers=30, embed_dim=640, num_heads=20, max_length=1024),
    "esm2_650m": dict(num_layers=33, embed_dim=1280, num_heads=20, max_length=1024),
    "esm2_3b": dict(num_layers=36, embed_dim=2560, num_heads=40, max_length=1024),
    "esm2_15b": dict(num_layers=48, embed_dim=5120, num_heads=40, max_length=1024),
}
SHAPE_FIELDS = ("num_layers", "embed_dim", "num_heads", "ffn_dim", "vocab_size")


class ConfigError(UserError, ValueError):
    """A configuration that cannot describe a valid model."""


def require_positive(section: str, **values: float | None) -> None:
    """Refuse counts, sizes and rates that must be above zero (``None``: unset, allowed), naming
    every offending key as ``<section>.<key>``: called where a config is read, so that a bad value
    is refused before any data is read or model built."""
    bad = [f"{section}.{key}={value}" for key, value in values.items() if value is not None and not value > 0]
    if bad:
        raise ConfigError(f"{', '.join(bad)}: must be greater than 0 (fix the override or the config file)")


@dataclass
class EncoderConfig:
    """Shape and conventions of a pre-LayerNorm rotary transformer encoder with a tied MLM head.

    The parameterisation is ESM-2's (LayerNorm before attention and MLP, rotary q/k, a final
    LayerNorm, RoBERTa LM head with bias and weights tied to the token embedding), so fair-esm
    checkpoints map onto it one to one. The conventions are not ESM's: the special ids come from
    the tokenizer, and a domain turns token dropout on through its tokenizer's
    ``encoder_defaults()`` (``fm_core.model.build_model`` merges them).
    """

    name: str = "custom"
    num_layers: int = 6
    embed_dim: int = 320
    num_heads: int = 20
    ffn_dim: int | None = None  # derived: 4 * embed_dim
    vocab_size: int | None = None  # always taken from the tokenizer
    pad_id: int | None = None  # always taken from the tokenizer (required with vocab_size)
    mask_id: int | None = None  # always taken from the tokenizer (required with vocab_size)
    # tokens per sequence, specials included (longer inputs are cropped); None: the size's own (SIZES)
    max_length: int | None = None
    token_dropout: bool = False  # ESM-2's rescaling of embeddings by the observed mask ratio
    # the share of tokens replaced by <mask> in training, which token dropout assumes: fm-pretrain
    # derives it from the masking config (``expected_mask_fraction``); a checkpoint keeps its own
    mask_ratio_train: float = 0.15 * 0.8
    layer_norm_eps: float = 1e-5
    rotary_base: float = 10000.0
    init_std: float = 0.02
    # runtime choices (no effect on the weights or the math):
    activation_checkpointing: bool = False  # recompute each layer in backward: memory ~ one layer's activations
    cpu_attention_fp32: bool = True  # under bf16 autocast on CPU, run attention in fp32 (faster there)
    # causal self-attention (each token sees itself and earlier tokens): the same weights used as a
    # left-to-right generator (code completion continues a masked LM's training with this set)
    causal: bool = False
    extra: dict[str, Any] = field(default_factory=dict)  # free-form provenance, never shapes

    def __post_init__(self) -> None:
        if self.ffn_dim is None:
            self.ffn_dim = 4 * self.embed_dim
        if self.num_layers < 1 or self.embed_dim < 1 or self.num_heads < 1:
            raise ConfigError(f"{self.name}: layers, embed_dim and heads must be positive")
        if self.embed_dim % self.num_heads:
            raise ConfigError(
                f"{self.name}: embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}"
            )
        if self.head_dim % 2:
            raise ConfigError(f"{self.name}: rotary embeddings need an even head_dim, got {self.head_dim}")
        if self.max_length is None:
            if self.name not in SIZES:
                raise ConfigError(f"{self.name}: max_length is unset and {self.name!r} is not a named size")
            self.max_length = SIZES[self.name]["max_length"]
        if self.max_length < 1:
            raise ConfigError(f"{self.name}: max_length must be positive, got {self.max_length}")
        if not 0 <= self.mask_ratio_train < 1:
            raise ConfigError(f"{self.name}: mask_ratio_train must lie in [0, 1), got {self.mask_ratio_train}")
        if self.vocab_size is not None:
            for key in ("pad_id", "mask_id"):
                value = getattr(self, key)
                if value is None:
                    raise ConfigError(f"{self.name}: {key} is unset: it must come from the tokenizer")
                if not 0 <= value < self.vocab_size:
                    raise ConfigError(f"{self.name}: {key}={value} outside vocab {self.vocab_size}")

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> EncoderConfig:
        if name not in SIZES:
            raise ConfigError(f"unknown model size {name!r}; known sizes: {', '.join(SIZES)}")
        return cls.from_dict({"name": name, **SIZES[name], **overrides})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> EncoderConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown EncoderConfig field(s) {unknown}; known: {sorted(known)}")
        return cls(**values)

    def num_parameters(self) -> int:
        """Parameter count of the encoder and its MLM head (tied weights counted once); heads
        added to a model (``MaskedLM.heads``) are not counted."""
        d, f, v = self.embed_dim, self.ffn_dim, self.vocab_size or 0
        per_layer = 4 * d * d + 4 * d + 2 * d * f + f + d + 4 * d  # attention, MLP, two LayerNorms
        head = d * d + d + 2 * d + v  # dense, LayerNorm, bias
        return v * d + self.num_layers * per_layer + 2 * d + head
