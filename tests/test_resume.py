"""Crash and resume: a real ``fm-pretrain`` process is SIGKILLed in the middle of training and the
same command, rerun, finishes with exactly the metrics of an uninterrupted run (data order,
learning-rate schedule, optimizer and RNG states all restored); checkpoints are atomic, hashed,
the newest k are kept, and a damaged one is passed over for the previous one."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fm_core.checkpoint import (
    AtomicCheckpointIO,
    CheckpointError,
    atomic_torch_save,
    find_resume_checkpoint,
    safe_torch_load,
    sidecar_path,
    verify_checkpoint,
)
from fm_core.train import train

FM_PRETRAIN = str(Path(sys.executable).with_name("fm-pretrain"))
# 64 training sequences: about 10 batches an epoch, so 36 steps cross three epoch boundaries
STEPS, CKPT_EVERY, KILL_AT = 36, 7, 23


def _small_fasta(records, path: Path, n: int) -> Path:
    with gzip.open(path, "wt") as fh:
        for name, seq in records[:n]:
            fh.write(f">{name}\n{seq}\n")
    return path


@pytest.fixture(scope="module")
def small_data(tmp_path_factory, valid_records):
    d = tmp_path_factory.mktemp("resume_data")
    return _small_fasta(valid_records, d / "train.fa.gz", 64), _small_fasta(valid_records[64:], d / "val.fa.gz", 24)


def overrides(train_fa: Path, val_fa: Path, run_dir: Path) -> list[str]:
    return ["model=tiny", "model.max_length=128", "data=fasta", f"data.train.path={train_fa}",
            f"data.val.path={val_fa}", "data.max_tokens=1024", f"trainer.max_steps={STEPS}",
            "trainer.val_check_interval=10", "trainer.log_every_n_steps=1", "trainer.enable_progress_bar=false",
            f"callbacks.resume_checkpoint.every_n_train_steps={CKPT_EVERY}", "module.scheduler.warmup_steps=5",
            "export=true", f"hydra.run.dir={run_dir}", f"paths.run_dir={run_dir}"]


def _subprocess_env() -> dict[str, str]:
    """fm-pretrain's environment: this folder on PYTHONPATH (for killpoint), W&B offline."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]),
            "WANDB_MODE": "offline", "WANDB_SILENT": "true"}


@pytest.fixture(scope="module")
def uninterrupted(small_data, compose, tmp_path_factory):
    """The run of ``overrides`` never interrupted (in-process; the logger does not touch the numbers):
    its run directory and metrics, shared by the SIGKILL and SIGTERM tests."""
    ref_dir = tmp_path_factory.mktemp("uninterrupted") / "run"
    return ref_dir, train(compose([*overrides(*small_data, ref_dir)[:-2], f"paths.run_dir={ref_dir}", "logger=csv"]))


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"fm-pretrain exited with {proc.returncode} before step {KILL_AT}:\n"
                                 + proc.stdout.read()[-3000:])
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("fm-pretrain did not reach the kill point in time")
        time.sleep(0.05)


