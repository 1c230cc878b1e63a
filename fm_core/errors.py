"""The one error path of every CLI.

`UserError` is a user's mistake (bad input file or record, bad override, missing path, wrong
checkpoint kind, read-only output): `str(err)` is one or two lines naming the file, record or key
and the remedy. `run_cli` prints it as `<tool>: error: <message>` and exits 2 without a traceback
(`--debug` or `FM_DEBUG=1` shows it); programming errors keep their traceback. Ctrl-C exits 130
with the resume hint where the tool resumes; Lightning's SIGTERM stop exits 143 (the checkpoint it
leaves: ``fm_core.callbacks.CheckpointOnSigterm``).

This module imports nothing heavy: it runs before torch is imported.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import NoReturn

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143  # 128 + SIGTERM
RESUME_HINT = "interrupted: rerun the same command to resume"


class UserError(Exception):
    """A user's mistake; the message names the file/record/key and the remedy."""


class InputFileError(UserError, ValueError):
    """An input file that cannot be read as what it should be (binary, truncated, wrong format)."""


def debug_requested(argv: list[str] | None = None) -> bool:
    """True when `FM_DEBUG=1` is set or `--debug` is on the command line."""
    argv = sys.argv[1:] if argv is None else argv
    return os.environ.get("FM_DEBUG", "") not in ("", "0") or "--debug" in argv


def strip_debug(argv: list[str]) -> list[str]:
    """The arguments without `--debug` (the parsers behind the wrapper do not know it)."""
    return [a for a in argv if a != "--debug"]


def fail(tool: str, message: str, code: int = EXIT_USAGE) -> NoReturn:
    """Print `<tool>: error: <message>` on stderr and exit with `code`."""
    print(f"{tool}: error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(code)


def _os_error_message(err: OSError) -> str:
    if not err.filename:
        return f"{err} (check the path)" if isinstance(err, FileNotFoundError) else str(err)
    name = f" {err.filename}"
    reason = err.strerror or str(err)
    if isinstance(err, PermissionError):
        return f"cannot write or read{name}: {reason} (choose a writable location or fix permissions)"
    if isinstance(err, FileNotFoundError):
        return f"no such file or directory:{name} (check the path)"
    if isinstance(err, IsADirectoryError):
        return f"{name.strip()} is a directory, a file was expected"
    return f"{name.strip()}: {reason}".lstrip(": ")


def _user_message(err: BaseException) -> str | None:
    """The one-line message of a user's mistake, or None for a programming error. A wrapper whose
    cause is a user's mistake (Hydra's ``instantiate`` re-raises what a constructor refused) is one."""
    while err.__cause__ is not None and not isinstance(err, UserError):
        err = err.__cause__
    if isinstance(err, UserError):
        return str(err)
    if isinstance(err, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return _os_error_message(err)
    if isinstance(err, OSError) and err.errno is not None and err.errno in (28, 30):  # ENOSPC, EROFS
        return _os_error_message(err)
    return None


class _Interrupts:
    """Notes a Ctrl-C even where a library turns it into its own exit (Lightning exits 1)."""

    seen = False

    @classmethod
    def handler(cls, signum: int, frame: object) -> None:
        cls.seen = True
        raise KeyboardInterrupt

    @classmethod
    def install(cls) -> None:
        if threading.current_thread() is threading.main_thread() and \
                signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            signal.signal(signal.SIGINT, cls.handler)


def _interrupted(tool: str, resumes: bool) -> NoReturn:
    print(f"\n{tool}: {RESUME_HINT if resumes else 'interrupted'}", file=sys.stderr, flush=True)
    raise SystemExit(EXIT_INTERRUPTED)


def run_cli(tool: str, work: Callable[[], object], *, resumes: bool = False) -> None:
    """Run `work()` behind the one error path (see the module docstring)."""
    debug = debug_requested()
    _Interrupts.install()
    try:
        work()
    except KeyboardInterrupt:
        if debug:
            raise
        _interrupted(tool, resumes)
    except SystemExit as done:
        if type(done).__name__ == "SIGTERMException":  # Lightning's stop between steps (not imported here)
            print(f"\n{tool}: stopped by SIGTERM" + (": rerun the same command to resume" if resumes else ""),
                  file=sys.stderr, flush=True)
            raise SystemExit(EXIT_TERMINATED) from None
        if _Interrupts.seen and done.code not in (0, EXIT_INTERRUPTED, None) and not debug:
            _interrupted(tool, resumes)
        raise
    except Exception as err:  # noqa: BLE001 - sorted into user mistakes and programming errors
        message = None if debug else _user_message(err)
        if message is None:
            raise
        fail(tool, " ".join(message.split("\n")[:2]) if message.count("\n") > 1 else message)


def exit_with(tool: str, work: Callable[[], int], *, resumes: bool = False) -> NoReturn:
    """`run_cli` for work that returns its exit code; exits with it."""
    codes = []
    run_cli(tool, lambda: codes.append(work()), resumes=resumes)
    raise SystemExit(codes[0])


def argparse_main(tool: str, parser: argparse.ArgumentParser, target: str, argv: list[str] | None) -> NoReturn:
    """The console command of an argparse CLI: parse (fast: the parser's module imports nothing
    heavy), then import `target` ("module:function", called with the parsed arguments, returning
    the exit code or None) and run it behind the one error path. ``--debug`` is added here, once
    for every such CLI."""
    parser.add_argument("--debug", action="store_true", help="show tracebacks (also FM_DEBUG=1)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    module, _, name = target.partition(":")
    exit_with(tool, lambda: getattr(importlib.import_module(module), name)(args) or 0)
