"""The shared backbone: a pre-LayerNorm rotary transformer encoder with a tied masked-LM head.

Plain ``nn.Module``s; Lightning only wraps them (see ``fm_core.module``). The parameterisation is
the one of fair-esm's ``ESM2`` so that its checkpoints map onto these modules one to one:
LayerNorm before attention and before the MLP, rotary embeddings on q and k, exact (erf) GELU,
a final LayerNorm, and a RoBERTa-style LM head (dense, GELU, LayerNorm, projection on the tied
token embedding plus a bias). q, k and v are one fused projection (ESM's three, concatenated).
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from fm_core.config import EncoderConfig
from fm_core.registry import HEADS

try:  # oneDNN's fused linear (+ GELU | + residual add): the kernels torch.compile emits on CPU
    _LINEAR_POINTWISE = torch.ops.mkldnn._linear_pointwise if torch.backends.mkldnn.is_available() else None
except (AttributeError, RuntimeError):
    _LINEAR_POINTWISE = None
try:  # variable-length flash attention (CUDA): packed rows attend per sequence with no padding at all
    from torch.nn.attention.varlen import varlen_attn as _VARLEN
except ImportError:
    _VARLEN = None


def varlen_usable(qkv: Tensor) -> bool:
    """Whether packed attention can run the varlen kernel: CUDA, half precision (flash attention)."""
    return _VARLEN is not None and qkv.is_cuda and qkv.dtype in (torch.float16, torch.bfloat16)


def dense(layer: nn.Module, x: Tensor, *, gelu: bool = False, residual: Tensor | None = None) -> Tensor:
    """``layer(x)``, then the exact GELU (``gelu``), then ``+ residual``: the same math everywhere.

    Float32 inference on the CPU (no autograd, no autocast, a plain ``nn.Linear``) makes it one
    oneDNN call that applies the bias, GELU or residual add inside the product instead of extra
    passes over the output (measured at the 8M shapes: linear 10-17%, linear + GELU 21%, linear +
    residual 17-37% faster, results equal to float rounding; bench/profile_ops.json). Anything else
    (training, bf16, int8 or LoRA layers, GPUs) takes the plain modules."""
    if (_LINEAR_POINTWISE is not None and type(layer) is nn.Linear and x.device.type == "cpu"
            and x.dtype == torch.float32 and not torch.is_grad_enabled() and not torch.is_autocast_enabled("cpu")):
        if residual is not None and not gelu:
            return _LINEAR_POINTWISE.binary(x, residual, layer.weight, layer.bias, "add")
        y = _LINEAR_POINTWISE(x, layer.weight, layer.bias, "gelu" if gelu else "none", [], "none" if gelu else "")
    else:
        y = F.gelu(layer(x)) if gelu else layer(x)
    return y if residual is None else residual + y


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (RoFormer), GPT-NeoX layout: the two halves of each head rotate."""

    def __init__(self, head_dim: int, base: float = 10000.0):
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self._cache: dict[tuple, tuple[Tensor, Tensor]] = {}

    def cos_sin(self, length: int, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        key = (length, device, dtype)
        if key not in self._cache:
            if len(self._cache) > 64:  # many distinct lengths: keep memory bounded
                self._cache.clear()
            t = torch.arange(length, device=device, dtype=torch.float32)
            freqs = torch.outer(t, self.inv_freq.to(device))  # (L, Dh/2)
            emb = torch.cat((freqs, freqs), dim=-1)  # (L, Dh)
            self._cache[key] = (emb.cos().to(dtype), emb.sin().to(dtype))
        return self._cache[key]

    @staticmethod
    def rotate_half(x: Tensor) -> Tensor:
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((-x2, x1), dim=-1)

    def forward(self, q: Tensor, k: Tensor, start: int = 0) -> tuple[Tensor, Tensor]:
        # q, k: (B, H, L, Dh) at positions start .. start + L - 1
        cos, sin = self.cos_sin(start + q.shape[-2], q.device, q.dtype)
        cos, sin = cos[start:], sin[start:]  # (L, Dh)
        return q * cos + self.rotate_half(q) * sin, k * cos + self.rotate_half(k) * sin

    def rotate_into(self, qk: Tensor, start: int = 0) -> Tensor:
        """Inference form (no autograd): ``qk`` (2, B, H, L, Dh), any strides (a view of the fused
        projection) -> rotated, contiguous (2, B, H, L, Dh). The same products as ``forward``, half by
        half with ``out=`` and in-place ``addcmul``: 4 passes over half the elements instead of ~9
        full-size temporaries for q and k (measured: rotary ~10% of the 8M encoder's inference time
        before, bench/embed_profile.json)."""
        cos, sin = self.cos_sin(start + qk.shape[-2], qk.device, qk.dtype)
        half = qk.shape[-1] // 2
        c, s = cos[start:, :half], sin[start:, :half]  # (L, Dh/2): both halves of cos/sin are equal
        x1, x2 = qk[..., :half], qk[..., half:]
        out = torch.empty(qk.shape, dtype=qk.dtype, device=qk.device)
        o1, o2 = out[..., :half], out[..., half:]
        torch.mul(x1, c, out=o1).addcmul_(x2, s, value=-1)  # x1 cos - x2 sin
        torch.mul(x2, c, out=o2).addcmul_(x1, s)  # x2 cos + x1 sin
        return out


@dataclass(frozen=True)
class Packing:
    """Layout of a packed row: ``S`` sequences concatenated into one row of ``N`` tokens, no padding.

    Every per-token operation (embeddings, projections, MLP, LayerNorms, LM head) runs on the ``N``
    real tokens only. Attention must not cross sequences: it scatters q, k, v into an ``(S, Lmax)``
    layout and runs SDPA with a key-padding mask there (exact: each sequence attends to itself with
    positions restarting at 0). On CPU with length-bucketed batches the scatter costs more than the
    padding it saves (bench/pretrain_vs_esm*.json); a varlen GPU kernel is the next step.
    """

    lengths: Tensor  # (S,) tokens per sequence
    segment: Tensor  # (N,) sequence of each token
    index: Tensor  # (N,) position of each token in the flattened (S * Lmax) layout
    key_padding_mask: Tensor  # (S, Lmax), True at padding
    position: Tensor  # (N,) position of each token within its sequence
    cu_seqlens: Tensor  # (S + 1,) int32 offsets of the sequences in the row (the varlen kernels' input)

    @classmethod
    def from_lengths(cls, lengths: Tensor) -> Packing:
        lengths = torch.as_tensor(lengths, dtype=torch.long)
        if lengths.ndim != 1 or len(lengths) == 0 or int(lengths.min()) < 1:
            raise ValueError(f"packed sequence lengths must be a non-empty 1-d tensor of positive ints, got {lengths}")
        S, max_len = len(lengths), int(lengths.max())
        segment = torch.repeat_interleave(torch.arange(S, device=lengths.device), lengths)  # (N,)
        starts = torch.cumsum(lengths, 0) - lengths  # (S,)
        position = torch.arange(len(segment), device=lengths.device) - starts[segment]  # (N,)
        key_padding_mask = torch.arange(max_len, device=lengths.device)[None, :] >= lengths[:, None]
        cu_seqlens = F.pad(torch.cumsum(lengths, 0), (1, 0)).to(torch.int32)
        return cls(lengths, segment, segment * max_len + position, key_padding_mask, position, cu_seqlens)

    @property
    def max_length(self) -> int:
        return self.key_padding_mask.shape[1]

    def pad(self, x: Tensor) -> Tensor:
        """(N, ...) -> (S, Lmax, ...), zeros at padding."""
        S, Lm = self.key_padding_mask.shape
        out = x.new_zeros((S * Lm, *x.shape[1:])).index_copy(0, self.index, x)
        return out.view(S, Lm, *x.shape[1:])

    def unpad(self, x: Tensor) -> Tensor:
        """(S, Lmax, ...) -> (N, ...)."""
        return x.flatten(0, 1)[self.index]


def unpack(x: Tensor, lengths: Tensor | list[int]) -> list[Tensor]:
    """A packed row ``(1, N, ...)`` -> one tensor ``(L_i, ...)`` per sequence."""
    return list(x[0].split([int(n) for n in lengths]))


def causal_mask(length: int, device: torch.device, key_padding_mask: Tensor | None = None,
                start: int = 0) -> Tensor:
    """(B or 1, 1, L, T) True where query i (at position start + i) may attend key j (T = start + L
    keys): j <= start + i and j not padding, or j == start + i."""
    query = torch.arange(start, start + length, device=device)[:, None]  # (L, 1)
    key = torch.arange(start + length, device=device)[None, :]  # (1, T)
    allowed = (key <= query)[None, None]
    if key_padding_mask is not None:
        allowed = allowed & ~key_padding_mask[:, None, None, :]
    return allowed | (key == query)


@dataclass
class KVCache:
    """One layer's keys and values of the positions decoded so far (the KV cache lives with the
    attention module, as in litgpt): ``SelfAttention`` rotates the new positions from ``start``,
    appends their keys and values here and attends over all of them."""

    keys: Tensor | None = None  # (B, H, T, Dh), rotated
    values: Tensor | None = None  # (B, H, T, Dh)
    key_padding_mask: Tensor | None = None  # (B, T), True at padding

    @property
    def start(self) -> int:
        """Position of the next token: the number of cached ones."""
        return 0 if self.keys is None else self.keys.shape[2]

    def update(self, k: Tensor, v: Tensor, key_padding_mask: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """Append the new positions (B, H, L, Dh) -> all keys, values (B, H, T, Dh) and padding (B, T)."""
        if key_padding_mask is None:
            key_padding_mask = torch.zeros(k.shape[0], k.shape[2], dtype=torch.bool, device=k.device)
        if self.keys is not None:
            k, v = torch.cat((self.keys, k), dim=2), torch.cat((self.values, v), dim=2)
            key_padding_mask = torch.cat((self.key_padding_mask, key_padding_mask), dim=1)
        self.keys, self.values, self.key_padding_mask = k, v, key_padding_mask
        return k, v, key_padding_mask


class SelfAttention(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.num_heads, self.head_dim = cfg.num_heads, cfg.head_dim
        self.cpu_attention_fp32 = cfg.cpu_attention_fp32
        self.qkv = nn.Linear(cfg.embed_dim, 3 * cfg.embed_dim)
        self.out_proj = nn.Linear(cfg.embed_dim, cfg.embed_dim)
        self.rotary = RotaryEmbedding(cfg.head_dim, cfg.rotary_base)
        self.causal = cfg.causal

    def forward(
        self, x: Tensor, key_padding_mask: Tensor | None = None, need_weights: bool = False,
        packing: Packing | None = None, cache: KVCache | None = None, residual: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """x (B, L, D) -> (B, L, D) (plus ``residual`` when given) and the attention maps
        (B, H, L, T) when ``need_weights``. With a ``cache`` the L new positions follow the cached
        ones and attend to them too (``key_padding_mask`` (B, L) covers the new positions)."""
        B, L, D = x.shape
        qkv = dense(self.qkv, x).view(B, L, 3, self.num_heads, self.head_dim)
        # bf16 autocast on CPU: the projections gain (AMX), the CPU flash kernel at small head_dim
        # loses, so attention runs in fp32 there (bench/pretrain_vs_esm.py measures both)
        if packing is not None and cache is None and not need_weights and varlen_usable(qkv):
            return self.varlen(qkv, packing, residual), None
        fp32_attention = self.cpu_attention_fp32 and x.device.type == "cpu" and torch.is_autocast_enabled("cpu")
        if fp32_attention:
            qkv = qkv.float()
        if packing is not None:
            qkv = packing.pad(qkv[0])  # (S, Lmax, 3, H, Dh): sequences side by side, padded
            key_padding_mask = packing.key_padding_mask
        start = 0 if cache is None else cache.start
        if torch.is_grad_enabled():
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, L, Dh)
            q, k = self.rotary(q, k, start)
        else:  # inference: rotate q and k together, in place, into SDPA's layout
            q, k = self.rotary.rotate_into(qkv[:, :, :2].permute(2, 0, 3, 1, 4), start).unbind(0)
            v = qkv[:, :, 2].transpose(1, 2)  # (B, H, L, Dh)
        if cache is not None:
            k, v, key_padding_mask = cache.update(k, v, key_padding_mask)  # (B, H, T, Dh), (B, T)
        weights = None
        if self.causal and (need_weights or key_padding_mask is not None):
            # causal and padding together (left padding in batched generation, packed rows): an
            # explicit mask; a position always sees itself, so rows of padding never turn into NaN
            allowed = causal_mask(q.shape[2], x.device, key_padding_mask, start)  # (B or 1, 1, L, T)
            key_padding_mask = None
        else:
            allowed = None
        if need_weights:
            # explicit path: the attention maps are needed (contact prediction, analysis)
            scores = (q * self.head_dim**-0.5) @ k.transpose(-1, -2)  # (B, H, L, T)
            if key_padding_mask is not None:
                scores = scores.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
            if allowed is not None:
                scores = scores.masked_fill(~allowed, float("-inf"))
            weights = scores.float().softmax(dim=-1)  # (B, H, L, T)
            out = weights.type_as(v) @ v  # (B, H, L, Dh)
        else:
            attn_mask = allowed if key_padding_mask is None else ~key_padding_mask[:, None, None, :]
            with torch.autocast("cpu", enabled=False) if fp32_attention else contextlib.nullcontext():
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                                     is_causal=self.causal and attn_mask is None)  # (B, H, L, Dh)
        if packing is not None:
            out = packing.unpad(out.transpose(1, 2)).reshape(B, L, D)  # back to the packed row (1, N, D)
        else:
            out = out.transpose(1, 2).reshape(B, L, D)
        return dense(self.out_proj, out, residual=residual), weights


    def varlen(self, qkv: Tensor, packing: Packing, residual: Tensor | None) -> Tensor:
        """Packed row (1, N, 3, H, Dh) -> (1, N, D): rotary at each token's own position, then
        variable-length flash attention over ``packing.cu_seqlens`` (no padding, no scatter)."""
        _, N, _, H, Dh = qkv.shape
        q, k, v = qkv[0].unbind(1)  # each (N, H, Dh)
        cos, sin = self.rotary.cos_sin(packing.max_length, qkv.device, qkv.dtype)
        c, s = cos[packing.position][:, None], sin[packing.position][:, None]  # (N, 1, Dh)
        rotate = RotaryEmbedding.rotate_half
        q, k = q * c + rotate(q) * s, k * c + rotate(k) * s
        out = _VARLEN(q, k, v, packing.cu_seqlens, packing.cu_seqlens, packing.max_length, packing.max_length,
                      window_size=(-1, 0) if self.causal else (-1, -1))  # (N, H, Dh)
        return dense(self.out_proj, out.reshape(1, N, H * Dh), residual=residual)


class TransformerLayer(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.attn_norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.layer_norm_eps)
        self.attn = SelfAttention(cfg)
        self.mlp_norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.layer_norm_eps)
        self.fc1 = nn.Linear(cfg.embed_dim, cfg.ffn_dim)
        self.fc2 = nn.Linear(cfg.ffn_dim, cfg.embed_dim)

    def forward(
        self, x: Tensor, key_padding_mask: Tensor | None = None, need_weights: bool = False,
        packing: Packing | None = None, cache: KVCache | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        x, weights = self.attn(self.attn_norm(x), key_padding_mask, need_weights, packing, cache, residual=x)
        h = dense(self.fc1, self.mlp_norm(x), gelu=True)  # exact erf GELU, as ESM
        return dense(self.fc2, h, residual=x), weights  # (B, L, D)


def layer_classes() -> set[type[nn.Module]]:
    """The repeated block, for strategies that wrap per layer (FSDP ``auto_wrap_policy``)."""
    return {TransformerLayer}


class Encoder(nn.Module):
    """Token ids -> contextual representations (ESM-2's body without its heads)."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        if cfg.vocab_size is None:
            raise ValueError("EncoderConfig.vocab_size is unset: it must come from the tokenizer")
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.embed_dim, padding_idx=cfg.pad_id)
        self.layers = nn.ModuleList(TransformerLayer(cfg) for _ in range(cfg.num_layers))
        self.final_norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.layer_norm_eps)

    def embed(self, tokens: Tensor, padding_mask: Tensor, packing: Packing | None = None) -> Tensor:
        x = self.embed_tokens(tokens)  # (B, L, D)
        if self.cfg.token_dropout:
            # ESM-2: zero the <mask> embeddings and rescale by the observed mask ratio per sequence
            is_mask = tokens.eq(self.cfg.mask_id)
            x = x.masked_fill(is_mask.unsqueeze(-1), 0.0)
            if packing is None:
                lengths = (~padding_mask).sum(-1)
                observed = is_mask.sum(-1).to(x.dtype) / lengths
                x = x * (1 - self.cfg.mask_ratio_train) / (1 - observed)[:, None, None]
            else:  # one row, several sequences: the ratio is per sequence, as unpacked
                n_masked = torch.zeros(len(packing.lengths), dtype=x.dtype, device=x.device)
                n_masked.index_add_(0, packing.segment, is_mask[0].to(x.dtype))
                observed = n_masked / packing.lengths
                x = x * ((1 - self.cfg.mask_ratio_train) / (1 - observed))[packing.segment][None, :, None]
        return x * (~padding_mask).unsqueeze(-1).to(x.dtype)

    def forward(
        self, tokens: Tensor, repr_layers: Iterable[int] = (), need_weights: bool = False,
        seq_lens: Tensor | None = None,
    ) -> dict[str, Any]:
        """tokens (B, L) -> {"hidden": (B, L, D) after the final LayerNorm,
        "representations": {layer: (B, L, D)} (0 = embeddings, num_layers = final, normed),
        "attentions": (B, num_layers, H, L, L) when need_weights}.

        Packed input: ``tokens`` (1, N) holds sequences back to back with no padding and
        ``seq_lens`` (S,) their lengths (summing to N); outputs are (1, N, ...) and each sequence
        gets exactly what it would get alone (``unpack`` splits them)."""
        packing = None
        if seq_lens is not None:
            if tokens.shape[0] != 1 or int(seq_lens.sum()) != tokens.shape[1]:
                raise ValueError(f"packed input must be one row (1, N) with sum(seq_lens) == N; got tokens "
                                 f"{tuple(tokens.shape)} and sum(seq_lens) = {int(seq_lens.sum())}")
            if need_weights:
                raise ValueError("need_weights=True needs padded (unpacked) input: attention maps are per sequence")
            packing = Packing.from_lengths(seq_lens.to(tokens.device))
        padding_mask = tokens.eq(self.cfg.pad_id)  # (B, L), True at padding
        x = self.embed(tokens, padding_mask, packing)
        key_padding_mask = padding_mask if packing is None and padding_mask.any() else None
        wanted = set(repr_layers)
        reps: dict[int, Tensor] = {0: x} if 0 in wanted else {}
        attentions = []
        use_ckpt = self.cfg.activation_checkpointing and self.training and torch.is_grad_enabled()
        for i, layer in enumerate(self.layers, start=1):
            if use_ckpt and not need_weights:
                x, w = checkpoint(layer, x, key_padding_mask, False, packing, use_reentrant=False)
            else:
                x, w = layer(x, key_padding_mask, need_weights, packing)
            if i in wanted:
                reps[i] = x
            if need_weights:
                attentions.append(w)
        x = self.final_norm(x)
        if self.cfg.num_layers in wanted:
            reps[self.cfg.num_layers] = x  # as ESM: the last representation is normalised
        out: dict[str, Any] = {"hidden": x, "representations": reps}
        if need_weights:
            att = torch.stack(attentions, dim=1)  # (B, layers, H, L, L)
            if key_padding_mask is not None:
                keep = (~padding_mask).to(att.dtype)
                att = att * (keep[:, :, None] * keep[:, None, :])[:, None, None]
            out["attentions"] = att
        return out


class MLMHead(nn.Module):
    """RoBERTa LM head: dense -> GELU -> LayerNorm -> tied projection + bias."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.embed_dim, cfg.embed_dim)
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))

    def forward(self, hidden: Tensor, embedding_weight: Tensor) -> Tensor:
        x = self.norm(F.gelu(self.dense(hidden)))  # (..., D)
        return F.linear(x, embedding_weight) + self.bias  # (..., V)