def test_sigkill_mid_training_then_resume_equals_uninterrupted(small_data, uninterrupted, compose, tmp_path, capsys):
    train_fa, val_fa = small_data
    run_dir, flag = tmp_path / "run", tmp_path / "stalled"
    env = _subprocess_env()
    cmd = [FM_PRETRAIN, *overrides(train_fa, val_fa, run_dir)]
    load_before, t0 = os.getloadavg()[0], time.perf_counter()
    first = subprocess.Popen([*cmd, "+callbacks.stall._target_=killpoint.StallAt", f"+callbacks.stall.step={KILL_AT}",
                              f"+callbacks.stall.flag={flag}"], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    _wait_for(flag, first)
    first_wall = time.perf_counter() - t0
    stalled_epoch = int(flag.read_text())
    first.send_signal(signal.SIGKILL)
    first.wait(30)
    first.stdout.close()
    assert first.returncode == -signal.SIGKILL
    assert not (run_dir / "metrics.json").exists()
    saved = sorted(p.name for p in (run_dir / "checkpoints").glob("resume-*.ckpt"))
    assert saved == ["resume-step0000007.ckpt", "resume-step0000014.ckpt", "resume-step0000021.ckpt"]
    assert stalled_epoch >= 1  # the run is killed past an epoch boundary, part-way through an epoch

    # the same command, rerun (resume=auto is the default)
    t0 = time.perf_counter()
    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    second_wall = time.perf_counter() - t0
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert f"resuming from {run_dir / 'checkpoints' / 'resume-step0000021.ckpt'}" in second.stdout
    resumed = json.loads((run_dir / "metrics.json").read_text())

    # the same run, never interrupted
    ref_dir, ref = uninterrupted

    for key in ("val/perplexity", "val/accuracy", "val/loss", "train/steps", "train/tokens_seen"):
        assert resumed[key] == ref[key], key  # exactly, on CPU
    assert resumed["train/steps"] == STEPS
    # wall time and throughput cover both legs, not just the last one: the first leg's time up to
    # the checkpoint the second resumed from travels in that checkpoint (work redone after the
    # crash counts once), each bounded by what the legs took from the outside
    assert (resumed["train/legs"], ref["train/legs"]) == (2, 1)
    leg1 = safe_torch_load(run_dir / "checkpoints" / "resume-step0000021.ckpt")["fm_toolkit"]["train_seconds"]
    leg2 = resumed["train/seconds"] - leg1
    assert 0 < leg1 < first_wall and 0 < leg2 < second_wall, (leg1, first_wall, leg2, second_wall)
    assert resumed["train/tokens_per_second"] == resumed["train/tokens_seen"] / resumed["train/seconds"]
    cpu1 = safe_torch_load(run_dir / "checkpoints" / "resume-step0000021.ckpt")["fm_toolkit"]["train_cpu_seconds"]
    assert 0 < cpu1 < resumed["train/cpu_seconds"] and ref["train/cpu_seconds"] > 0  # CPU seconds: both legs
    # ... and so, on a machine that is not oversubscribed, within 10% of the uninterrupted run
    ratio = resumed["train/seconds"] / ref["train/seconds"]
    with capsys.disabled():
        print(f"\ntrain/seconds resumed {resumed['train/seconds']:.2f} (legs {leg1:.2f} + {leg2:.2f}), "
              f"uninterrupted {ref['train/seconds']:.2f}: ratio {ratio:.3f}; load {load_before:.1f}")
    # no timing bound here (timings belong in bench/resume_seconds.py, which compares the two in
    # rounds): what is asserted is that each leg is counted once and bounded by its process's wall time
    # rerunning the finished run changes nothing, says so, and leaves metrics.json as it was
    before = (ref_dir / "metrics.json").read_bytes()
    again = train(compose([*overrides(train_fa, val_fa, ref_dir)[:-2], f"paths.run_dir={ref_dir}", "logger=csv"]))
    assert "already finished at step 36, nothing to train" in capsys.readouterr().out
    assert again == json.loads(before) and (ref_dir / "metrics.json").read_bytes() == before
    ours, theirs = load_file(run_dir / "export" / "model.safetensors"), load_file(ref_dir / "export" / "model.safetensors")
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)

    # keep the newest 3 periodic checkpoints, each with a verified sidecar
    kept = sorted(p.name for p in (run_dir / "checkpoints").glob("resume-*.ckpt"))
    assert kept == ["resume-step0000021.ckpt", "resume-step0000028.ckpt", "resume-step0000035.ckpt"]
    assert all(verify_checkpoint(run_dir / "checkpoints" / k)["global_step"] == int(k[-12:-5]) for k in kept)
    # the W&B offline run continues: two offline segments (before and after the crash), one run id
    segments = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(segments) == 2 and len({p.name.rsplit("-", 1)[1] for p in segments}) == 1


TERM_AT = 17  # between the periodic checkpoints at steps 14 and 21


