"""LoRA adapters (``peft``) on the shared backbone: ``model.adapter`` of ``fm-finetune``.

``LoraAdapter(...).apply(net)`` injects peft's LoRA layers, in place, into the named projections of
every encoder layer (``attn.qkv``: the fused q/k/v projection, one A and one B for the three;
``attn.out_proj``; optionally the MLP ``fc1`` / ``fc2``) and freezes everything else: only the A
and B matrices train. B starts at zero, so until it trains the adapted model computes exactly
what the base model computes. The model stays a ``MaskedLM`` (its weights of an adapted layer
are ``<layer>.base_layer.*``, ``<layer>.lora_A.default.weight``, ``<layer>.lora_B.default.weight``),
so Lightning saves, restores and resumes it as any other.

Export folds the adapter into the backbone (``merged_state_dict``: W + (B @ A) * alpha / r, peft's
own merge arithmetic), so an export of an adapted model is a plain model every reader loads, and
writes the adapter alone beside it (``save_adapter``: ``adapter/config.json`` +
``adapter/adapter.safetensors``). ``merge(net)`` does the same fold in place with peft (for a
foreign exporter such as the Hugging Face one); ``fold`` merges the weights of a Lightning
checkpoint of an adapted model when it is read (``fm_core.export.read_checkpoint``).

Settings (defaults in ``conf/adapter/*.yaml`` only)::

    fm-finetune task=contacts model.init_from=... adapter=lora task.supervised.finetune_backbone=true
    fm-finetune task=code_completion model.init_from=... adapter=lora model.adapter.r=16
    fm-finetune task=secondary_structure ... adapter=lora_mlp task.train.finetune_backbone=true
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from fm_core.checkpoint import CheckpointError, atomic_write_bytes
from fm_core.config import ConfigError

TARGETS = ("attn.qkv", "attn.out_proj", "fc1", "fc2")  # the Linear layers of a TransformerLayer
NAME = "default"  # peft's adapter name: one adapter per model
KIND = "lora"
ADAPTER_DIR, ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter", "config.json", "adapter.safetensors"
_A, _B, _BASE = f".lora_A.{NAME}.weight", f".lora_B.{NAME}.weight", ".base_layer."


@dataclass(frozen=True)
class LoraAdapter:
    """LoRA of rank ``r`` (scaling ``alpha / r``, ``dropout`` on the adapter's input) on the
    ``target_modules`` of every encoder layer (names from ``TARGETS``)."""

    r: int
    alpha: float
    dropout: float
    target_modules: tuple[str, ...]

    def __post_init__(self) -> None:
        targets = tuple(str(t) for t in self.target_modules)
        object.__setattr__(self, "target_modules", targets)
        unknown = sorted(set(targets) - set(TARGETS))
        if not targets or unknown:
            raise ConfigError(f"model.adapter.target_modules: {list(targets)} must be a non-empty subset of "
                              f"{list(TARGETS)} (unknown: {unknown})")
        if int(self.r) != self.r or self.r < 1:
            raise ConfigError(f"model.adapter.r: the LoRA rank must be a positive integer, got {self.r!r}")
        if not self.alpha > 0:
            raise ConfigError(f"model.adapter.alpha must be positive, got {self.alpha!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.adapter.dropout must be in [0, 1), got {self.dropout!r}")

    @property
    def scaling(self) -> float:
        return self.alpha / self.r  # peft's (no rsLoRA)

    def peft_config(self) -> Any:
        from peft import LoraConfig

        pattern = r"encoder\.layers\.\d+\.(?:" + "|".join(re.escape(t) for t in self.target_modules) + ")"
        return LoraConfig(r=int(self.r), lora_alpha=self.alpha, lora_dropout=self.dropout, target_modules=pattern,
                          bias="none")

    def apply(self, net: nn.Module) -> nn.Module:
        """Inject the adapter into ``net`` in place (B = 0) and freeze everything but A and B."""
        from peft import inject_adapter_in_model

        if lora_layers(net):
            raise ConfigError("model.adapter: this model already has an adapter")
        inject_adapter_in_model(self.peft_config(), net, adapter_name=NAME)
        set_trainable(net, True)
        return net

    def to_dict(self) -> dict[str, Any]:
        return {"kind": KIND, "r": int(self.r), "alpha": float(self.alpha), "dropout": float(self.dropout),
                "target_modules": list(self.target_modules)}

    @classmethod
    def from_dict(cls, spec: dict[str, Any]) -> LoraAdapter:
        if spec.get("kind") != KIND:
            raise ConfigError(f"adapter kind {spec.get('kind')!r} is not {KIND!r}")
        return cls(r=spec["r"], alpha=spec["alpha"], dropout=spec["dropout"], target_modules=spec["target_modules"])


def lora_layers(net: nn.Module) -> dict[str, nn.Module]:
    """``{module name: peft LoRA layer}`` of ``net`` (empty without an adapter)."""
    lora = sys.modules.get("peft.tuners.lora")
    if lora is None:  # peft never imported (it is slow to import): no adapter was injected
        return {}
    return {name: m for name, m in net.named_modules() if isinstance(m, lora.LoraLayer)}


def adapter_spec(net: nn.Module) -> dict[str, Any] | None:
    """The adapter of ``net`` as ``LoraAdapter.to_dict()`` (read from its layers), or None."""
    layers = lora_layers(net)
    if not layers:
        return None
    first = next(iter(layers.values()))
    drop = first.lora_dropout[NAME]
    targets = sorted({name.split(".", 3)[3] for name in layers}, key=TARGETS.index)
    return LoraAdapter(r=first.r[NAME], alpha=first.lora_alpha[NAME],
                       dropout=drop.p if isinstance(drop, nn.Dropout) else 0.0, target_modules=targets).to_dict()


def is_adapter_weight(name: str) -> bool:
    return name.endswith((_A, _B))


def set_trainable(net: nn.Module, train: bool) -> None:
    """``train``: the adapter's A and B only when ``net`` has one, else every weight; not ``train``:
    nothing (a frozen backbone)."""
    adapted = bool(lora_layers(net))
    for name, p in net.named_parameters():
        p.requires_grad_(train and (is_adapter_weight(name) or not adapted))


def trainable_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def fold(state: dict[str, Tensor], spec: dict[str, Any] | None, source: str | Path = "model") -> dict[str, Tensor]:
    """The weights of the merged (plain) model from those of an adapted one: each adapted layer's
    ``base_layer`` weight plus ``(B @ A) * alpha / r`` (peft's merge, to the bit), adapter weights
    dropped. ``spec`` None: ``state`` unchanged."""
    if spec is None:
        return state
    scaling = LoraAdapter.from_dict(spec).scaling
    out = {k.replace(_BASE, "."): v for k, v in state.items() if not is_adapter_weight(k)}
    for key in [k for k in state if k.endswith(_A)]:
        layer = key.removesuffix(_A)
        try:
            a, b, w = state[key], state[layer + _B], state[layer + _BASE + "weight"]
        except KeyError as err:
            raise CheckpointError(f"{source}: adapter weights of {layer} are incomplete (no {err})") from err
        out[layer + ".weight"] = w + (b @ a) * scaling
    return out


@torch.no_grad()
def merged_state_dict(net: nn.Module) -> dict[str, Tensor]:
    """``net.state_dict()`` of the merged model (the plain model's keys); unchanged without adapter."""
    return fold(net.state_dict(), adapter_spec(net))


@torch.no_grad()
def merge(net: nn.Module) -> nn.Module:
    """Fold the adapter into the backbone in place (peft's ``merge``) and put the plain ``Linear``
    layers back: ``net`` becomes a plain model computing what the adapted one computed."""
    for name, layer in lora_layers(net).items():
        layer.merge()
        parent, _, child = name.rpartition(".")
        setattr(net.get_submodule(parent), child, layer.get_base_layer())
    net.__dict__.pop("peft_config", None)  # what peft's injection left on the model
    return net


def save_adapter(directory: str | Path, net: nn.Module) -> Path:
    """The adapter alone: ``config.json`` (``LoraAdapter.to_dict()``) and ``adapter.safetensors``
    (A and B of every adapted layer, under the adapted model's weight names)."""
    spec = adapter_spec(net)
    if spec is None:
        raise ValueError("save_adapter: the model has no adapter")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items() if is_adapter_weight(k)}
    save_file(state, str(directory / ADAPTER_WEIGHTS), metadata={"format": "pt", "fm_adapter": KIND})
    atomic_write_bytes(directory / ADAPTER_CONFIG, json.dumps(spec, indent=2, sort_keys=True).encode())
    return directory


def load_adapter(directory: str | Path, net: nn.Module) -> nn.Module:
    """Apply the adapter ``save_adapter`` wrote to the plain model ``net`` (in place), weights loaded."""
    directory = Path(directory)
    try:
        spec = json.loads((directory / ADAPTER_CONFIG).read_text())
        state = load_file(str(directory / ADAPTER_WEIGHTS))
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{directory}: not a readable adapter directory ({err})") from err
    LoraAdapter.from_dict(spec).apply(net)
    wanted = {k for k in net.state_dict() if is_adapter_weight(k)}
    if set(state) != wanted:
        raise CheckpointError(f"{directory / ADAPTER_WEIGHTS}: adapter weights do not fit the model (missing "
                              f"{sorted(wanted - set(state))[:3]}, unexpected {sorted(set(state) - wanted)[:3]})")
    net.load_state_dict(state, strict=False)
    return net


__all__ = ["ADAPTER_DIR", "TARGETS", "LoraAdapter", "adapter_spec", "fold", "is_adapter_weight", "load_adapter",
           "lora_layers", "merge", "merged_state_dict", "save_adapter", "set_trainable", "trainable_parameters"]
