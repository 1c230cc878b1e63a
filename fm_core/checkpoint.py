"""Self-describing model exports: ``config.json`` (model + tokenizer) and ``model.safetensors``.

Loading never unpickles: weights come from safetensors, or from a Lightning checkpoint read with
``torch.load(weights_only=True)``. Other packages register the foreign formats they can import
(``register_format``; e.g. ``bio_fm.esm_compat`` for fair-esm ESM-2 ``.pt`` files), each with the
exact non-tensor globals its files may contain: nothing else is ever unpickled.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins import TorchCheckpointIO
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from fm_core.config import SIZES, ConfigError, EncoderConfig
from fm_core.model import MaskedLM
from fm_core.tokenizer import TRUSTED_PACKAGES, Tokenizer, tokenizer_from_dict

log = logging.getLogger(__name__)
FORMAT = "fm-toolkit/1"
CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"
# weights that older exports may lack: rebuilt at their initial values, with a warning
OPTIONAL_PREFIXES = ("contact_head.",)


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names the file and the reason."""


@dataclass(frozen=True)
class ForeignFormat:
    """A checkpoint format another package can import.

    ``accepts(obj)`` looks at what ``torch.load(weights_only=True)`` returned; ``load(obj, path)``
    builds ``(MaskedLM, Tokenizer)`` or raises ``CheckpointError``. ``safe_globals`` lists the only
    non-tensor classes its files may hold (allowed for that load only).
    """

    name: str
    accepts: Callable[[Any], bool]
    load: Callable[[Any, Path], tuple[MaskedLM, Tokenizer]]
    safe_globals: tuple[Any, ...] = ()


_FORMATS: dict[str, ForeignFormat] = {}


def register_format(fmt: ForeignFormat) -> ForeignFormat:
    _FORMATS[fmt.name] = fmt
    return fmt


def _load_plugins() -> None:
    """Import this toolkit's packages so that the formats they know are registered."""
    for package in TRUSTED_PACKAGES:
        try:
            importlib.import_module(package)
        except ImportError:  # pragma: no cover - a package of the toolkit not installed
            pass


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
        text = str(err)
        if "Unsupported global" in text or "Unsupported class" in text:
            start = text.find("GLOBAL")
            what = text[start:].split(" was not")[0] if start >= 0 else text.splitlines()[-1]
            reason = f"holds a Python object this loader refuses to unpickle ({what})"
        elif isinstance(err, RuntimeError | EOFError | OSError) or "zip" in text.lower():
            reason = f"truncated or corrupt file ({type(err).__name__}: {text.splitlines()[0] if text else ''})"
        else:
            reason = f"not a loadable checkpoint ({type(err).__name__}: {text.splitlines()[0] if text else ''})"
        raise CheckpointError(f"{path}: {reason}") from err


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def save_pretrained(directory: str | Path, net: MaskedLM, tokenizer: Tokenizer,
                    metadata: dict[str, Any] | None = None) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    tmp = directory / (WEIGHTS_NAME + ".tmp")
    save_file(state, str(tmp), metadata={"format": "pt", "fm_format": FORMAT})
    os.replace(tmp, directory / WEIGHTS_NAME)
    spec = {"format": FORMAT, "model": net.config.to_dict(), "tokenizer": tokenizer.to_dict(),
            "metadata": metadata or {}}
    _atomic_write_bytes(directory / CONFIG_NAME, json.dumps(spec, indent=2, sort_keys=True).encode())
    return directory


def _read_spec(path: Path) -> dict[str, Any]:
    try:
        spec = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: unreadable config ({err})") from err
    if spec.get("format") != FORMAT:
        raise CheckpointError(f"{path}: format {spec.get('format')!r} is not {FORMAT!r}")
    return spec


