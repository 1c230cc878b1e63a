"""Molecule representations, chosen by config (``_target_``): Morgan fingerprints, RDKit 2D
descriptors, and embeddings from a SMILES masked-LM backbone.

Every representation is a :class:`Features`: ``fit(mols)`` (learns what it needs from the training
molecules only, e.g. descriptor normalisation), ``transform(mols) -> float32 array (n, dim)``, and
``state()`` / ``load_state(state)`` so a trained scorer can be saved and reloaded (``fm-score``).
One that embeds molecules with a backbone says so (``needs_backbone``) and is handed it
(``use_backbone``): fm-finetune's ``run.backbone(tokenizer)``, or the copy saved with a scorer.
Their settings' defaults live in conf/task/drug_property.yaml.

A representation computed per molecule without fitted state (``cacheable``: Morgan, descriptors)
splits into ``raw(mols)`` (the per-molecule values) and ``finish(raw)`` (the fitted normalisation);
:class:`RawCache` computes ``raw`` in worker processes from canonical SMILES and caches it on disk
by canonical SMILES and the featuriser's ``key()`` (class, settings, ``version``, RDKit version).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from fm_core.padding import pad_batch


class Features:
    """A molecule representation (the common base of every ``task.features`` entry)."""

    needs_backbone: ClassVar[bool] = False  # True: use_backbone() must be called before fit/transform
    cacheable: ClassVar[bool] = False  # True: raw(mols) per molecule, finish(raw) after fit_raw(raw)
    version: ClassVar[str] = "1"  # bump when raw() changes: old cache entries are not reused

    def settings(self) -> dict[str, Any]:
        return {}

    def key(self) -> str:
        """The cache key of ``raw``: class, settings, version and the RDKit version."""
        import rdkit

        text = json.dumps([type(self).__name__, self.settings(), self.version, rdkit.__version__], sort_keys=True)
        return f"{type(self).__name__}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"

    def raw(self, mols: list[Any]) -> np.ndarray:
        raise NotImplementedError

    def fit_raw(self, raw: np.ndarray) -> None:
        pass

    def finish(self, raw: np.ndarray) -> np.ndarray:
        return raw

    def use_backbone(self, net: Any, tokenizer: Any) -> None:
        raise TypeError(f"{type(self).__name__} takes no backbone")

    def fit(self, mols: list[Any]) -> Features:
        return self

    def transform(self, mols: list[Any]) -> np.ndarray:
        raise NotImplementedError

    def state(self) -> dict[str, Any]:
        return {}

    def load_state(self, state: dict[str, Any]) -> None:
        pass


class MorganFeatures(Features):
    """Morgan (ECFP-like) fingerprints from RDKit's ``MorganGenerator``: bits or counts
    (``log1p`` of counts when ``log_counts``), ``radius`` and ``size`` configurable."""

    cacheable = True

    def __init__(self, *, radius: int, size: int, counts: bool, log_counts: bool, chirality: bool):
        self.radius, self.size, self.counts, self.log_counts, self.chirality = radius, size, counts, log_counts, chirality

    def settings(self) -> dict[str, Any]:
        return {"radius": self.radius, "size": self.size, "counts": self.counts, "chirality": self.chirality}

    def _generator(self):
        from rdkit.Chem import rdFingerprintGenerator

        return rdFingerprintGenerator.GetMorganGenerator(radius=self.radius, fpSize=self.size,
                                                         includeChirality=self.chirality)

    @property
    def dim(self) -> int:
        return self.size

    def raw(self, mols: list[Any]) -> np.ndarray:
        gen = self._generator()
        out = np.zeros((len(mols), self.size), dtype=np.float32)
        for i, mol in enumerate(mols):
            out[i] = gen.GetCountFingerprintAsNumPy(mol) if self.counts else gen.GetFingerprintAsNumPy(mol)
        return out

    def finish(self, raw: np.ndarray) -> np.ndarray:
        out = raw.astype(np.float32, copy=True)
        if self.counts and self.log_counts:
            np.log1p(out, out=out)
        return out

    def transform(self, mols: list[Any]) -> np.ndarray:
        return self.finish(self.raw(mols))


class DescriptorFeatures(Features):
    """RDKit 2D descriptors (``Descriptors._descList``, or the ``names`` given), normalised with
    statistics of the training molecules: values outside the train 0.5/99.5 percentiles are clipped,
    then standardised; missing values (NaN, inf, a descriptor that raises) become the train median,
    i.e. 0 after normalisation; constant columns are 0."""

    cacheable = True

    def __init__(self, *, names: list[str] | None, clip_percentile: float):
        from rdkit.Chem import Descriptors

        table = dict(Descriptors._descList)
        self.names = list(names) if names else list(table)
        unknown = [n for n in self.names if n not in table]
        if unknown:
            raise ValueError(f"unknown RDKit descriptors {unknown}")
        self._funcs = [table[n] for n in self.names]
        self.clip_percentile = clip_percentile
        self.lo = self.hi = self.median = self.mean = self.std = None

    def settings(self) -> dict[str, Any]:
        return {"names": self.names}

    def __getstate__(self) -> dict[str, Any]:  # RDKit's descriptor functions do not pickle: looked up again
        return {k: v for k, v in self.__dict__.items() if k != "_funcs"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        from rdkit.Chem import Descriptors

        self.__dict__.update(state)
        table = dict(Descriptors._descList)
        self._funcs = [table[n] for n in self.names]

    @property
    def dim(self) -> int:
        return len(self.names)

    def raw(self, mols: list[Any]) -> np.ndarray:
        out = np.full((len(mols), len(self._funcs)), np.nan, dtype=np.float64)
        for i, mol in enumerate(mols):
            for j, f in enumerate(self._funcs):
                try:
                    out[i, j] = f(mol)
                except Exception:  # RDKit descriptors raise on some exotic molecules: a missing value
                    pass
        out[~np.isfinite(out)] = np.nan
        return out

    def fit(self, mols: list[Any]) -> DescriptorFeatures:
        self.fit_raw(self.raw(mols))
        return self

    def fit_raw(self, raw: np.ndarray) -> None:
        x = raw
        with np.errstate(all="ignore"):
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns
                self.lo = np.nanpercentile(x, self.clip_percentile, axis=0)
                self.hi = np.nanpercentile(x, 100 - self.clip_percentile, axis=0)
                self.median = np.nanmedian(x, axis=0)
        for a in (self.lo, self.hi, self.median):
            a[~np.isfinite(a)] = 0.0
        x = self._fill_clip(x)
        self.mean, self.std = x.mean(axis=0), x.std(axis=0)

    def _fill_clip(self, x: np.ndarray) -> np.ndarray:
        x = np.where(np.isnan(x), self.median, x)
        return np.clip(x, self.lo, self.hi)

    def transform(self, mols: list[Any]) -> np.ndarray:
        return self.finish(self.raw(mols))

    def finish(self, raw: np.ndarray) -> np.ndarray:
        if self.mean is None:
            raise RuntimeError("DescriptorFeatures.transform before fit")
        x = self._fill_clip(raw)
        std = np.where(self.std > 1e-12, self.std, np.inf)
        return ((x - self.mean) / std).astype(np.float32)

    def state(self) -> dict[str, Any]:
        return {k: getattr(self, k).tolist() for k in ("lo", "hi", "median", "mean", "std")}

    def load_state(self, state: dict[str, Any]) -> None:
        for k, v in state.items():
            setattr(self, k, np.asarray(v, dtype=np.float64))


class BackboneFeatures(Features):
    """Mean-pooled token representations of a SMILES masked LM (fm-finetune's backbone,
    ``model.init_from=<export of fm-pretrain experiment=smiles_quick>``), from layer ``layer``
    (-1 = last, after the final norm); the backbone is frozen."""

    needs_backbone = True

    def __init__(self, *, layer: int, batch_size: int):
        self.layer, self.batch_size = layer, batch_size
        self._net = self._tok = None

    def use_backbone(self, net: Any, tokenizer: Any) -> None:
        self._net, self._tok = net.eval(), tokenizer

    def _load(self):
        if self._net is None:
            raise RuntimeError("BackboneFeatures: no backbone; fm-finetune hands it model.init_from=<export of "
                               "fm-pretrain experiment=smiles_quick> (use_backbone)")
        return self._net, self._tok

    @property
    def net(self) -> Any:
        return self._load()[0]

    @property
    def tokenizer(self) -> Any:
        return self._load()[1]

    @property
    def dim(self) -> int:
        return self._load()[0].config.embed_dim

    def fit(self, mols: list[Any]) -> BackboneFeatures:
        self._load()
        return self

    @torch.no_grad()
    def transform(self, mols: list[Any]) -> np.ndarray:
        from rdkit import Chem

        net, tok = self._load()
        layer = net.config.num_layers if self.layer == -1 else self.layer
        max_len = net.config.max_length
        room = max_len - tok.num_special_added
        seqs = [tok.add_special_tokens(tok.encode(Chem.MolToSmiles(m))[:room]) for m in mols]
        order = np.argsort([len(s) for s in seqs])
        out = np.zeros((len(mols), net.config.embed_dim), dtype=np.float32)
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            ids = pad_batch([seqs[i] for i in idx], tok.pad_id)  # (B, L)
            rep = net(ids, repr_layers=[layer])["representations"][layer]
            keep = torch.ones_like(ids, dtype=torch.bool)
            for s in tok.special_ids.tolist():
                keep &= ids != s
            w = keep.unsqueeze(-1).to(rep.dtype)
            out[idx] = ((rep * w).sum(1) / w.sum(1).clamp(min=1)).numpy()
        return out


def featurize(features: dict[str, Features], mols: list[Any]) -> np.ndarray:
    """The concatenation of every representation, in the config's order."""
    return np.concatenate([f.transform(mols) for f in features.values()], axis=1)


