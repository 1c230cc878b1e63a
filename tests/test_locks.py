"""One writer per output directory (``fm_core.locks.DirectoryLock``), with real processes: a live
holder makes a second writer fail at once naming its pid and start time; a SIGKILLed holder's lock
is taken over with a note; two concurrent ``fm-embed`` runs into one ``out``: the second fails, the
first finishes intact; every tool that writes a directory refuses a locked one before any work."""

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

from fm_core.locks import LOCK_NAME, DirectoryBusyError, DirectoryLock

HOLDER = """
import sys, time
from contextlib import ExitStack
from fm_core.locks import DirectoryLock
with ExitStack() as stack:
    for d in sys.argv[1:]:
        stack.enter_context(DirectoryLock(d, what="test holder"))
    print("held", flush=True)
    time.sleep(600)
"""


def start_holder(*dirs: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, *map(str, dirs)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert line.strip() == "held", proc.stderr.read()
    return proc


def kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    proc.stdout.close()
    proc.stderr.close()


def test_live_holder_refuses_then_dead_holders_lock_is_taken_over(tmp_path, capsys):
    d = tmp_path / "out"
    holder = start_holder(d)
    try:
        record = json.loads((d / LOCK_NAME).read_text())
        assert record["pid"] == holder.pid and record["what"] == "test holder"
        started = time.monotonic()
        with pytest.raises(DirectoryBusyError) as err, DirectoryLock(d, what="second writer"):
            pass
        assert time.monotonic() - started < 1.0  # at once, no waiting
        message = str(err.value)
        assert f"pid {holder.pid}" in message and f"started {record['started']}" in message
        assert "another test holder is writing here" in message and str(d) in message
    finally:
        kill(holder)
    assert (d / LOCK_NAME).is_file()  # SIGKILL: no release, the record stays behind
    with DirectoryLock(d, what="second writer") as lock:
        assert lock.took_over["pid"] == holder.pid
        assert json.loads((d / LOCK_NAME).read_text())["pid"] == os.getpid()
    note = capsys.readouterr().err
    assert f"took over the lock of pid {holder.pid}" in note and "no longer running" in note
    assert not (d / LOCK_NAME).exists()  # a normal release leaves no lock file
    with DirectoryLock(d) as lock:  # ... so the next writer takes it silently
        assert lock.took_over is None
    assert capsys.readouterr().err == ""


def test_reentrant_and_cleans_up_what_it_created(tmp_path):
    fresh = tmp_path / "a" / "b"
    with DirectoryLock(fresh), DirectoryLock(fresh):  # the same process may lock it again
        assert (fresh / LOCK_NAME).is_file()
    assert not fresh.exists()  # created by the lock, left empty: removed
    with DirectoryLock(fresh):
        (fresh / "result.txt").write_text("x")
    assert sorted(p.name for p in fresh.iterdir()) == ["result.txt"]
    with pytest.raises(Exception, match="cannot create"):
        with DirectoryLock(fresh / "result.txt" / "sub"):
            pass


def _tools(tmp_path: Path, compose) -> dict:
    """Each directory-writing tool, called on ``d``; it must stop before any other work."""
    from bio_fm.scoring import score
    from data_prep.molecules import MoleculePrepConfig, prepare
    from fm_core.embed import embed
    from fm_core.finetune import finetune
    from fm_core.train import train
    from tasks.structure.predict import predict

    missing = str(tmp_path / "no-such-checkpoint")
    return {
        "fm-pretrain": lambda d: train(compose([f"paths.run_dir={d}"])),
        "fm-finetune": lambda d: finetune(compose(["task=contacts", f"paths.run_dir={d}"], config_name="finetune")),
        "fm-embed": lambda d: embed(compose([f"input={missing}", f"checkpoint={missing}", f"out={d}"],
                                            config_name="embed")),
        "fm-protein-score": lambda d: score(compose([f"input={missing}", f"checkpoint={missing}", f"out={d}"],
                                                    config_name="protein_score")),
        "fm-prep": lambda d: prepare(MoleculePrepConfig(source="freesolv", inputs=[missing], out=str(d))),
        "fm-predict-structure": lambda d: predict(missing, missing, str(d)),
    }


def test_every_tool_refuses_a_directory_another_process_writes(tmp_path, compose):
    tools = _tools(tmp_path, compose)
    dirs = {name: tmp_path / name for name in tools}
    for d in dirs.values():
        d.mkdir()
        (d / "theirs.txt").write_text("the first writer's result")
    holder = start_holder(*dirs.values())
    try:
        for name, call in tools.items():
            with pytest.raises(DirectoryBusyError, match=rf"pid {holder.pid} on .*, started "):
                call(dirs[name])
            assert sorted(p.name for p in dirs[name].iterdir()) == [LOCK_NAME, "theirs.txt"], name
            assert (dirs[name] / "theirs.txt").read_text() == "the first writer's result"
    finally:
        kill(holder)


def _fasta(path: Path, records) -> Path:
    with gzip.open(path, "wt") as fh:
        fh.writelines(f">{rid}\n{seq}\n" for rid, seq in records)
    return path


def test_two_concurrent_fm_embed_writers(tmp_path, valid_records, capsys):
    """The first run (a real ``fm-embed`` process) holds ``out`` part-way through its input; the
    second (the console command's function, in this process) fails at once: exit 2, one line
    naming the first's pid, no traceback; the first then finishes, intact."""
    from esm_fixtures import random_esm2, write_released_layout

    from fm_core.cli import run_app
    from fm_core.embed import read_embeddings

    ckpt = write_released_layout(random_esm2("tiny", seed=3), tmp_path / "esm2_t2_test.pt")
    records = [(rid, seq[:120]) for rid, seq in valid_records[:40]]
    fasta = _fasta(tmp_path / "in.fa.gz", records)
    out, flag, gate = tmp_path / "emb", tmp_path / "waiting", tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    common = [f"input={fasta}", f"checkpoint={ckpt}", f"out={out}", "progress=false", "chunk_records=16"]
    first = subprocess.Popen([str(Path(sys.executable).with_name("fm-embed")), *common,
                              "reader._target_=killpoint.gated_fasta", f"+reader.flag={flag}", f"+reader.gate={gate}",
                              "+reader.after=20"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 300
        while not flag.exists():
            assert first.poll() is None, first.stdout.read()[-3000:]
            assert time.monotonic() < deadline, "the first fm-embed did not reach its gate"
            time.sleep(0.05)
        index_then = (out / "index.tsv").read_text()
        capsys.readouterr()
        with pytest.raises(SystemExit) as code:
            run_app("embed", "fm-embed", resumes=True, argv=common)
        err = capsys.readouterr().err
        assert code.value.code == 2 and "Traceback" not in err, err
        assert f"pid {first.pid}" in err and "another fm-embed output is writing here" in err
        assert (out / "index.tsv").read_text() == index_then  # the second writer touched nothing
        gate.write_text("go")
        assert first.wait(300) == 0
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
        first.stdout.close()
    index = (out / "index.tsv").read_text().splitlines()
    assert len(index) == 1 + len(records)  # one row per id
    ids, means = read_embeddings(out)
    assert ids == [rid for rid, _ in records] and means.shape == (len(records), 64)
    assert json.loads((out / "metrics.json").read_text())["embed/sequences"] == len(records)
    assert not (out / LOCK_NAME).exists()


def test_a_refused_hydra_run_leaves_the_holders_job_config_alone(tmp_path):
    """Hydra's own `.hydra/` writing is off (`hydra.output_subdir: null`): the run writes it once it
    holds the directory's lock, so a second fm-finetune into a held directory changes nothing there,
    and a run that holds it records its config (which fm-report reads) even when the task then fails."""
    exe = Path(sys.executable).with_name("fm-finetune")
    env = {**os.environ, "WANDB_MODE": "offline", "FM_DEBUG": ""}
    held, free = tmp_path / "held", tmp_path / "free"
    (held / ".hydra").mkdir(parents=True)
    (held / ".hydra" / "config.yaml").write_text("the first run's config\n")
    args = ["task=contacts", "model=tiny", "logger=csv", f"task.data_dir={tmp_path / 'no_data'}"]
    holder = start_holder(held)
    try:
        second = subprocess.run([str(exe), *args, f"hydra.run.dir={held}"], capture_output=True, text=True,
                                env=env, timeout=600)
    finally:
        kill(holder)
    assert second.returncode == 2 and f"pid {holder.pid}" in second.stderr, second.stderr[-2000:]
    assert sorted(p.name for p in (held / ".hydra").iterdir()) == ["config.yaml"]
    assert (held / ".hydra" / "config.yaml").read_text() == "the first run's config\n"
    alone = subprocess.run([str(exe), *args, f"hydra.run.dir={free}"], capture_output=True, text=True, env=env,
                           timeout=600)
    assert alone.returncode == 2 and "no_data" in alone.stderr, alone.stderr[-2000:]  # the task's own error
    assert sorted(p.name for p in (free / ".hydra").iterdir()) == ["config.yaml", "hydra.yaml", "overrides.yaml"]
    assert f"data_dir: {tmp_path / 'no_data'}" in (free / ".hydra" / "config.yaml").read_text()
    assert f"task.data_dir={tmp_path / 'no_data'}" in (free / ".hydra" / "overrides.yaml").read_text()
