"""Self-describing model exports: ``config.json`` (model + tokenizer) and ``model.safetensors``.

Loading never unpickles: weights come from safetensors, or from a Lightning checkpoint read with
``torch.load(weights_only=True)``. Other packages register the foreign formats they can import
(``register_format``, e.g. for fair-esm ESM-2 ``.pt`` files), each with the exact non-tensor
globals its files may contain: nothing else is ever unpickled. The model's heads are recorded by
kind and constructor arguments and rebuilt from ``fm_core.registry.HEADS``; tokenizers likewise
from ``fm_core.registry.TOKENIZERS``. A kind that no installed package registers is refused.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from fm_core.adapters import ADAPTER_DIR, adapter_spec, fold, merged_state_dict, save_adapter
from fm_core.checkpoint import CheckpointError, atomic_write_bytes, safe_torch_load
from fm_core.config import SHAPE_FIELDS, SIZES, ConfigError, EncoderConfig
from fm_core.model import MaskedLM
from fm_core.registry import FORMATS, LEGACY_WEIGHTS, load_plugins
from fm_core.tokenizer import Tokenizer, tokenizer_from_dict

log = logging.getLogger(__name__)
FORMAT = "fm-toolkit/1"
CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"


@dataclass(frozen=True)
class ForeignFormat:
    """A checkpoint format another package can import.

    ``accepts(obj)`` looks at what ``torch.load(weights_only=True)`` returned; ``load(obj, path)``
    returns the ``Checkpoint`` it holds (config, tokenizer, weights in our names, heads), no model
    built, or raises ``CheckpointError``. ``safe_globals`` lists the only non-tensor classes its
    files may hold (allowed for that load only). A format of directories instead recognises one by
    its ``config.json`` (``accepts_directory(config)``, the parsed JSON) and reads it with
    ``load_directory(directory, config)``; directories are never recognised by name.
    """

    name: str
    accepts: Callable[[Any], bool]
    load: Callable[[Any, Path], Checkpoint]
    safe_globals: tuple[Any, ...] = ()
    accepts_directory: Callable[[dict[str, Any]], bool] | None = None
    load_directory: Callable[[Path, dict[str, Any]], Checkpoint] | None = None


def register_format(fmt: ForeignFormat) -> ForeignFormat:
    return FORMATS.register(fmt.name, fmt)


def describe(net: MaskedLM, tokenizer: Tokenizer | None) -> dict[str, Any]:
    """What rebuilds ``net`` beside its weights: config, tokenizer and heads (kind + arguments), and
    its adapter (``fm_core.adapters``) when it has one."""
    spec = {"model": net.config.to_dict(), "tokenizer": tokenizer.to_dict() if tokenizer is not None else None,
            "heads": net.head_specs()}
    adapter = adapter_spec(net)
    return spec if adapter is None else {**spec, "adapter": adapter}


def save_pretrained(directory: str | Path, net: MaskedLM, tokenizer: Tokenizer,
                    metadata: dict[str, Any] | None = None) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    # an adapted model is exported merged (a plain model), its adapter alone beside it
    state = {k: v.detach().cpu().contiguous() for k, v in merged_state_dict(net).items()}
    tmp = directory / (WEIGHTS_NAME + ".tmp")
    save_file(state, str(tmp), metadata={"format": "pt", "fm_format": FORMAT})
    os.replace(tmp, directory / WEIGHTS_NAME)
    spec = {"format": FORMAT, **describe(net, tokenizer), "metadata": metadata or {}}
    adapter = spec.pop("adapter", None)
    if adapter is not None:
        save_adapter(directory / ADAPTER_DIR, net)
        spec["metadata"] = {**spec["metadata"], "merged_adapter": adapter}
    atomic_write_bytes(directory / CONFIG_NAME, json.dumps(spec, indent=2, sort_keys=True).encode())
    return directory


def provenance(cfg: Any) -> dict[str, Any]:
    """What an export's metadata records of the run that made it (model cards show it): the data
    files of ``cfg.data`` and the command line (the tool and its Hydra overrides), when known."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    def paths(node: Any) -> Iterator[str]:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("path", "paths", "dir", "directory") and isinstance(value, str | list):
                    yield from ([value] if isinstance(value, str) else map(str, value))
                else:
                    yield from paths(value)

    try:
        data = list(paths(OmegaConf.to_container(cfg.data, resolve=True)))
    except Exception:  # noqa: BLE001 - provenance is best effort: an unresolvable node records nothing
        data = []
    out: dict[str, Any] = {"data": ", ".join(data)} if data else {}
    if HydraConfig.initialized():
        out["command"] = " ".join([Path(sys.argv[0]).name, *HydraConfig.get().overrides.task])
    return out


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file: {path.parent} is not a model directory "
                              f"(an export holds {CONFIG_NAME} and {WEIGHTS_NAME})")
    try:
        spec = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: unreadable config ({err})") from err
    if not isinstance(spec, dict):
        raise CheckpointError(f"{path}: unreadable config (a JSON object was expected)")
    return spec