def test_sigterm_saves_the_last_step_and_resume_continues_from_it(small_data, uninterrupted, tmp_path):
    """SIGTERM (a scheduler's stop): the run exits 143 after the step under way, leaves a verified
    checkpoint of that step (not only the periodic one 3 steps back), and the rerun continues from it
    to exactly the metrics of an uninterrupted run."""
    train_fa, val_fa = small_data
    run_dir, flag = tmp_path / "run", tmp_path / "stalled"
    env = _subprocess_env()
    cmd = [FM_PRETRAIN, *overrides(train_fa, val_fa, run_dir), "logger=csv"]
    first = subprocess.Popen([*cmd, "+callbacks.stall._target_=killpoint.StallUntilSigterm",
                              f"+callbacks.stall.step={TERM_AT}", f"+callbacks.stall.flag={flag}"], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _wait_for(flag, first)
    first.send_signal(signal.SIGTERM)
    out = first.communicate(timeout=120)[0]
    assert first.returncode == 143, out[-3000:]
    saved = run_dir / "checkpoints" / "sigterm.ckpt"
    assert f"SIGTERM: saved step {TERM_AT} to {saved}" in out and "stopped by SIGTERM: rerun the same command" in out
    assert verify_checkpoint(saved)["global_step"] == TERM_AT
    assert find_resume_checkpoint(run_dir / "checkpoints") == saved  # newer than resume-step0000014
    assert not (run_dir / "metrics.json").exists()

    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert f"resuming from {saved}" in second.stdout
    resumed = json.loads((run_dir / "metrics.json").read_text())
    assert not saved.exists() and not sidecar_path(saved).exists()  # a finished run keeps no stop checkpoint

    ref = uninterrupted[1]
    for key in ("val/perplexity", "val/accuracy", "val/loss", "train/steps", "train/tokens_seen"):
        assert resumed[key] == ref[key], key  # exactly, on CPU
    assert (resumed["train/legs"], resumed["train/steps"]) == (2, STEPS)


def test_damaged_newest_checkpoint_falls_back_to_previous(tmp_path, capsys):
    d = tmp_path / "checkpoints"
    for step in (10, 20, 30):
        atomic_torch_save({"global_step": step, "w": torch.full((100,), float(step))}, d / f"s{step}.ckpt",
                          {"global_step": step, "written_ns": step})
    assert find_resume_checkpoint(d) == d / "s30.ckpt"
    # a crash that left a partial temp file never touches a finished checkpoint; the temp is removed
    (d / "s40.ckpt.tmp").write_bytes(b"partial")
    # truncated newest -> the previous one, with a message naming the file and the reason
    with open(d / "s30.ckpt", "r+b") as fh:
        fh.truncate(200)
    assert find_resume_checkpoint(d) == d / "s20.ckpt"
    assert "s30.ckpt: truncated" in capsys.readouterr().out
    assert not (d / "s40.ckpt.tmp").exists()
    # same size, flipped bytes -> caught by the hash
    data = bytearray((d / "s20.ckpt").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (d / "s20.ckpt").write_bytes(bytes(data))
    assert find_resume_checkpoint(d) == d / "s10.ckpt"
    assert "s20.ckpt: corrupt: SHA-256" in capsys.readouterr().out
    # the Lightning CheckpointIO refuses a damaged file outright; removing drops the sidecar too
    io = AtomicCheckpointIO()
    with pytest.raises(CheckpointError, match="corrupt"):
        io.load_checkpoint(d / "s20.ckpt")
    assert float(io.load_checkpoint(d / "s10.ckpt")["w"][0]) == 10.0
    io.remove_checkpoint(d / "s10.ckpt")
    assert not sidecar_path(d / "s10.ckpt").exists() and find_resume_checkpoint(d) is None


def test_resume_modes(compose, tmp_path):
    from fm_core.train import resolve_ckpt_path

    cfg = compose([f"paths.run_dir={tmp_path}", "resume=true"])
    with pytest.raises(FileNotFoundError, match="no usable checkpoint"):
        resolve_ckpt_path(cfg)
    assert resolve_ckpt_path(compose([f"paths.run_dir={tmp_path}"])) is None  # auto, nothing there
    atomic_torch_save({"global_step": 5}, tmp_path / "checkpoints" / "a.ckpt", {"global_step": 5})
    assert resolve_ckpt_path(compose([f"paths.run_dir={tmp_path}"])) == str(tmp_path / "checkpoints" / "a.ckpt")
    assert resolve_ckpt_path(compose([f"paths.run_dir={tmp_path}", "resume=false"])) is None
    with pytest.raises(ValueError, match="resume must be one of"):
        resolve_ckpt_path(compose([f"paths.run_dir={tmp_path}", "resume=maybe"]))
