"""bench/gpu_check.py passes its CPU dry run (what runs as is on a GPU machine), and its FLOP count
is the one the benches share."""

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture(scope="module")
def bench_modules():
    sys.path.insert(0, str(BENCH))
    try:
        import gpu_check
        import pretrain_vs_esm

        yield gpu_check, pretrain_vs_esm
    finally:
        sys.path.remove(str(BENCH))


def test_model_flops_golden(bench_modules):
    _, pve = bench_modules
    from fm_core.config import EncoderConfig

    cfg = EncoderConfig.from_name("tiny", vocab_size=33, pad_id=1, mask_id=32)  # 2 layers, D 64, F 256
    weights = 2 * (4 * 64 * 64 + 2 * 64 * 256)  # 98,304 matmul weights
    fwd = 2 * 30 * weights + 4 * 2 * 64 * (10 * 10 + 20 * 20) + 2 * 5 * (64 * 64 + 64 * 33)
    assert pve.model_flops(cfg, [[10, 20]], n_masked=5, train=True) == 3 * fwd
    assert pve.model_flops(cfg, [[10, 20]], n_masked=5, train=False) == 2 * 30 * weights + 4 * 2 * 64 * 500


def test_gpu_check_cpu_dry_run(bench_modules, tmp_path):
    gpu_check, _ = bench_modules
    out = tmp_path / "gpu_check.json"
    result = gpu_check.main(["--dry-run", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["device"] == "cpu" and saved["skipped"] == [] and saved["peak_fp32_gflops"] > 0
    variants = saved["sizes"]["tiny"]
    assert set(variants) == {"real_tokens", "ours packed", "ours padded", "transformers", "fair-esm"}
    for name in ("ours packed", "ours padded", "transformers", "fair-esm"):
        log = variants[name]["log"]
        assert [x["step"] for x in log] == [1, 2]  # logged every step in the dry run
        # MFU is relative to a peak measured at another moment: on a loaded CPU it can exceed 1, so
        # only its sign is checked here (the figures belong in bench/, not in a timed test)
        assert all(x["tokens_per_s"] > 0 and x["mfu"] > 0 for x in log)
    assert result["sizes"]["tiny"]["real_tokens"] == variants["real_tokens"] > 0


def test_pretrain_vs_esm_cpu_smoke(bench_modules, tmp_path):
    """The whole bench at the tiny shape: every variant runs (the fair-esm contact head once crashed it
    unseen), and our fp32 path reproduces fair-esm's outputs from the very same weights."""
    _, pve = bench_modules
    out = tmp_path / "pve.json"
    result = pve.main(["--size", "tiny", "--max-tokens", "1024", "--batches", "1", "--rounds", "1", "--ablations",
                       "--workdir", str(tmp_path / "work"), "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["size"] == "tiny" and saved["real_tokens"] == result["real_tokens"] > 0
    assert set(saved["train"]) == {"esm (fp32, padded)", "ours fp32 padded", "ours fp32 packed", "ours bf16 packed",
                                   "transformers sdpa (fp32, padded)", "ours bf16 packed, bf16 attention",
                                   "ours bf16 padded"}
    assert set(saved["embed"]) == {"esm (fp32, padded)", "ours fp32 padded", "ours fp32 packed", "ours bf16 packed"}
    assert all(v["tokens_per_s"] > 0 for kind in ("train", "embed") for v in saved[kind].values())
    embed = saved["embed"]
    assert embed["ours fp32 padded"]["max_abs_diff_vs_esm"] < 1e-4  # same weights, same numbers
    assert embed["ours fp32 packed"]["vs_fp32_padded"]["cosine_min"] > 0.99999
    assert 0.99 < embed["ours bf16 packed"]["vs_fp32_padded"]["cosine_min"] < 1.0 + 1e-6


def test_profile_ops_lost_seconds_names_the_op_that_holds_back():
    """bench/profile_ops.py's analysis: a group's op time beyond what its FLOPs take at the peak."""
    sys.path.insert(0, str(BENCH))
    try:
        import profile_ops
    finally:
        sys.path.remove(str(BENCH))
    groups = {"matmul": 2.0, "attention": 1.5, "copy": 0.4}
    flops = {"matmul": 100e9 * 1.8, "attention": 100e9 * 0.3}  # at a 100 GFLOP/s peak: 1.8 s and 0.3 s ideal
    lost = profile_ops.lost_seconds(groups, flops, 100.0)
    assert list(lost) == ["attention", "copy", "matmul"]
    assert lost["attention"] == pytest.approx(1.2) and lost["copy"] == pytest.approx(0.4)
    assert lost["matmul"] == pytest.approx(0.2)
    profile_ops.PEAK[0] = 100.0
    out = profile_ops.summarise("t", groups, [], 1.0, flops, 0.0, dtype="bf16")
    assert out["held_back_by"] == "attention" and out["peak_dtype"] == "bf16"
    assert out["fraction_of_bf16_peak"] == pytest.approx(210 / 3.9 / 100)  # 210 GFLOP in 3.9 s at 100 GFLOP/s
