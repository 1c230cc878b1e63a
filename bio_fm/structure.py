"""Per-chain structure features: ideal C-beta, contact maps, secondary structure in 8 and 3 states."""

from __future__ import annotations

import numpy as np

# DSSP's eight states; anything else DSSP writes (' ', '-', 'P' for PPII in DSSP 4) is coil.
DSSP8 = "HGIEBTSC"
# the usual reduction (e.g. CB513 / NetSurfP): helices H G I -> H, strands E B -> E, the rest -> C
_TO3 = {"H": "H", "G": "H", "I": "H", "E": "E", "B": "E"}
SS3 = "HEC"
_TABLE8 = str.maketrans({c: "C" for c in " -P.?"})
_TABLE3 = str.maketrans({c: _TO3.get(c, "C") for c in "HGIEBTSC -P.?"})


def normalise_dssp8(ss: str) -> str:
    """DSSP letters with the unassigned states (blank, '-', PPII 'P') written as 'C'."""
    out = ss.translate(_TABLE8)
    bad = set(out) - set(DSSP8)
    if bad:
        raise ValueError(f"unknown DSSP state(s) {sorted(bad)}")
    return out


def dssp8_to_3(ss8: str) -> str:
    """8-state DSSP -> 3 states (H: H/G/I, E: E/B, C: everything else)."""
    return normalise_dssp8(ss8).translate(_TABLE3)


def ideal_cb(n: np.ndarray, ca: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Virtual C-beta from backbone N, CA, C (..., 3), with the ideal-geometry constants used by
    trRosetta (Yang et al., PNAS 2020): CB = -0.58273431 a + 0.56802827 b - 0.54067466 c' + CA,
    where b = CA - N, c' = C - CA, a = b x c'."""
    b = ca - n
    cc = c - ca
    a = np.cross(b, cc)
    return (-0.58273431 * a + 0.56802827 * b - 0.54067466 * cc + ca).astype(np.float32)


def contact_atoms(sequence: str, ca: np.ndarray, cb: np.ndarray) -> np.ndarray:
    """The atom that defines contacts per residue: C-beta, or C-alpha for glycine."""
    gly = np.frombuffer(sequence.encode("ascii"), dtype=np.uint8) == ord("G")
    return np.where(gly[:, None], ca, cb)


def contact_map(coords: np.ndarray, threshold: float = 8.0) -> np.ndarray:
    """(L, 3) contact atoms -> (L, L) bool, True where the distance is below ``threshold`` Angstrom
    (diagonal included, as distances are 0 there)."""
    coords = np.asarray(coords, dtype=np.float32)
    d2 = ((coords[:, None, :] - coords[None, :, :]) ** 2).sum(-1)
    return d2 < threshold * threshold