def _read_directory(directory: Path) -> Checkpoint:
    """Our export, or a directory a registered format recognises by its config.json's content."""
    spec = _read_json(directory / CONFIG_NAME)
    if spec.get("format") != FORMAT:
        fmt = FORMATS.first(lambda f: f.accepts_directory is not None and f.accepts_directory(spec))
        if fmt is not None:
            return fmt.load_directory(directory, spec)
        known = [f.name for f in FORMATS.values() if f.accepts_directory is not None]
        raise CheckpointError(f"{directory / CONFIG_NAME}: format {spec.get('format')!r} is not {FORMAT!r} and no "
                              f"known directory format recognises it (known: {', '.join([FORMAT, *known])})")
    try:
        state = load_file(str(directory / WEIGHTS_NAME))
    except (OSError, SafetensorError) as err:
        raise CheckpointError(f"{directory / WEIGHTS_NAME}: unreadable weights ({err})") from err
    return _read(spec, state, directory)


def upgrade_legacy_weights(state: dict[str, torch.Tensor], net: MaskedLM, tokenizer: Tokenizer,
                           source: Path | str) -> dict[str, torch.Tensor]:
    """Weights an older version wrote outside ``heads`` (``LEGACY_WEIGHTS``: prefix -> upgrade):
    ``upgrade(tokenizer, config)`` returns ``(name, head)``, attached to ``net`` with the weights
    moved under ``heads.<name>.``, or None to drop them. Other unknown weights are left for the
    caller to refuse."""
    known = set(net.state_dict())
    unknown = [k for k in state if k not in known]
    if any(not k.startswith(tuple(LEGACY_WEIGHTS)) for k in unknown):
        load_plugins()
    state = dict(state)
    for prefix in LEGACY_WEIGHTS:
        keys = [k for k in unknown if k.startswith(prefix)]
        if not keys:
            continue
        target = LEGACY_WEIGHTS.get(prefix)(tokenizer, net.config)
        moved = {k.removeprefix(prefix): state.pop(k) for k in keys}
        if target is None:
            log.warning("%s: dropped %d weights under %r written by an older version (no use for this "
                        "model)", source, len(keys), prefix)
            continue
        name, head = target
        net.heads[name] = head
        state.update({f"heads.{name}.{k}": v for k, v in moved.items()})
    return state


class Checkpoint(NamedTuple):
    """What a checkpoint holds, read before any model is built."""

    config: EncoderConfig
    tokenizer: Tokenizer
    state: dict[str, torch.Tensor]
    heads: dict[str, Any]  # head_specs: {name: {"kind", "args"}}
    source: Path


