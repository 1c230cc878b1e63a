"""Training checkpoints: atomic writes with a size + SHA-256 sidecar, verification, resume lookup,
and the one safe ``torch.load`` (``weights_only``) every loader of this toolkit goes through.

Model exports (``config.json`` + ``model.safetensors``) live in ``fm_core.export``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from fm_core.errors import UserError

log = logging.getLogger(__name__)


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be loaded; the message names the file and the reason."""


def safe_torch_load(path: str | Path, safe_globals: tuple[Any, ...] = ()) -> Any:
    """``torch.load(weights_only=True)`` allowing only ``safe_globals`` beside tensors and plain
    containers. Truncated/corrupt files and refused classes become ``CheckpointError``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        with torch.serialization.safe_globals(list(safe_globals)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle errors, truncation, refused globals
        text = _torch_reason(str(err))
        if "GLOBAL" in text or "Unsupported class" in text:
            start = text.find("GLOBAL")
            what = text[start:].split(" was not")[0].split(" whose")[0] if start >= 0 else text
            reason = f"holds a Python object this loader refuses to unpickle ({what}); nothing in it was run"
        elif isinstance(err, RuntimeError | EOFError | OSError) or "zip" in text.lower():
            reason = f"truncated or corrupt file ({type(err).__name__}: {text})"
        else:
            reason = f"not a loadable checkpoint ({type(err).__name__}: {text}); nothing in it was run"
        raise CheckpointError(f"{path}: {reason}") from err


def _torch_reason(text: str) -> str:
    """torch's refusal without its advice to retry with ``weights_only=False`` (never right for a
    file that failed the safe load): the line that says what was refused."""
    advice = ("Weights only load failed", "weights_only", "Please file an issue", "Check the documentation")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    useful = [line for line in lines if not any(a in line for a in advice)]
    return useful[0] if useful else "refused by the safe loader"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)



SIDECAR_SUFFIX = ".sha256.json"


def sidecar_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + SIDECAR_SUFFIX)


class _HashingWriter:
    """A write-only file object that hashes and counts what passes through (torch.save streams
    its zip archive through ``write``), so a checkpoint is hashed without being read back."""

    def __init__(self, fh):
        self.fh, self.sha, self.size = fh, hashlib.sha256(), 0

    def write(self, data) -> int:
        view = memoryview(data)
        self.sha.update(view)
        self.size += view.nbytes
        return self.fh.write(view)

    def flush(self) -> None:
        self.fh.flush()


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory handles
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_torch_save(obj: Any, path: str | Path, info: dict[str, Any] | None = None) -> dict[str, Any]:
    """``torch.save`` to ``<path>.tmp``, fsync, write the sidecar ``<path>.sha256.json`` (size,
    SHA-256, ``info``), then rename into place. A crash at any point leaves either the previous
    file or no file at ``path``, never a partial one; a sidecar that disagrees with its file (or
    names no file) marks the checkpoint as unusable."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        writer = _HashingWriter(fh)
        torch.save(obj, writer)
        fh.flush()
        os.fsync(fh.fileno())
    record = {"file": path.name, "size": writer.size, "sha256": writer.sha.hexdigest(), **(info or {})}
    atomic_write_bytes(sidecar_path(path), json.dumps(record, indent=1, sort_keys=True).encode())
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    return record


def verify_checkpoint(path: str | Path, *, require_sidecar: bool = False) -> dict[str, Any]:
    """Check a checkpoint against its sidecar (size first, then SHA-256); returns the sidecar.
    Raises ``CheckpointError`` naming the file and what is wrong. Without a sidecar the file is
    accepted as it is unless ``require_sidecar`` (it is still only ever read with weights_only)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    side = sidecar_path(path)
    if not side.is_file():
        if require_sidecar:
            raise CheckpointError(f"{path}: no {side.name} sidecar (not written by fm-toolkit, or interrupted)")
        return {}
    try:
        record = json.loads(side.read_text())
        size, digest = int(record["size"]), str(record["sha256"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{path}: unreadable sidecar {side.name} ({err})") from err
    actual = path.stat().st_size
    if actual != size:
        raise CheckpointError(f"{path}: truncated or overwritten: {actual} bytes, the sidecar says {size}")
    sha = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            sha.update(chunk)
    if sha.hexdigest() != digest:
        raise CheckpointError(f"{path}: corrupt: SHA-256 {sha.hexdigest()[:12]}... differs from the sidecar's {digest[:12]}...")
    return record


def find_resume_checkpoint(directory: str | Path) -> Path | None:
    """The newest training checkpoint in ``directory`` that verifies against its sidecar (highest
    global step, then the latest written). Broken ones are reported and passed over; leftover
    ``*.tmp`` files of an interrupted save are removed."""
    directory = Path(directory)
    if not directory.is_dir():
        return None
    for tmp in directory.glob("*.tmp"):
        log.warning("removing %s: an interrupted checkpoint save", tmp)
        tmp.unlink(missing_ok=True)
    candidates = []
    for side in directory.glob("*" + SIDECAR_SUFFIX):
        ckpt = side.with_name(side.name.removesuffix(SIDECAR_SUFFIX))
        try:
            record = json.loads(side.read_text())
            key = (int(record.get("global_step", -1)), int(record.get("written_ns", 0)))
        except (OSError, ValueError, TypeError):
            key = (-1, 0)
        candidates.append((key, ckpt))
    for _, ckpt in sorted(candidates, key=lambda kc: kc[0], reverse=True):
        try:
            verify_checkpoint(ckpt, require_sidecar=True)
        except CheckpointError as err:
            message = f"skipping checkpoint {err}; trying the previous one"
            log.warning(message)
            print(message)
            continue
        return ckpt
    return None


def __getattr__(name: str) -> Any:
    # the Lightning plugin lives in fm_core.checkpoint_io: importing Lightning costs ~8 CPU-s, which
    # the inference paths (fm-embed, scoring) that only read checkpoints should not pay
    if name == "AtomicCheckpointIO":
        from fm_core.checkpoint_io import AtomicCheckpointIO

        return AtomicCheckpointIO
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
