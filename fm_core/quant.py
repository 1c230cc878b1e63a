"""INT8 inference: dynamic quantisation of the encoder's linear layers (``fm-embed precision=int8``).

Weights are stored as int8 with one scale per output channel; each batch's activations are
quantised on the fly (one scale per tensor) and the products run in int8 with int32 accumulation
(fbgemm / oneDNN kernels, VNNI where the CPU has it), then rescaled to float32. Everything else
(embeddings, LayerNorms, rotary, attention, GELU, the LM head) stays float32.

Why this API: ``torch.ao.quantization.quantize_dynamic`` is deprecated (torch's message names
2.10 for its removal; it is still present and working in 2.13, the version pinned here) in favour
of ``torchao``. torchao's int8 dynamic-activation path runs ``torch._int_mm`` behind Python-level
(de)quantisation, which on this CPU is slower than float32 without ``torch.compile`` (measured for
the 8M shapes: 28-72 GFLOP/s against 57-64 for float32 and 64-131 for the fused fbgemm kernels;
bench/embed_peers.py). When the torch pin moves past the removal, this module is the one place
to port.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn


def quantize_encoder_int8(encoder: nn.Module) -> nn.Module:
    """A copy of ``encoder`` (float32, eval) with every ``nn.Linear`` dynamically quantised to int8
    (per-channel weight scales). The original is left untouched (its weights still identify the
    model, e.g. in ``fm_core.embed.model_fingerprint``)."""
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    if torch.backends.quantized.engine not in ("x86", "fbgemm", "onednn", "qnnpack"):
        raise RuntimeError(f"int8 inference needs a quantized engine; torch has {torch.backends.quantized.engine!r}")
    quantized = copy.deepcopy(encoder).float().eval().cpu()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.ao\.quantization is deprecated.*")
        warnings.filterwarnings("ignore", message=r".*quantize_per_tensor.*deprecated.*")
        return quantize_dynamic(quantized, {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8)


def silence_int8_warnings() -> warnings.catch_warnings:
    """A context in which the quantised forward's deprecation warnings (one per op kind) are not printed."""
    ctx = warnings.catch_warnings()
    ctx.__enter__()
    warnings.filterwarnings("ignore", message=r".*(quantize_per_tensor|torch\.ao\.quantization).*deprecated.*")
    return ctx