class MaskedLM(nn.Module):
    """Encoder + tied MLM head, and ``heads``: named modules over the backbone's outputs (none by
    default). Each head is of a kind registered in ``fm_core.registry.HEADS`` (``register_head``),
    so an export records it (``head_specs``) and a load rebuilds it (``add_heads``); its weights are
    ``heads.<name>.*``. ``forward`` mirrors fair-esm's ESM2 outputs (logits, representations,
    attentions); a head is run by the code that uses it, never on the MLM path.
    """

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.config = cfg
        self.encoder = Encoder(cfg)
        self.lm_head = MLMHead(cfg)
        self.heads = nn.ModuleDict()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The backbone's initialisation (encoder and MLM head); heads initialise themselves."""
        std = self.config.init_std
        out_std = std / math.sqrt(2 * self.config.num_layers)  # residual-branch outputs (GPT-2)
        for name, module in itertools.chain(self.encoder.named_modules(), self.lm_head.named_modules()):
            if isinstance(module, nn.Linear):
                is_residual_out = name.endswith(("attn.out_proj", "fc2"))
                nn.init.normal_(module.weight, std=out_std if is_residual_out else std)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=std)
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.zeros_(self.lm_head.bias)

    def head_specs(self) -> dict[str, dict[str, Any]]:
        """``{name: {"kind", "args"}}`` of every head: what an export writes to rebuild them."""
        specs = {}
        for name, head in self.heads.items():
            if HEADS.get(head.kind) is not type(head):  # a class without register_head has no kind
                raise TypeError(f"head {name!r} is not the class registered as kind {head.kind!r}")
            specs[name] = {"kind": head.kind, "args": head.to_dict()}
        return specs

    def add_heads(self, specs: dict[str, dict[str, Any]]) -> None:
        """Build the heads ``head_specs`` described, by registered kind (unknown kinds are refused)."""
        for name, spec in specs.items():
            self.heads[name] = HEADS.get(spec["kind"])(**spec.get("args", {}))

    def mlm_logits(self, hidden: Tensor) -> Tensor:
        return self.lm_head(hidden, self.encoder.embed_tokens.weight)

    def forward(
        self, tokens: Tensor, repr_layers: Iterable[int] = (), need_weights: bool = False,
        seq_lens: Tensor | None = None,
    ) -> dict[str, Any]:
        out = self.encoder(tokens, repr_layers=repr_layers, need_weights=need_weights, seq_lens=seq_lens)
        out["logits"] = self.mlm_logits(out["hidden"])  # (B, L, V)
        return out


