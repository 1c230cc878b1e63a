"""Self-describing model exports: ``config.json`` (model + tokenizer) and ``model.safetensors``.

Loading never unpickles: weights come from safetensors, or from a Lightning checkpoint read with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from fm_core.config import EncoderConfig
from fm_core.model import MaskedLM
from fm_core.tokenizer import Tokenizer, tokenizer_from_dict

FORMAT = "fm-toolkit/1"
CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names the file and the reason."""


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
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{source}: weights do not fit the described model "
                              f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    net.eval()
    return net, tokenizer


def load_pretrained(path: str | Path) -> tuple[MaskedLM, Tokenizer]:
    """An export directory (or its config.json), or a Lightning ``.ckpt`` of ``fm-pretrain``."""
    path = Path(path)
    if path.is_dir() or path.name == CONFIG_NAME:
        directory = path if path.is_dir() else path.parent
        spec = _read_spec(directory / CONFIG_NAME)
        try:
            state = load_file(str(directory / WEIGHTS_NAME))
        except (OSError, SafetensorError) as err:
            raise CheckpointError(f"{directory / WEIGHTS_NAME}: unreadable weights ({err})") from err
        return _build(spec, state, directory)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle errors, truncation, refused globals
        raise CheckpointError(f"{path}: not a loadable checkpoint ({type(err).__name__}: {err})") from err
    meta = ckpt.get("fm_toolkit") if isinstance(ckpt, dict) else None
    if not meta:
        raise CheckpointError(f"{path}: not an fm-toolkit checkpoint (no 'fm_toolkit' entry)")
    state = {k.removeprefix("net."): v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
    return _build({"format": FORMAT, **meta}, state, path)
