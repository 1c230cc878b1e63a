"""Resource bounds and no network: generated code is only parsed, or run in a locked-down child;
the README's main job runs with networking made unavailable."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from code_fm.sandbox import run_untrusted, syntax_error

FM_PRETRAIN = str(Path(sys.executable).with_name("fm-pretrain"))


def test_syntax_check_never_executes(tmp_path):
    marker = tmp_path / "ran"
    code = f"open({str(marker)!r}, 'w').write('x')\n"
    assert syntax_error(code) is None and not marker.exists()
    assert syntax_error("def f(:\n    pass") == "<generated>:1:7: invalid syntax"
    assert "null bytes" in syntax_error("x = 1\0")


def test_untrusted_code_is_bounded():
    assert run_untrusted("print(6 * 7)").stdout == "42\n"
    spin = run_untrusted("while True:\n    pass", timeout_s=1.0)
    assert spin.timed_out and spin.returncode is None
    hog = run_untrusted("x = bytearray(2**31)", memory_mb=256)
    assert hog.returncode != 0 and "MemoryError" in hog.stderr
    net = run_untrusted("import socket\nsocket.create_connection(('192.0.2.1', 80), timeout=2)")
    assert net.returncode != 0 and "network access is disabled" in net.stderr
    raw = run_untrusted("import _socket\ns = _socket.socket()\ns.settimeout(2)\ns.connect(('192.0.2.1', 80))")
    assert raw.returncode != 0 and ("OSError" in raw.stderr or "network access is disabled" in raw.stderr)  # unreachable, or refused
    env = run_untrusted("import os\nprint(sorted(os.environ))")
    assert "WANDB" not in env.stdout and "PYTHONPATH" not in env.stdout


GUARD = """
import socket
def _refuse(*args, **kwargs):
    raise OSError("no network (test guard)")
_connect = socket.socket.connect
def _local_only(self, address):
    # AF_UNIX (W&B's local service) is fine; anything with a host is not
    if isinstance(address, tuple):
        _refuse()
    return _connect(self, address)
socket.socket.connect = _local_only
socket.create_connection = _refuse
socket.getaddrinfo = _refuse
"""


def test_readme_main_job_runs_without_network(tmp_path):
    """`fm-pretrain experiment=protein_quick` (README), shortened, in an empty network namespace
    when the system allows it, and in any case with every non-local socket connection refused."""
    (tmp_path / "guard").mkdir()
    (tmp_path / "guard" / "sitecustomize.py").write_text(GUARD)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_MODE", "HTTP", "HTTPS"))}
    env.update(PYTHONPATH=str(tmp_path / "guard"), HF_HUB_OFFLINE="0", WANDB_SILENT="true")
    run_dir = tmp_path / "run"
    cmd = [FM_PRETRAIN, "experiment=protein_quick", f"hydra.run.dir={run_dir}", "model=tiny", "trainer.max_steps=6",
           "trainer.val_check_interval=3", "trainer.enable_progress_bar=false", "+data.train.max_records=200",
           "+data.val.max_records=40", "data.max_tokens=2048"]
    if shutil.which("unshare") and subprocess.run(["unshare", "-rn", "true"], capture_output=True).returncode == 0:
        cmd = ["unshare", "-rn", *cmd]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["train/steps"] == 6 and metrics["data/train_read"] == 200
    assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 1  # W&B logged, offline
    assert (run_dir / "export" / "model.safetensors").is_file()