def build_model(size: str | None, tokenizer: Any, init_from: str | None = None,
                mask_ratio_train: float | None = None, **overrides: Any) -> MaskedLM:
    """Hydra entry point (``conf/model/*.yaml``), the one way a backbone is built in every app.

    A new model: the named size from the registry (shape and context length), vocabulary and
    special ids from the tokenizer, the conventions of its domain from
    ``tokenizer.encoder_defaults()`` (e.g. token dropout for proteins); explicit ``overrides`` win
    and ``None`` means "the default". ``mask_ratio_train`` is the masking rate of the data it
    will train on (fm-pretrain derives it from ``data.masking``).

    ``init_from`` (an export directory, an fm-pretrain ``.ckpt`` or a fair-esm ESM-2 ``.pt``):
    the checkpoint's shape, conventions and ``mask_ratio_train`` are kept (``size``, when given,
    must agree), ``overrides`` such as ``max_length`` or ``causal`` change its config, and the
    model is built once with the weights loaded.
    """
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if init_from:
        from fm_core.export import init_from_checkpoint

        return init_from_checkpoint(init_from, tokenizer, size=size, **overrides)
    if size is None:
        raise ValueError("model.size is null: name a size (model=tiny, model=esm2_8m...) or give model.init_from")
    if mask_ratio_train is not None:
        overrides["mask_ratio_train"] = mask_ratio_train
    cfg = EncoderConfig.from_name(size, vocab_size=tokenizer.vocab_size, pad_id=tokenizer.pad_id,
                                  mask_id=tokenizer.mask_id, **{**tokenizer.encoder_defaults(), **overrides})
    return MaskedLM(cfg)
