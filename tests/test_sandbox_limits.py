"""The sandbox HumanEval runs generated code in: an infinite loop, a fork bomb, a network call, a
write outside its directory, a subprocess and ctypes are each stopped, and counted as failures."""

from __future__ import annotations

from pathlib import Path

from code_fm.sandbox import run_many, run_untrusted


def test_infinite_loop_is_killed_at_the_timeout():
    r = run_untrusted("while True:\n    pass", timeout_s=1.0)
    assert r.timed_out and r.returncode is None


def test_fork_bomb_cannot_fork():
    bomb = "import os\nwhile True:\n    os.fork()\n"
    r = run_untrusted(bomb, timeout_s=3.0)
    assert not r.timed_out and r.returncode != 0 and "os.fork is not allowed" in r.stderr
    # below the audit hook, the kernel refuses too: RLIMIT_NPROC is 0 (posix.fork after removing nothing)
    raw = run_untrusted("import resource\nprint(resource.getrlimit(resource.RLIMIT_NPROC))", timeout_s=3.0)
    assert raw.stdout == "(0, 0)\n"


def test_network_call_is_refused():
    r = run_untrusted("import urllib.request\nurllib.request.urlopen('http://192.0.2.1/', timeout=2)", timeout_s=5.0)
    assert r.returncode != 0 and "network access is disabled" in r.stderr


def test_writes_stay_in_the_temporary_directory(tmp_path):
    target = tmp_path / "escaped.txt"
    r = run_untrusted(f"open({str(target)!r}, 'w').write('x')")
    assert r.returncode != 0 and "outside the working directory" in r.stderr and not target.exists()
    for code in (f"import os\nos.remove({str(Path(__file__))!r})", f"import os\nos.mkdir({str(tmp_path / 'd')!r})",
                 "import os\nos.system('touch /tmp/fm-sandbox-escape')", "import subprocess\nsubprocess.run(['true'])",
                 "import ctypes\nctypes.CDLL(None)"):
        bad = run_untrusted(code)
        assert bad.returncode != 0 and "not allowed" in bad.stderr, code
    assert Path(__file__).exists() and not (tmp_path / "d").exists()
    inside = run_untrusted("open('scratch.txt', 'w').write('ok')\nprint(open('scratch.txt').read())")
    assert inside.returncode == 0 and inside.stdout == "ok\n"  # its own directory is writable


def test_run_many_keeps_the_order():
    got = run_many([f"print({i} * {i})" for i in range(5)], workers=2, timeout_s=5.0, memory_mb=256)
    assert [r.stdout for r in got] == [f"{i * i}\n" for i in range(5)]
