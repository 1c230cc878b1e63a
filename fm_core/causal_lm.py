"""Left-to-right use of the shared encoder (``EncoderConfig.causal=True``): training and decoding.

``CausalLMModule`` trains next-token prediction with the tied LM head (the masked-LM head is
re-used as is: pre-trained weights carry over). ``NeuralLM`` wraps a causal ``MaskedLM`` for
decoding with a key/value cache; ``generate`` is a batched decoding loop (greedy, or temperature
and nucleus sampling) over any ``NextTokenModel`` (also the n-gram baseline), with a stop rule,
a token budget and a wall-clock budget, and "token healing" of the prompt's last token.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor

from fm_core.masking import IGNORE
from fm_core.model import MaskedLM, causal_mask
from fm_core.module import param_groups


class CausalLMModule(L.LightningModule):
    """Next-token cross-entropy on ``labels`` (already aligned with ``input_ids``; IGNORE = no loss)."""

    def __init__(self, net: MaskedLM, optimizer: Callable[..., torch.optim.Optimizer],
                 scheduler: Callable[..., Any] | None = None, log_prefix: str = ""):
        super().__init__()
        if not net.config.causal:
            raise ValueError("CausalLMModule needs a causal encoder (EncoderConfig.causal=True)")
        self.net, self.optimizer_factory, self.scheduler_factory = net, optimizer, scheduler
        self.prefix = log_prefix
        self.val_losses: list[tuple[float, int]] = []

    def loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, int]:
        hidden = self.net.encoder(batch["input_ids"])["hidden"]  # (B, L, D)
        selected = batch["labels"] != IGNORE
        logits = self.net.mlm_logits(hidden[selected])  # (N, V): the head only where there is a loss
        return F.cross_entropy(logits.float(), batch["labels"][selected]), int(selected.sum())

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss, n = self.loss(batch)
        self.log(f"{self.prefix}train/loss", loss, prog_bar=True, batch_size=n)
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        loss, n = self.loss(batch)
        self.log(f"{self.prefix}val/loss", loss, prog_bar=True, batch_size=n)

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(param_groups(self.net))
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer), "interval": "step"}}


class NextTokenModel(Protocol):
    """What ``generate`` decodes from: a batch of prompts, then one new token per row per step."""

    vocab_size: int

    def start(self, prompts: list[Sequence[int]]) -> Tensor: ...  # (B, V) scores of the next token

    def step(self, tokens: Tensor) -> Tensor: ...  # tokens (B,) appended -> (B, V) next scores


class NeuralLM:
    """A causal ``MaskedLM`` with a key/value cache: the prompt batch is left-padded and run once,
    then each step runs only the new token against the cached keys and values (rotary positions
    are relative, so left padding changes nothing but the masked keys)."""

    def __init__(self, net: MaskedLM):
        if not net.config.causal:
            raise ValueError("decoding needs a causal encoder (EncoderConfig.causal=True)")
        self.net = net.eval()
        self.vocab_size = net.config.vocab_size
        self.pad_id = net.config.pad_id

    def _layer(self, i: int, x: Tensor, allowed: Tensor, start: int) -> Tensor:
        layer = self.net.encoder.layers[i]
        attn = layer.attn
        B, L, D = x.shape
        qkv = attn.qkv(layer.attn_norm(x)).view(B, L, 3, attn.num_heads, attn.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, L, Dh)
        cos, sin = attn.rotary.cos_sin(start + L, x.device, q.dtype)
        cos, sin = cos[start:], sin[start:]
        q = q * cos + attn.rotary.rotate_half(q) * sin
        k = k * cos + attn.rotary.rotate_half(k) * sin
        if start:
            k = torch.cat((self.cache[i][0], k), dim=2)
            v = torch.cat((self.cache[i][1], v), dim=2)
        self.cache[i] = (k, v)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        x = x + attn.out_proj(out.transpose(1, 2).reshape(B, L, D))
        return x + layer.fc2(F.gelu(layer.fc1(layer.mlp_norm(x))))

    def _run(self, tokens: Tensor, allowed: Tensor, start: int) -> Tensor:
        enc = self.net.encoder
        x = enc.embed(tokens, tokens.eq(self.pad_id))
        for i in range(len(enc.layers)):
            x = self._layer(i, x, allowed, start)
        return self.net.mlm_logits(enc.final_norm(x[:, -1]))  # (B, V)

    @torch.no_grad()
    def start(self, prompts: list[Sequence[int]]) -> Tensor:
        width = max(len(p) for p in prompts)
        if min(len(p) for p in prompts) == 0:
            raise ValueError("empty prompt")
        tokens = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        for row, p in enumerate(prompts):
            tokens[row, width - len(p):] = torch.as_tensor(list(p), dtype=torch.long)
        self.key_pad = tokens.eq(self.pad_id)  # (B, L) left padding, kept for every later step
        self.length = width
        self.cache: list[tuple[Tensor, Tensor]] = [None] * len(self.net.encoder.layers)  # type: ignore[list-item]
        return self._run(tokens, causal_mask(width, tokens.device, self.key_pad), 0)

    @torch.no_grad()
    def step(self, tokens: Tensor) -> Tensor:
        self.key_pad = torch.cat((self.key_pad, torch.zeros(len(tokens), 1, dtype=torch.bool)), dim=1)
        allowed = ~self.key_pad[:, None, None, :]  # (B, 1, 1, L+1): the new token sees every real key
        logits = self._run(tokens[:, None], allowed, self.length)
        self.length += 1
        return logits


@dataclass
class GenerationResult:
    ids: list[list[int]]  # generated ids per prompt (the healed token included)
    stopped: list[str]  # "stop" (the stop rule), "eos", "max_new_tokens" or "time"
    seconds: float


def top_p_filter(logits: Tensor, top_p: float) -> Tensor:
    """Keep the smallest set of tokens whose probability reaches ``top_p`` (nucleus sampling)."""
    if top_p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    cum = sorted_logits.softmax(-1).cumsum(-1)
    drop = cum - sorted_logits.softmax(-1) >= top_p  # tokens after the nucleus is complete
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)


def generate(model: NextTokenModel, prompts: list[Sequence[int]], *, max_new_tokens: int,
             stop: Callable[[int, list[int]], bool] | None = None, eos_ids: Sequence[int] = (),
             first_allowed: list[Tensor | None] | None = None, banned: Sequence[int] = (),
             temperature: float = 0.0, top_p: float = 1.0, generator: torch.Generator | None = None,
             max_seconds: float | None = None) -> GenerationResult:
    """Decode every prompt in one batch. ``temperature=0`` is greedy. ``stop(row, ids)`` ends a row
    once its generated ids are complete (end of line or block); ``first_allowed[row]`` (a (V,) bool
    mask or None) constrains the first token (token healing); ``banned`` ids are never produced.
    A row also ends at an ``eos_ids`` token (not kept), after ``max_new_tokens``, or when
    ``max_seconds`` have passed (the rows keep what they have)."""
    if temperature < 0 or not 0 < top_p <= 1:
        raise ValueError(f"temperature must be >= 0 and top_p in (0, 1], got {temperature}, {top_p}")
    started = time.perf_counter()
    n = len(prompts)
    out: list[list[int]] = [[] for _ in range(n)]
    stopped = ["max_new_tokens"] * n
    active = torch.ones(n, dtype=torch.bool)
    logits = model.start(prompts).float()
    ban = torch.zeros(logits.shape[-1], dtype=torch.bool)
    ban[list(banned)] = True
    for t in range(max_new_tokens):
        scores = logits.masked_fill(ban, float("-inf"))
        if t == 0 and first_allowed is not None:
            for row, allowed in enumerate(first_allowed):
                if allowed is not None:
                    scores[row] = scores[row].masked_fill(~allowed, float("-inf"))
        if temperature == 0:
            nxt = scores.argmax(-1)
        else:
            probs = top_p_filter(scores / temperature, top_p).softmax(-1)
            nxt = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
        for row in torch.nonzero(active).flatten().tolist():
            token = int(nxt[row])
            if token in eos_ids:
                active[row] = False
                stopped[row] = "eos"
                continue
            out[row].append(token)
            if stop is not None and stop(row, out[row]):
                active[row] = False
                stopped[row] = "stop"
        if not active.any():
            break
        if max_seconds is not None and time.perf_counter() - started > max_seconds:
            for row in torch.nonzero(active).flatten().tolist():
                stopped[row] = "time"
            break
        if t + 1 < max_new_tokens:
            logits = model.step(nxt).float()
    return GenerationResult(out, stopped, time.perf_counter() - started)


__all__ = ["CausalLMModule", "GenerationResult", "NeuralLM", "NextTokenModel", "generate", "top_p_filter"]
