"""INT8 inference (fm-embed precision=int8): quantised linear layers, agreement with float32, the
float32 model left untouched."""

import numpy as np
import pytest
import torch
from esm_fixtures import random_esm2

from bio_fm.esm_compat import from_esm2_module
from fm_core.embed import Embedder, model_fingerprint
from fm_core.quant import quantize_encoder_int8


@pytest.fixture(scope="module")
def net():
    return from_esm2_module(random_esm2("tiny", seed=3))


def test_int8_quantises_every_linear_and_leaves_the_model_alone(net):
    before = model_fingerprint(net)
    q = quantize_encoder_int8(net.encoder)
    from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear

    n_linear = 4 * net.config.num_layers  # qkv, out_proj, fc1, fc2 per layer
    assert sum(isinstance(m, DynamicQuantizedLinear) for m in q.modules()) == n_linear
    assert not any(type(m) is torch.nn.Linear for m in q.modules())
    assert sum(type(m) is torch.nn.Linear for m in net.encoder.modules()) == n_linear  # original untouched
    assert model_fingerprint(net) == before


def test_int8_embeddings_agree_with_float32(net, alphabet, valid_records):
    records = [(rid, alphabet.encode(seq[:300])) for rid, seq in valid_records[:12]]
    fp32 = Embedder(net, alphabet, layers=[-1], max_tokens=2048).embed(records)
    int8 = Embedder(net, alphabet, layers=[-1], max_tokens=2048, precision="int8").embed(records)
    last = net.config.num_layers
    a = np.stack([e.mean[last] for e in fp32])
    b = np.stack([e.mean[last] for e in int8])
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert 0.995 < cos.min() < 1.0  # int8 really ran (not bit-identical) and stays close
    assert np.abs(a - b).max() > 1e-4


def test_int8_refused_off_cpu_and_unknown_precisions(net, alphabet):
    with pytest.raises(ValueError, match="int8 runs on the CPU only"):
        Embedder(net, alphabet, precision="int8", device="meta")
    with pytest.raises(ValueError, match="choose auto or one of"):
        Embedder(net, alphabet, precision="int4")


@pytest.mark.parametrize("amx,avx512_bf16", [(True, True), (False, True), (False, False)])
def test_auto_precision_is_bf16_only_where_the_cpu_has_bf16_instructions(alphabet, monkeypatch, amx, avx512_bf16):
    import torch

    from fm_core.embed import resolve_precision

    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    want = "bfloat16" if avx512_bf16 else "float32"
    assert resolve_precision("auto") == want and resolve_precision("int8") == "int8"
    assert resolve_precision("auto", "cuda") == "float32"  # GPUs: not measured, exact path
    e = Embedder(from_esm2_module(random_esm2("tiny", seed=3)), alphabet, precision="auto")  # own copy: it is cast
    assert e.precision == want and e.dtype == (torch.bfloat16 if avx512_bf16 else torch.float32)
