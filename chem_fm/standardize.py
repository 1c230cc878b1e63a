"""SMILES / RDKit molecule parsing and standardisation: the one home for both (``fm-prep
molecules`` and the drug-property scorer use it).

``parse`` sanitises with size limits; ``largest_fragment`` strips salts and counter-ions;
``canonical`` gives the canonical isomeric SMILES, the molecule re-read from it and its InChIKey
(the key of the written SMILES: stereo perception can differ from the input record);
``scaffold`` the Bemis-Murcko scaffold; ``butina_clusters`` Taylor-Butina clusters of Morgan
fingerprints (the groups of a cluster split).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

# Beyond drug-like sizes RDKit's recursive canonicalisation can exhaust the C stack (a 6,000-atom
# chain crashes the interpreter), so larger inputs are rejected, counted, before RDKit sees them.
MAX_SMILES_CHARS = 4000
MAX_ATOMS = 1000


def _read(smiles_or_mol: Any) -> tuple[Any, str | None]:
    """An unsanitised Mol from SMILES text (or an SDF record's Mol), or (None, why)."""
    from rdkit import Chem

    if not isinstance(smiles_or_mol, str):
        return (None, "unreadable SDF record") if smiles_or_mol is None else (smiles_or_mol, None)
    text = smiles_or_mol.strip()
    if not text:
        return None, "empty"
    if len(text) > MAX_SMILES_CHARS:
        return None, f"SMILES of {len(text)} characters (limit {MAX_SMILES_CHARS})"
    if "\0" in text:
        return None, "NUL character in SMILES"
    mol = Chem.MolFromSmiles(text, sanitize=False)
    return (None, "SMILES parse error") if mol is None else (mol, None)


def parse(smiles_or_mol: Any) -> tuple[Any, str | None]:
    """(sanitised Mol, None) or (None, RDKit's reason)."""
    from rdkit import Chem

    mol, why = _read(smiles_or_mol)
    if mol is None:
        return None, why
    if mol.GetNumAtoms() > MAX_ATOMS:
        return None, f"{mol.GetNumAtoms()} atoms (limit {MAX_ATOMS})"
    try:
        Chem.SanitizeMol(mol)
    except Exception as err:  # RDKit raises several sanitisation error types
        return None, str(err).strip().splitlines()[0]
    if mol.GetNumAtoms() == 0:
        return None, "no atoms"
    if mol.GetNumAtoms() > MAX_ATOMS:
        return None, f"{mol.GetNumAtoms()} atoms (limit {MAX_ATOMS})"
    return mol, None


def num_fragments(mol: Any) -> int:
    from rdkit import Chem

    return len(Chem.GetMolFrags(mol))


@cache
def _chooser() -> Any:
    from rdkit.Chem.MolStandardize import rdMolStandardize

    return rdMolStandardize.LargestFragmentChooser()


def largest_fragment(mol: Any) -> Any:
    """The largest fragment of a multi-fragment molecule (salts, counter-ions removed); a
    one-fragment molecule as it is."""
    return _chooser().choose(mol) if num_fragments(mol) > 1 else mol


@dataclass(frozen=True)
class Canonical:
    smiles: str  # canonical isomeric SMILES
    mol: Any  # the molecule re-read from ``smiles`` (None when RDKit cannot)
    inchikey: str  # of ``mol``; "" when RDKit gives none


def canonical(mol: Any) -> Canonical:
    from rdkit import Chem

    smiles = Chem.MolToSmiles(mol)
    canon = Chem.MolFromSmiles(smiles)
    return Canonical(smiles, canon, Chem.MolToInchiKey(canon) if canon is not None else "")


def scaffold(mol: Any) -> str:
    """Bemis-Murcko scaffold SMILES ("" for an acyclic molecule)."""
    from rdkit.Chem.Scaffolds import MurckoScaffold

    return MurckoScaffold.MurckoScaffoldSmiles(mol=mol)


def butina_clusters(smiles: list[str], similarity: float) -> list[int]:
    """Taylor-Butina clustering (RDKit's Morgan radius 2, 2048 bits; exact Tanimoto by
    ``BulkTanimotoSimilarity``): the molecule with the most unassigned neighbours at Tanimoto >=
    ``similarity`` becomes a centroid and takes them; a cluster id per molecule."""
    import numpy as np
    from rdkit import Chem, DataStructs
    from rdkit.Chem import rdFingerprintGenerator

    gen = rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=2048)
    fps = [gen.GetFingerprint(Chem.MolFromSmiles(s)) for s in smiles]
    neighbours = [np.flatnonzero(np.asarray(DataStructs.BulkTanimotoSimilarity(fp, fps)) >= similarity)
                  for fp in fps]
    cluster = np.full(len(fps), -1, dtype=np.int64)
    order = sorted(range(len(fps)), key=lambda i: (-len(neighbours[i]), i))
    n_clusters = 0
    for i in order:
        if cluster[i] >= 0:
            continue
        members = neighbours[i][cluster[neighbours[i]] < 0]
        cluster[members] = n_clusters
        cluster[i] = n_clusters
        n_clusters += 1
    return cluster.tolist()
