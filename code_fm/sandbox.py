"""Model output is data, never code. Syntax checks use ``ast.parse`` (which does not execute);
an evaluation that must *run* generated code (HumanEval) does it through ``run_untrusted`` /
``run_many``: a separate, isolated Python process (``python -I -S``) with

- kernel limits: CPU time, address space, file size, and no new processes (``RLIMIT_NPROC`` 0, so
  a fork bomb's first ``fork`` fails; a root parent runs the child as ``nobody``, to whom the limit
  and file permissions apply); its own session, killed as a group at the wall-clock timeout;
- no network: a fresh, empty network namespace via ``unshare -rn`` where the system allows it, and
  in any case an audit hook (PEP 578, cannot be removed from Python) refusing socket connections;
- no writes outside its temporary working directory: the audit hook refuses ``open`` for writing,
  and removing, renaming, creating or changing files anywhere else, and refuses subprocesses,
  ``exec``, ``fork``, signals to other processes and ``ctypes`` (which could call libc directly);
- an empty environment.

"""

from __future__ import annotations

import ast
import functools
import os
import shutil
import signal
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


# Runs first inside the child: the audit hook, then the limits, then the user code (read from stdin).
_PRELUDE = r"""
import os, resource, sys
_root = os.path.realpath(os.getcwd()) + os.sep
_write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
_path_events = {{"os.remove", "os.rename", "os.mkdir", "os.rmdir", "os.chmod", "os.chown", "os.link",
                 "os.symlink", "os.truncate", "os.utime", "os.chflags", "os.lchflags", "shutil.rmtree",
                 "os.mkfifo", "os.mknod"}}
_refused = {{"socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg", "socket.getaddrinfo",
             "subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty",
             "os.kill", "os.killpg", "ctypes.dlopen", "ctypes.dlsym", "ctypes.cdata", "os.setuid", "os.chroot"}}
def _inside(path, _real=os.path.realpath, _fs=os.fsdecode, _root=_root):
    if isinstance(path, int):  # an already-open descriptor
        return True
    try:
        return _real(_fs(path)).startswith(_root)
    except (TypeError, ValueError):
        return False
def _hook(event, args, _refused=_refused, _path_events=_path_events, _inside=_inside, _flags=_write_flags):
    if event in _refused:
        raise PermissionError(f"sandbox: {{event}} is not allowed (network access is disabled in this sandbox)"
                              if event.startswith("socket") else f"sandbox: {{event}} is not allowed")
    if event == "open":
        path, mode, flags = args
        writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or bool((flags or 0) & _flags)
        if writes and not _inside(path):
            raise PermissionError(f"sandbox: writing {{path!r}} outside the working directory is not allowed")
    elif event in _path_events:
        for a in args:
            if isinstance(a, (str, bytes, os.PathLike)) and not _inside(a):
                raise PermissionError(f"sandbox: {{event}} on {{a!r}} outside the working directory is not allowed")
sys.addaudithook(_hook)
cpu, mem, fsize = {cpu}, {mem}, {fsize}
resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))
code = sys.stdin.read()
del resource, cpu, mem, fsize, _hook, _inside, _refused, _path_events, _write_flags, _root
exec(compile(code, "<generated>", "exec"), {{"__name__": "__main__"}})
"""


NOBODY = 65534  # the unprivileged user a root parent's children run as


@functools.cache
def _launch() -> tuple[list[str], dict]:
    """The command prefix and ``Popen`` options of a sandboxed child. As root (exempt from
    ``RLIMIT_NPROC`` and from file permissions) the child runs as ``nobody``, with an interpreter
    ``nobody`` may execute (this one, else the system's ``python3``); then in a fresh user + network
    namespace (``unshare -rn``) where the system allows it."""
    interpreters = [sys.executable, "/usr/bin/python3"]
    drop = {"user": NOBODY, "group": NOBODY, "extra_groups": []} if os.geteuid() == 0 else {}
    unshare = shutil.which("unshare")
    for exe in interpreters if drop else interpreters[:1]:
        for prefix in ([unshare, "-rn"], []) if unshare else ([],):
            try:
                ok = subprocess.run([*prefix, exe, "-I", "-S", "-c", "pass"], capture_output=True, timeout=20,
                                    cwd="/", **drop).returncode == 0
            except (OSError, subprocess.SubprocessError):
                ok = False
            if ok:
                return [*prefix, exe, "-I", "-S"], drop
    return [sys.executable, "-I", "-S"], {}


def run_untrusted(code: str, *, timeout_s: float = 5.0, memory_mb: int = 512, max_file_mb: int = 16) -> RunResult:
    """Execute untrusted Python ``code`` in a locked-down child process and return its output."""
    # the CPU limit sits a second past the wall clock, so a spinning child is always reported as timed out
    prelude = _PRELUDE.format(cpu=int(timeout_s + 0.999) + 1, mem=memory_mb << 20, fsize=max_file_mb << 20)
    prefix, drop = _launch()
    netns = prefix[1:2] == ["-rn"]
    with tempfile.TemporaryDirectory(prefix="fm-sandbox-") as cwd:
        if drop:
            os.chown(cwd, drop["user"], drop["group"])
        proc = subprocess.Popen([*prefix, "-c", prelude], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, cwd=cwd,
                                env={"PATH": "/usr/bin:/bin", "HOME": cwd, "LANG": "C.UTF-8"},
                                start_new_session=True, **drop)
        try:
            out, err = proc.communicate(code, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            out, _ = proc.communicate()
            return RunResult(None, out or "", "timed out", True, netns)
        finally:
            _kill_group(proc)  # nothing of it outlives the call
    return RunResult(proc.returncode, out, err, False, netns)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_many(codes: list[str], *, workers: int, timeout_s: float, memory_mb: int,
             max_file_mb: int = 16) -> list[RunResult]:
    """``run_untrusted`` on each of ``codes``, ``workers`` children at a time, results in order."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(lambda c: run_untrusted(c, timeout_s=timeout_s, memory_mb=memory_mb,
                                                     max_file_mb=max_file_mb), codes))


__all__ = ["RunResult", "run_many", "run_untrusted", "syntax_error"]

if __name__ == "__main__":  # pragma: no cover
    print(run_untrusted(sys.stdin.read()))
    os._exit(0)
