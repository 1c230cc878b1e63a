"""A trained property scorer: representations (with their fitted state) + an ensemble of MLP heads,
its uncertainty method (calibrated on the task's calibration set), the applicability domain (the
training set's fingerprints and ids) and the salt/fragment policy of training.

Saved as ``scorer.json`` (targets with kind and unit, target scaling, each representation's config
and state, head shape, the uncertainty and domain configs and states, ``largest_fragment``) +
``heads.safetensors`` + ``domain.npz`` (packed training fingerprints); a representation that needs
a backbone has it exported into ``backbone_<name>/`` so the folder is self-contained. Loading
instantiates only classes of ``chem_fm.features`` and ``tasks.drug_property`` (a saved file never
names arbitrary code).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.torch import load_file, save_file

from chem_fm.features import Features, featurize
from fm_core.errors import UserError
from fm_core.export import load_pretrained, save_pretrained
from tasks.drug_property.domain import Domain
from tasks.drug_property.heads import MLP, predict_targets
from tasks.drug_property.uncertainty import Uncertainty

FEATURE_MODULE = "chem_fm.features."
TASK_MODULE = "tasks.drug_property."


class NotAScorerError(UserError, FileNotFoundError):
    """The directory given is not a saved scorer."""


def _instantiate(name: str, config: Any, prefix: str) -> Any:
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    c = OmegaConf.to_container(config, resolve=True) if not isinstance(config, dict) else dict(config)
    targets = [c.get("_target_")] + [v.get("_target_") for v in c.values() if isinstance(v, dict)]
    bad = [t for t in targets if t is not None and not str(t).startswith(prefix)]
    if c.get("_target_") is None or bad:
        raise ValueError(f"{name}: _target_ must be a class of {prefix[:-1]}, got {bad or c.get('_target_')!r}")
    return instantiate(c)


def build_features(configs: dict[str, Any]) -> dict[str, Features]:
    return {name: _instantiate(f"representation {name!r}", c, FEATURE_MODULE) for name, c in configs.items()}


def build_task_object(name: str, config: Any) -> Any:
    """An uncertainty method or domain from its config (only classes of tasks.drug_property)."""
    return _instantiate(name, config, TASK_MODULE)


@dataclass
class Target:
    name: str
    kind: str  # classification | regression
    unit: str | None

    def column(self) -> str:
        """The output column: the property, with its unit when known (a probability for classes)."""
        if self.kind == "classification":
            return f"{self.name} (probability)"
        return f"{self.name} ({self.unit})" if self.unit else self.name


@dataclass
class Scorer:
    targets: list[Target]
    feature_configs: dict[str, dict[str, Any]]
    features: dict[str, Features]
    heads: list[MLP]
    hidden: tuple[int, ...]
    y_mean: np.ndarray  # (T,)
    y_std: np.ndarray
    uncertainty_config: dict[str, Any]
    uncertainty: Uncertainty
    domain_config: dict[str, Any]
    domain: Domain
    largest_fragment: bool

    @property
    def kinds(self) -> list[str]:
        return [t.kind for t in self.targets]

    def outputs(self, x: np.ndarray, intervals: bool = True) -> dict[str, np.ndarray]:
        """Every target's ensemble mean, std and (once the uncertainty is calibrated) interval
        (n, T) and the members (m, n, T) for a feature matrix."""
        means, variances = predict_targets(self.heads, x, self.kinds, self.y_mean, self.y_std,
                                           self.uncertainty.mean_variance)
        mean, std = self.uncertainty.combine(means, variances)
        cls = np.array([k == "classification" for k in self.kinds])
        std = np.where(cls, means.std(0), std)
        if not intervals:
            return {"mean": mean, "std": std, "members": means}
        cal, lo, hi = self.uncertainty.interval(mean, std)
        return {"mean": mean, "std": std, "calibrated_std": cal, "lower": lo, "upper": hi, "members": means}

    def predict_mols(self, mols: list[Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(mean, std over members, all members (m, n)) of the first target for RDKit molecules."""
        out = self.outputs(featurize(self.features, mols))
        return out["mean"][:, 0], out["std"][:, 0], out["members"][..., 0]

    def save(self, directory: str | Path) -> Path:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        states = {name: f.state() for name, f in self.features.items()}
        for name, f in self.features.items():
            if f.needs_backbone:
                save_pretrained(d / f"backbone_{name}", f.net, f.tokenizer)
        spec = {"targets": [vars(t) for t in self.targets], "y_mean": self.y_mean.tolist(),
                "y_std": self.y_std.tolist(), "hidden": list(self.hidden), "members": len(self.heads),
                "in_dim": self.heads[0].net[0].in_features, "out_dim": self.heads[0].net[-1].out_features,
                "features": {n: {"config": self.feature_configs[n], "state": states[n]} for n in self.features},
                "uncertainty": {"config": self.uncertainty_config, "state": self.uncertainty.state()},
                "domain": {"config": self.domain_config, "state": self.domain.state()},
                "largest_fragment": self.largest_fragment}
        (d / "scorer.json").write_text(json.dumps(spec, indent=1))
        np.savez_compressed(d / "domain.npz", **self.domain.arrays())
        save_file({f"{i}.{k}": v.contiguous() for i, h in enumerate(self.heads) for k, v in h.state_dict().items()},
                  str(d / "heads.safetensors"))
        return d

    @classmethod
    def load(cls, directory: str | Path) -> Scorer:
        d = Path(directory)
        if not (d / "scorer.json").is_file():
            raise NotAScorerError(f"{d}: not a scorer directory (no scorer.json; use <fm-finetune run>/scorer)")
        spec = json.loads((d / "scorer.json").read_text())
        configs = {n: v["config"] for n, v in spec["features"].items()}
        features = build_features(configs)
        for n, f in features.items():
            if f.needs_backbone:
                f.use_backbone(*load_pretrained(d / f"backbone_{n}"))
            f.load_state(spec["features"][n]["state"])
        unc = build_task_object("uncertainty", spec["uncertainty"]["config"])
        unc.load_state(spec["uncertainty"]["state"])
        # scorers saved before task.domain.min_fraction existed: it only chooses the threshold (stored)
        domain = build_task_object("domain", {"min_fraction": 0.0, **spec["domain"]["config"]})
        with np.load(d / "domain.npz", allow_pickle=False) as z:
            domain.load(spec["domain"]["state"], dict(z))
        return cls([Target(**t) for t in spec["targets"]], configs, features, _load_heads(d, spec),
                   tuple(spec["hidden"]), np.asarray(spec["y_mean"]), np.asarray(spec["y_std"]),
                   spec["uncertainty"]["config"], unc, spec["domain"]["config"], domain, spec["largest_fragment"])


def _load_heads(d: Path, spec: dict[str, Any]) -> list[MLP]:
    weights = load_file(str(d / "heads.safetensors"))
    heads = []
    for i in range(spec["members"]):
        h = MLP(spec["in_dim"], hidden=tuple(spec["hidden"]), dropout=0.0, out_dim=spec["out_dim"])  # eval only
        h.load_state_dict({k.split(".", 1)[1]: v for k, v in weights.items() if k.split(".", 1)[0] == str(i)})
        h.eval()
        heads.append(h)
    return heads
