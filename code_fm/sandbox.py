"""Model output is data, never code. Syntax checks use ``ast.parse`` (which does not execute);
an evaluation that must *run* generated code does it through ``run_untrusted``: a separate,
isolated Python process with CPU-time, memory and file-size limits, a wall-clock
timeout, an empty environment and working directory, and no network (a fresh network namespace
via ``unshare -n`` where the system allows it, and socket connections refused in any case)."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass


def syntax_error(code: str, filename: str = "<generated>") -> str | None:
    """None when ``code`` parses as Python, else the error (line, column, message). Never runs it."""
    try:
        ast.parse(code, filename=filename)
    except SyntaxError as err:
        return f"{filename}:{err.lineno}:{err.offset}: {err.msg}"
    except (ValueError, RecursionError, MemoryError) as err:  # NUL bytes, absurd nesting
        return f"{filename}: {type(err).__name__}: {err}"
    return None


@dataclass
class RunResult:
    returncode: int | None  # None: killed at the wall-clock timeout
    stdout: str
    stderr: str
    timed_out: bool
    network_namespace: bool  # True when the process ran in an empty network namespace


# Runs first inside the child: refuse sockets, then apply limits, then exec the user code.
_PRELUDE = r"""
import resource, socket, sys
def _refuse(*a, **k):
    raise OSError("network access is disabled in this sandbox")
socket.socket.connect = socket.socket.connect_ex = _refuse
socket.create_connection = socket.getaddrinfo = _refuse
cpu, mem, fsize = {cpu}, {mem}, {fsize}
resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
code = sys.stdin.read()
del resource, _refuse, cpu, mem, fsize
exec(compile(code, "<generated>", "exec"), {{"__name__": "__main__"}})
"""


def _can_unshare() -> bool:
    exe = shutil.which("unshare")
    if exe is None:
        return False
    try:
        return subprocess.run([exe, "-rn", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def run_untrusted(code: str, *, timeout_s: float = 5.0, memory_mb: int = 512, max_file_mb: int = 16) -> RunResult:
    """Execute untrusted Python ``code`` in a locked-down child process and return its output."""
    prelude = _PRELUDE.format(cpu=max(1, int(timeout_s + 0.999)), mem=memory_mb << 20, fsize=max_file_mb << 20)
    cmd = [sys.executable, "-I", "-S", "-c", prelude]
    netns = _can_unshare()
    if netns:
        cmd = [shutil.which("unshare"), "-rn", *cmd]
    with tempfile.TemporaryDirectory(prefix="fm-sandbox-") as cwd:
        try:
            done = subprocess.run(cmd, input=code, capture_output=True, text=True, timeout=timeout_s, cwd=cwd,
                                  env={"PATH": "/usr/bin:/bin", "HOME": cwd, "LANG": "C.UTF-8"})
        except subprocess.TimeoutExpired as err:
            out = err.stdout.decode() if isinstance(err.stdout, bytes) else (err.stdout or "")
            return RunResult(None, out, "timed out", True, netns)
    return RunResult(done.returncode, done.stdout, done.stderr, False, netns)


__all__ = ["RunResult", "run_untrusted", "syntax_error"]

if __name__ == "__main__":  # pragma: no cover
    print(run_untrusted(sys.stdin.read()))
    os._exit(0)
