"""A trained property scorer: representations (with their fitted state) + an ensemble of MLP heads.

Saved as ``scorer.json`` (kind, label, target scaling, each representation's config and state,
head shape) + ``heads.safetensors``; a representation that needs a backbone has it exported into
``backbone_<name>/`` so the folder is self-contained. Loading instantiates only classes of
``chem_fm.features`` (a saved file never names arbitrary code).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.torch import load_file, save_file

from chem_fm.features import Features, featurize
from fm_core.export import load_pretrained, save_pretrained
from tasks.drug_property.heads import MLP, predict

FEATURE_MODULE = "chem_fm.features."


def build_features(configs: dict[str, Any]) -> dict[str, Features]:
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    out = {}
    for name, c in configs.items():
        c = OmegaConf.to_container(c, resolve=True) if not isinstance(c, dict) else dict(c)
        if not str(c.get("_target_", "")).startswith(FEATURE_MODULE):
            raise ValueError(f"representation {name!r}: _target_ must be a class of {FEATURE_MODULE[:-1]}, "
                             f"got {c.get('_target_')!r}")
        out[name] = instantiate(c)
    return out


@dataclass
class Scorer:
    kind: str  # classification | regression
    label: str
    feature_configs: dict[str, dict[str, Any]]
    features: dict[str, Features]
    heads: list[MLP]
    hidden: tuple[int, ...]
    y_mean: float = 0.0
    y_std: float = 1.0

    def predict_mols(self, mols: list[Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(mean, std over members, all members (m, n)) for RDKit molecules."""
        members = predict(self.heads, featurize(self.features, mols), self.kind, self.y_mean, self.y_std)
        return members.mean(0), members.std(0), members

    def save(self, directory: str | Path) -> Path:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        states = {name: f.state() for name, f in self.features.items()}
        for name, f in self.features.items():
            if f.needs_backbone:
                save_pretrained(d / f"backbone_{name}", f.net, f.tokenizer)
        spec = {"kind": self.kind, "label": self.label, "y_mean": self.y_mean, "y_std": self.y_std,
                "hidden": list(self.hidden), "members": len(self.heads),
                "in_dim": self.heads[0].net[0].in_features,
                "features": {n: {"config": self.feature_configs[n], "state": states[n]} for n in self.features}}
        (d / "scorer.json").write_text(json.dumps(spec, indent=1))
        save_file({f"{i}.{k}": v.contiguous() for i, h in enumerate(self.heads) for k, v in h.state_dict().items()},
                  str(d / "heads.safetensors"))
        return d

    @classmethod
    def load(cls, directory: str | Path) -> Scorer:
        d = Path(directory)
        if not (d / "scorer.json").is_file():
            raise FileNotFoundError(f"{d}: not a scorer directory (no scorer.json; use <fm-finetune run>/scorer)")
        spec = json.loads((d / "scorer.json").read_text())
        configs = {n: v["config"] for n, v in spec["features"].items()}
        features = build_features(configs)
        for n, f in features.items():
            if f.needs_backbone:
                f.use_backbone(*load_pretrained(d / f"backbone_{n}"))
            f.load_state(spec["features"][n]["state"])
        weights = load_file(str(d / "heads.safetensors"))
        heads = []
        for i in range(spec["members"]):
            h = MLP(spec["in_dim"], hidden=tuple(spec["hidden"]), dropout=0.0)  # eval only: no dropout
            h.load_state_dict({k.split(".", 1)[1]: v for k, v in weights.items() if k.split(".", 1)[0] == str(i)})
            h.eval()
            heads.append(h)
        return cls(spec["kind"], spec["label"], configs, features, heads, tuple(spec["hidden"]),
                   spec["y_mean"], spec["y_std"])