def _raw_from_smiles(feature: Features, smiles: list[str]) -> np.ndarray:
    """Worker: ``feature.raw`` of molecules parsed from (canonical, valid) SMILES."""
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    return feature.raw([Chem.MolFromSmiles(s) for s in smiles])


class RawCache:
    """``raw`` values of cacheable representations by canonical SMILES: read from
    ``<directory>/<feature.key()>.npz`` (None: no cache), the missing ones computed in ``workers``
    processes (chunks of ``chunk`` molecules; fewer than two chunks run in this process) and added
    to the file (written atomically)."""

    def __init__(self, *, directory: str | None, workers: int, chunk: int):
        self.directory = Path(directory) if directory else None
        self.workers, self.chunk = workers, chunk
        self.hits = self.computed = 0

    def compute(self, feature: Features, smiles: list[str]) -> np.ndarray:
        chunks = [smiles[i : i + self.chunk] for i in range(0, len(smiles), self.chunk)]
        if self.workers <= 1 or len(chunks) < 2:
            return _raw_from_smiles(feature, smiles)
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("fork")) as pool:
            return np.concatenate(list(pool.map(_raw_from_smiles, [feature] * len(chunks), chunks)))

    def raw(self, feature: Features, smiles: list[str]) -> np.ndarray:
        path = self.directory / f"{feature.key()}.npz" if self.directory else None
        known: dict[str, int] = {}
        values = None
        if path is not None and path.is_file():
            with np.load(path, allow_pickle=False) as z:
                known = {s: i for i, s in enumerate(z["smiles"].tolist())}
                values = z["values"]
        missing = sorted({s for s in smiles if s not in known})
        self.hits += len(smiles) - sum(s not in known for s in smiles)
        self.computed += len(missing)
        if missing:
            new = self.compute(feature, missing)
            values = new if values is None else np.concatenate([values, new.astype(values.dtype)])
            known.update({s: len(known) + i for i, s in enumerate(missing)})
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(f".tmp{os.getpid()}.npz")
                np.savez(tmp, smiles=np.array(list(known), dtype=str), values=values)
                os.replace(tmp, path)
        return values[[known[s] for s in smiles]]


def featurize_smiles(features: dict[str, Features], smiles: dict[str, list[str]], mols: dict[str, list[Any]],
                     cache: RawCache, fit_on: str) -> dict[str, np.ndarray]:
    """Every representation of every split (``smiles``/``mols`` by split name), fitted on split
    ``fit_on``: cacheable ones through ``cache`` (parallel, cached), the others in this process."""
    parts: dict[str, list[np.ndarray]] = {s: [] for s in smiles}
    for f in features.values():
        if f.cacheable:
            raw = {s: cache.raw(f, list(smi)) for s, smi in smiles.items()}
            f.fit_raw(raw[fit_on])
            for s in smiles:
                parts[s].append(f.finish(raw[s]))
        else:
            f.fit(mols[fit_on])
            for s in smiles:
                parts[s].append(f.transform(mols[s]))
    return {s: np.concatenate(p, axis=1) for s, p in parts.items()}