def _read(spec: dict[str, Any], state: dict[str, torch.Tensor], source: Path) -> Checkpoint:
    try:
        cfg = EncoderConfig.from_dict(spec["model"])
        tokenizer = tokenizer_from_dict(spec["tokenizer"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{source}: invalid model/tokenizer description ({err})") from err
    if tokenizer.vocab_size != cfg.vocab_size:
        raise CheckpointError(f"{source}: tokenizer has {tokenizer.vocab_size} tokens, model {cfg.vocab_size}")
    return Checkpoint(cfg, tokenizer, state, spec.get("heads") or {}, source)


def build(ckpt: Checkpoint) -> MaskedLM:
    """The model a ``Checkpoint`` describes (its config possibly changed), weights loaded, in eval mode."""
    cfg, tokenizer, state, _, source = ckpt
    net = MaskedLM(cfg)
    try:
        net.add_heads(ckpt.heads)
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{source}: invalid head description ({err})") from err
    state = upgrade_legacy_weights(state, net, tokenizer, source)
    try:
        missing, unexpected = net.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatch
        raise CheckpointError(f"{source}: weights do not fit the described model ({err})") from err
    if missing or unexpected:
        raise CheckpointError(f"{source}: weights do not fit the described model "
                              f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    return net.eval()


def _safe_globals() -> tuple[Any, ...]:
    return tuple(g for fmt in FORMATS.values() for g in fmt.safe_globals)


def _read_torch_file(path: Path) -> Any:
    """``torch.load(weights_only=True)`` allowing the globals of the registered formats; when that
    is refused, once more after importing the plugins if they add formats of their own."""
    allowed = _safe_globals()
    try:
        return safe_torch_load(path, allowed)
    except CheckpointError:
        if not load_plugins() or _safe_globals() == allowed:
            raise
    return safe_torch_load(path, _safe_globals())


def load_pretrained(path: str | Path) -> tuple[MaskedLM, Tokenizer]:
    """An export directory (or its config.json), a Lightning ``.ckpt`` of ``fm-pretrain``, a file
    of a registered foreign format (e.g. a fair-esm ESM-2 ``.pt``) or a directory one recognises
    (e.g. a Hugging Face ESM directory)."""
    ckpt = read_checkpoint(path)
    return build(ckpt), ckpt.tokenizer


def read_checkpoint(path: str | Path) -> Checkpoint:
    """(config, tokenizer, weights, heads) of a checkpoint that ``load_pretrained`` reads, no model built."""
    path = Path(path)
    if path.is_dir() or path.name == CONFIG_NAME:
        return _read_directory(path if path.is_dir() else path.parent)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint: no file or directory there (an export directory, "
                              "an fm-pretrain .ckpt, or a file or directory of a registered format)")
    ckpt = _read_torch_file(path)
    meta = ckpt.get("fm_toolkit") if isinstance(ckpt, dict) else None
    if meta:
        state = {k.removeprefix("net."): v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
        # a checkpoint of an adapted model: the adapter is folded in (the merged, plain model)
        return _read({"format": FORMAT, **meta}, fold(state, meta.get("adapter"), path), path)
    fmt = FORMATS.first(lambda f: f.accepts(ckpt))
    if fmt is not None:
        return fmt.load(ckpt, path)
    known = ", ".join(["fm-toolkit export directory", "fm-toolkit .ckpt", *FORMATS])
    raise CheckpointError(f"{path}: not an fm-toolkit checkpoint (no 'fm_toolkit' entry) and no "
                          f"known format recognises it (known: {known})")


def init_from_checkpoint(path: str | Path, tokenizer: Tokenizer | None = None, size: str | None = None,
                         **overrides: Any) -> MaskedLM:
    """A backbone initialised from a checkpoint (``model.init_from``): its shape and conventions
    come from the checkpoint; ``size`` or shape ``overrides`` must agree with it, other fields
    (``max_length``, ``causal``, ``activation_checkpointing``...) may be changed. The tokenizer
    must be the checkpoint's. The model is built once, with the changed config."""
    if size is not None and size not in SIZES:
        raise ConfigError(f"unknown model size {size!r}; known sizes: {', '.join(SIZES)}")
    ckpt = read_checkpoint(path)
    cfg = ckpt.config
    expected = {k: v for k, v in SIZES[size].items() if k in SHAPE_FIELDS} if size is not None else {}
    expected.update({k: v for k, v in overrides.items() if k in SHAPE_FIELDS and v is not None})
    conflicts = {k: (v, getattr(cfg, k)) for k, v in expected.items() if getattr(cfg, k) != v}
    if conflicts:
        said = ", ".join(f"{k}={want} (checkpoint: {got})" for k, (want, got) in conflicts.items())
        raise ConfigError(f"model.init_from={path}: the checkpoint's shape disagrees with the configured "
                          f"{'size ' + repr(size) + ': ' if size else ''}{said}. Drop the size "
                          f"(model=from_checkpoint) to take the shape from the checkpoint.")
    if tokenizer is not None and tokenizer.to_dict() != ckpt.tokenizer.to_dict():
        raise ConfigError(f"model.init_from={path}: the checkpoint's tokenizer ({ckpt.tokenizer.to_dict().get('kind')}) "
                          f"differs from the data's ({tokenizer.to_dict().get('kind')})")
    changes = {k: v for k, v in overrides.items() if k not in SHAPE_FIELDS and v is not None}
    values = {**cfg.to_dict(), **changes, "extra": {**cfg.extra, "init_from": str(path)}}
    return build(ckpt._replace(config=EncoderConfig.from_dict(values))).train()


