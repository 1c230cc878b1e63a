"""Left-to-right decoding with the shared encoder (``EncoderConfig.causal=True``).

``NeuralLM`` wraps a causal ``MaskedLM`` for decoding with the key/value cache of its own attention
layers; ``generate`` is a batched decoding loop (greedy, or temperature and nucleus sampling) over
any ``NextTokenModel`` (also the n-gram baseline), with a stop rule, a token budget and a
wall-clock budget, a per-step constraint on the next token (the caller's "token healing" of the
prompt's last token), and repetition handling (a repetition penalty, a ban of repeated n-grams). Training is
``fm_core.module.CausalLMModule``; this module imports no Lightning, so a completion CLI starts fast.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from fm_core.model import KVCache, MaskedLM
from fm_core.padding import pad_batch


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

    def _run(self, tokens: Tensor, key_padding_mask: Tensor) -> Tensor:
        """New tokens (B, L) after the cached ones -> (B, V) scores of the next token. The encoder's
        own layers run them, each with its cache (``fm_core.model.KVCache``)."""
        enc = self.net.encoder
        x = enc.embed(tokens, tokens.eq(self.pad_id))  # (B, L, D)
        for layer, cache in zip(enc.layers, self.cache, strict=True):
            x, _ = layer(x, key_padding_mask, cache=cache)
        return self.net.mlm_logits(enc.final_norm(x[:, -1]))  # (B, V)

    @torch.no_grad()
    def start(self, prompts: list[Sequence[int]]) -> Tensor:
        if min(len(p) for p in prompts) == 0:
            raise ValueError("empty prompt")
        tokens = pad_batch([list(p) for p in prompts], self.pad_id, left=True)  # (B, L)
        self.cache = [KVCache() for _ in self.net.encoder.layers]
        return self._run(tokens, tokens.eq(self.pad_id))  # left padding: masked keys for every later step

    @torch.no_grad()
    def step(self, tokens: Tensor) -> Tensor:
        # one new real token per row: it sees every real key cached before it
        return self._run(tokens[:, None], torch.zeros(len(tokens), 1, dtype=torch.bool))


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


def penalize_repeats(scores: Tensor, row: int, ids: list[int], penalty: float, no_repeat_ngram: int) -> None:
    """In place on ``scores[row]``: CTRL's repetition penalty (Keskar et al. 2019: a positive score of a
    token already generated is divided by ``penalty``, a negative one multiplied) and a ban of every
    token that would repeat an ``no_repeat_ngram``-gram of the generated ids (0 = off)."""
    if penalty != 1.0 and ids:
        seen = torch.tensor(sorted(set(ids)))
        s = scores[row, seen]
        scores[row, seen] = torch.where(s > 0, s / penalty, s * penalty)
    n = no_repeat_ngram
    if n > 0 and len(ids) >= n:
        tail = ids[len(ids) - n + 1:] if n > 1 else []
        repeat = [ids[i + n - 1] for i in range(len(ids) - n + 1) if ids[i : i + n - 1] == tail]
        scores[row, repeat] = float("-inf")


def generate(model: NextTokenModel, prompts: list[Sequence[int]], *, max_new_tokens: int,
             stop: Callable[[int, list[int]], bool] | None = None, eos_ids: Sequence[int] = (),
             allowed: Callable[[int, list[int]], Tensor | None] | None = None, banned: Sequence[int] = (),
             temperature: float = 0.0, top_p: float = 1.0, generator: torch.Generator | None = None,
             max_seconds: float | None = None, repetition_penalty: float = 1.0,
             no_repeat_ngram: int = 0) -> GenerationResult:
    """Decode every prompt in one batch. ``temperature=0`` is greedy. ``stop(row, ids)`` ends a row
    once its generated ids are complete (end of line or block); ``allowed(row, ids)`` (a (V,) bool
    mask, or None for no constraint) limits the next token of a row given its generated ids (token
    healing); ``banned`` ids are never produced; ``repetition_penalty`` and ``no_repeat_ngram`` work
    against loops (``penalize_repeats``; 1.0 and 0 leave the scores alone). A row also ends at an
    ``eos_ids`` token (not kept), after ``max_new_tokens``, or when ``max_seconds`` have passed (the
    rows keep what they have)."""
    if temperature < 0 or not 0 < top_p <= 1 or repetition_penalty <= 0 or no_repeat_ngram < 0:
        raise ValueError(f"temperature must be >= 0, top_p in (0, 1], repetition_penalty > 0 and no_repeat_ngram "
                         f">= 0, got {temperature}, {top_p}, {repetition_penalty}, {no_repeat_ngram}")
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
        for row in torch.nonzero(active).flatten().tolist():
            penalize_repeats(scores, row, out[row], repetition_penalty, no_repeat_ngram)
            mask = allowed(row, out[row]) if allowed is not None else None
            if mask is not None:
                scores[row] = scores[row].masked_fill(~mask, float("-inf"))
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


__all__ = ["GenerationResult", "NeuralLM", "NextTokenModel", "generate", "penalize_repeats", "top_p_filter"]
