"""``task.train_size``: a seed-determined label budget over whole groups (``fm_core.label_budget``),
and its hook in the tasks (structure clusters, molecule scaffolds, code files)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from fm_core.errors import UserError
from fm_core.label_budget import budget_records, label_budget

# 40 records in 17 groups of sizes 1..5 (group g holds records with key "g<g>")
SIZES = [1, 2, 3, 4, 5, 1, 1, 2, 3, 1, 4, 2, 1, 3, 1, 5, 1]
GROUPS = [f"g{g}" for g, n in enumerate(SIZES) for _ in range(n)]


def kept_groups(subset) -> set[str]:
    return {GROUPS[i] for i in subset.indices}


def test_same_seed_same_subset_other_seed_another():
    a, b = label_budget(GROUPS, 12, seed=0), label_budget(GROUPS, 12, seed=0)
    np.testing.assert_array_equal(a.indices, b.indices)
    others = [label_budget(GROUPS, 12, seed=s).indices for s in (1, 2, 3)]
    assert all(not np.array_equal(a.indices, o) for o in others)
    # the order of the records does not change which groups are kept
    order = np.random.default_rng(5).permutation(len(GROUPS))
    shuffled = label_budget([GROUPS[i] for i in order], 12, seed=0)
    assert {GROUPS[order[i]] for i in shuffled.indices} == kept_groups(a)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("size", [1, 5, 12, 0.5, 39])
def test_whole_groups_and_exact_counts(seed, size):
    s = label_budget(GROUPS, size, seed)
    kept = kept_groups(s)
    for g in set(GROUPS):  # no group split between the kept and the dropped records
        members = {i for i, x in enumerate(GROUPS) if x == g}
        assert members <= set(s.indices.tolist()) or not members & set(s.indices.tolist())
    want = budget_records(size, len(GROUPS))
    # never more than asked; short by less than the smallest group it had to skip (< the largest group)
    assert want - max(SIZES) < len(s.indices) <= want
    if size in (1, 5):
        assert len(s.indices) == want
    assert s.metrics == {"data/train_size": len(s.indices), "data/train_groups": len(kept), "data/train_size_requested": size,
                         "data/train_pool": 40, "data/train_pool_groups": 17}
    assert list(s.indices) == sorted(s.indices)


def test_counts_fractions_and_all():
    assert budget_records(None, 40) == 40 and budget_records(0.25, 40) == 10 and budget_records(1.0, 40) == 40
    assert budget_records(0.001, 40) == 1 and budget_records(7, 40) == 7
    everything = label_budget(GROUPS, None, 3)
    assert len(everything.indices) == 40 and everything.metrics["data/train_groups"] == 17
    assert everything.metrics["data/train_size_requested"] == "all"
    # a group larger than the whole budget: the first group of the seeded order, whole
    big = label_budget(["a"] * 5 + ["b"] * 7, 3, 0)
    assert len(big.indices) in (5, 7) and big.metrics["data/train_groups"] == 1


@pytest.mark.parametrize("bad, match", [(0, "at least 1"), (41, "only 40 records"), (1.5, r"\(0, 1\]"),
                                        (0.0, r"\(0, 1\]"), (True, "give a count"), ("10", "give a count")])
def test_bad_budgets_are_user_errors(bad, match):
    with pytest.raises(UserError, match=match):
        label_budget(GROUPS, bad, 0)


def write_structures(root: Path, clusters: dict[str, list[int]]) -> Path:
    """A minimal ``fm-prep structures`` directory: per split, chains of 12 residues with clusters."""
    from bio_fm.alphabet import ProteinAlphabet
    from fm_core.shards import ShardWriter

    alphabet = ProteinAlphabet()
    extra = {"id": pa.string(), "sequence": pa.large_string(), "ca": pa.large_list(pa.float32()),
             "cb": pa.large_list(pa.float32()), "ss8": pa.large_string(), "ss3": pa.large_string(),
             "cluster": pa.int64()}
    rng = np.random.default_rng(0)
    for split, cl in clusters.items():
        w = ShardWriter(root / split, alphabet.vocab_size, extra)
        for k, c in enumerate(cl):
            seq = "".join(rng.choice(list("ACDEFGHIKLMNPQRSTVWY"), 12))
            xyz = (np.arange(36, dtype=np.float32) * 1.3).tolist()
            w.add(alphabet.encode(seq), id=f"{split}{k}", sequence=seq, ca=xyz, cb=xyz, ss8="H" * 12, ss3="H" * 12,
                  cluster=c)
        w.close()
    (root / "manifest.json").write_text(json.dumps({"kind": "structures"}))
    return root


def test_structure_tasks_keep_whole_clusters(tmp_path):
    from tasks.structure import data as sd

    clusters = [0, 0, 0, 1, 2, 2, 3, 4, 4, 4, 4, 5, 6, 7, 7]
    root = write_structures(tmp_path, {"train": clusters, "test": [10, 11, 12]})
    chains = sd.load_split(root, "train")
    assert [c.cluster for c in chains] == clusters and chains[0].crop(5).cluster == 0
    task = sd.StructureTask(data_dir=str(root), pretrain_corpus=None, pretrain_identity=0.5, max_test_chains=None,
                            mmseqs_threads=1, num_threads=None, retrieval={"database": None}, train_size=6)
    for seed in range(5):
        metrics: dict = {}
        kept = task.budget(chains, seed, metrics)
        ids = {c.cluster for c in kept}
        assert sum(c.cluster in ids for c in chains) == len(kept) == 6  # whole clusters, 6 chains
        assert metrics["data/train_size"] == 6 and metrics["data/train_groups"] == len(ids)
        assert metrics["data/train_pool_groups"] == 8
    picks = {tuple(c.id for c in task.budget(chains, s, {})) for s in range(5)}
    assert len(picks) > 1
    assert [c.id for c in sd.load_split(root, "test")] == ["test0", "test1", "test2"]  # the test split as it was


def test_code_files_view_matches_the_dataset(tmp_path):
    from fm_core.shards import ShardDataset, ShardWriter

    w = ShardWriter(tmp_path / "train", 50, {"path": pa.string()})
    for k in range(9):
        w.add(np.arange(k + 1) % 50, path=f"pkg/f{k}.py")
    w.close()
    ds = ShardDataset(tmp_path / "train")
    s = label_budget(ds.column("path"), 4, seed=1)
    view = s.view(ds)
    assert len(view) == 4 and list(view.lengths) == [int(i) + 1 for i in s.indices]
    for j, i in enumerate(s.indices):
        np.testing.assert_array_equal(view.array(j), ds.array(int(i)))
        item = view[(j, 7)]
        assert (item["seed"], item["index"]) == (7, int(i))
    np.testing.assert_array_equal(view.token_counts(50),
                                  np.bincount(np.concatenate([ds.array(int(i)) for i in s.indices]), minlength=50))
    assert list(view.column("path")) == [f"pkg/f{int(i)}.py" for i in s.indices]


DATA = Path(__file__).parent / "data" / "molecules"


def test_drug_property_budget_by_scaffold_keeps_valid_and_test(compose, tmp_path):
    """End to end: 60 training molecules by whole scaffolds; valid and test as without a budget."""
    import pyarrow.parquet as pq

    from data_prep.molecules import MoleculePrepConfig, prepare
    from fm_core.finetune import finetune

    def cfg(seed, extra=()):
        return compose(["task=drug_property", "dataset=b3db_classification",
                        f"dataset.inputs=[{DATA / 'b3db_classification_sample300.tsv'}]", "logger=csv",
                        "task.seeds=[0]", f"task.data_dir={tmp_path / 'data'}", "~task.features.descriptors",
                        "task.features.morgan.size=256", "task.head.hidden=[16]", "task.head.max_epochs=3",
                        "task.rf_baseline=null", "task.featurize.directory=null", f"seed={seed}",
                        f"paths.run_dir={tmp_path / f'run{seed}{len(extra)}'}", *extra], config_name="finetune")

    d = cfg(0).task.dataset
    prepare(MoleculePrepConfig(source=d.source, inputs=list(d.inputs), out=str(tmp_path / "data" / d.name),
                               largest_fragment=d.largest_fragment, on_conflict=d.on_conflict, seed=d.split_seed,
                               max_rows=d.max_rows))
    t = pq.read_table(tmp_path / "data" / d.name / "molecules.parquet").to_pydict()
    train = [k for k, s in enumerate(t["split_scaffold"]) if s == "train"]
    full = finetune(cfg(0))
    assert (full["data/train_size"], full["data/train_pool"], full["data/valid"], full["data/test"]) == (239, 239, 30, 30)
    m = finetune(cfg(1, ["task.train_size=60"]))
    expected = label_budget([t["scaffold"][k] for k in train], 60, seed=1)
    assert m["data/train"] == m["data/train_size"] == len(expected.indices) <= 60
    assert m["data/train_groups"] == expected.metrics["data/train_groups"]
    assert m["data/train_pool_groups"] == len({t["scaffold"][k] for k in train})
    assert (m["data/valid"], m["data/test"]) == (30, 30)
    on_disk = json.loads((tmp_path / "run11" / "metrics.json").read_text())
    assert on_disk["data/train_size"] == m["data/train_size"] and on_disk["data/train_size_requested"] == 60
    rows = (tmp_path / "run11" / "test_predictions.csv").read_text().splitlines()
    assert len(rows) == 31  # header + the same 30 test molecules