def _build(spec: dict[str, Any], state: dict[str, torch.Tensor], source: Path) -> tuple[MaskedLM, Tokenizer]:
    try:
        cfg = EncoderConfig.from_dict(spec["model"])
        tokenizer = tokenizer_from_dict(spec["tokenizer"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{source}: invalid model/tokenizer description ({err})") from err
    if tokenizer.vocab_size != cfg.vocab_size:
        raise CheckpointError(f"{source}: tokenizer has {tokenizer.vocab_size} tokens, model {cfg.vocab_size}")
    net = MaskedLM(cfg)
    try:
        missing, unexpected = net.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatch
        raise CheckpointError(f"{source}: weights do not fit the described model ({err})") from err
    optional = [k for k in missing if k.startswith(OPTIONAL_PREFIXES)]
    missing = [k for k in missing if not k.startswith(OPTIONAL_PREFIXES)]
    if missing or unexpected:
        raise CheckpointError(f"{source}: weights do not fit the described model "
                              f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    if optional:
        log.warning("%s: no weights for %s (an older export): left at their initial values", source, optional)
    net.eval()
    return net, tokenizer


def load_pretrained(path: str | Path) -> tuple[MaskedLM, Tokenizer]:
    """An export directory (or its config.json), a Lightning ``.ckpt`` of ``fm-pretrain``, or a
    file of a registered foreign format (e.g. a fair-esm ESM-2 ``.pt``)."""
    path = Path(path)
    if path.is_dir() or path.name == CONFIG_NAME:
        directory = path if path.is_dir() else path.parent
        spec = _read_spec(directory / CONFIG_NAME)
        try:
            state = load_file(str(directory / WEIGHTS_NAME))
        except (OSError, SafetensorError) as err:
            raise CheckpointError(f"{directory / WEIGHTS_NAME}: unreadable weights ({err})") from err
        return _build(spec, state, directory)
    _load_plugins()
    allowed = tuple(g for fmt in _FORMATS.values() for g in fmt.safe_globals)
    ckpt = safe_torch_load(path, allowed)
    meta = ckpt.get("fm_toolkit") if isinstance(ckpt, dict) else None
    if meta:
        state = {k.removeprefix("net."): v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
        return _build({"format": FORMAT, **meta}, state, path)
    for fmt in _FORMATS.values():
        if fmt.accepts(ckpt):
            return fmt.load(ckpt, path)
    known = ", ".join(["fm-toolkit export directory", "fm-toolkit .ckpt", *_FORMATS])
    raise CheckpointError(f"{path}: not an fm-toolkit checkpoint (no 'fm_toolkit' entry) and no "
                          f"known format recognises it (known: {known})")


SHAPE_FIELDS = ("num_layers", "embed_dim", "num_heads", "ffn_dim", "vocab_size")


def init_from_checkpoint(path: str | Path, tokenizer: Tokenizer | None = None, size: str | None = None,
                         **overrides: Any) -> MaskedLM:
    """A backbone initialised from a checkpoint (``model.init_from``): its shape comes from the
    checkpoint; ``size`` or shape ``overrides`` must agree with it, other fields (``max_length``,
    ``activation_checkpointing``...) may be changed. The tokenizer must be the checkpoint's."""
    if size is not None and size not in SIZES:
        raise ConfigError(f"unknown model size {size!r}; known sizes: {', '.join(SIZES)}")
    net, ckpt_tokenizer = load_pretrained(path)
    cfg = net.config
    expected = dict(SIZES[size]) if size is not None else {}
    expected.update({k: v for k, v in overrides.items() if k in SHAPE_FIELDS and v is not None})
    conflicts = {k: (v, getattr(cfg, k)) for k, v in expected.items() if getattr(cfg, k) != v}
    if conflicts:
        said = ", ".join(f"{k}={want} (checkpoint: {got})" for k, (want, got) in conflicts.items())
        raise ConfigError(f"model.init_from={path}: the checkpoint's shape disagrees with the configured "
                          f"{'size ' + repr(size) + ': ' if size else ''}{said}. Drop the size "
                          f"(model=from_checkpoint) to take the shape from the checkpoint.")
    if tokenizer is not None and tokenizer.to_dict() != ckpt_tokenizer.to_dict():
        raise ConfigError(f"model.init_from={path}: the checkpoint's tokenizer ({ckpt_tokenizer.to_dict().get('kind')}) "
                          f"differs from the data's ({tokenizer.to_dict().get('kind')})")
    changes = {k: v for k, v in overrides.items() if k not in SHAPE_FIELDS and v is not None}
    if changes:
        values = cfg.to_dict()
        values.update(changes)
        new_cfg = EncoderConfig.from_dict(values)
        state = net.state_dict()
        net = MaskedLM(new_cfg)
        net.load_state_dict(state)
    net.config.extra = {**net.config.extra, "init_from": str(path)}
    return net.train()


# ----------------------------------------------------------------------------------------------
# Training checkpoints: atomic writes with a size + SHA-256 sidecar, verification, resume lookup
# ----------------------------------------------------------------------------------------------

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
    _atomic_write_bytes(sidecar_path(path), json.dumps(record, indent=1, sort_keys=True).encode())
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


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning ``CheckpointIO``: atomic, hashed saves (``atomic_torch_save``) and loads that
    verify the sidecar and never unpickle code (``torch.load(weights_only=True)``)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        info = {"global_step": int(checkpoint.get("global_step", -1)), "epoch": int(checkpoint.get("epoch", -1)),
                "written_ns": time.time_ns()}
        atomic_torch_save(checkpoint, path, info)

    def load_checkpoint(self, path, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        verify_checkpoint(path)
        return safe_torch_load(path)

    def remove_checkpoint(self, path) -> None:
        Path(path).unlink(missing_ok=True)
        sidecar_path(path).unlink(missing_ok=True)
