"""Structure heads: contact precision and Q3/Q8 against hand-computed values, the ESM contact
regression, and fm-finetune task=contacts / secondary_structure + fm-predict-structure end to end
on the committed structure slice."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tasks.structure.metrics import accuracies, contact_precisions, mean_precisions, separation_prior_scores


def test_contact_precision_hand_computed():
    L = 30
    true = np.zeros((L, L), dtype=bool)
    for i, j in ((0, 24), (1, 25), (2, 26), (3, 29), (10, 16)):
        true[i, j] = true[j, i] = True
    scores = np.zeros((L, L))
    # the six best-scored long-range pairs (|i-j| >= 24), three of them contacts
    for s, (i, j) in zip((6, 5, 4, 3, 2, 1), ((0, 24), (0, 25), (1, 25), (0, 26), (1, 26), (2, 26)), strict=True):
        scores[i, j] = s
    scores[10, 16] = 9.0  # the best short-range pair is a contact
    p = contact_precisions(scores, true)
    # 21 long-range pairs in a chain of 30; L/5 = 6 -> 3 of 6 right
    assert p["long_P@L5"] == pytest.approx(3 / 6)
    # L/2 = 15: the six above, then the zero-scored pairs in row order (0,27) (0,28) ... (2,29): no contact
    assert p["long_P@L2"] == pytest.approx(3 / 15)
    # L = 30 > 21 pairs: all of them are taken, 4 contacts
    assert p["long_P@L"] == pytest.approx(4 / 21)
    # short range (6-11): (10,16) first, then 5 zero-scored pairs without contact
    assert p["short_P@L5"] == pytest.approx(1 / 6)
    assert p["medium_P@L5"] == 0.0
    # the scores below the diagonal are never read
    assert contact_precisions(np.triu(scores) + np.tril(np.full((L, L), 99.0), -1), true) == p
    # mean over chains skips chains without pairs in a range (a 10-residue chain has no long range)
    short = contact_precisions(np.zeros((10, 10)), np.zeros((10, 10), bool))
    assert np.isnan(short["long_P@L5"])
    assert mean_precisions([p, short])["long_P@L5"] == pytest.approx(0.5)
    assert mean_precisions([p, short])["short_P@L5"] == pytest.approx((1 / 6 + 0) / 2)


def test_separation_prior_ranks_nearest_first():
    s = separation_prior_scores(40, seed=3)
    true = np.zeros((40, 40), bool)
    true[0, 24] = true[15, 39] = True  # separation 24: the prior's first long-range picks
    p = contact_precisions(s, true)
    # 16 pairs have separation 24; L/5 = 8 of them are picked at random: precision in {0, 1/8, 2/8}
    assert p["long_P@L5"] in (0.0, 1 / 8, 2 / 8)
    # top L = 40 long-range pairs are exactly all pairs of separation 24 (16) and 25 (15) and 9 of 26
    assert p["long_P@L"] == pytest.approx(2 / 40)


def test_q3_q8_hand_computed():
    pred = [np.array([0, 0, 0, 1, 2]), np.array([2, 1, 2])]  # HHHEC, CEC
    true = [np.array([0, 0, 2, 1, 2]), np.array([1, 1, 2])]  # HHCEC, EEC
    acc = accuracies(pred, true, num_classes=3)
    assert acc["per_residue"] == pytest.approx(6 / 8)
    assert acc["per_chain"] == pytest.approx((4 / 5 + 2 / 3) / 2)


def test_contact_regression_recovers_a_planted_signal(alphabet):
    """The ESM recipe on attention features: when one head's APC map is the contact map, the L1
    fit keeps that head and the backbone's contact head then ranks true contacts first."""
    from tasks.contacts.task import pair_training_set

    rng = np.random.default_rng(0)
    L, C = 50, 6
    contacts = rng.random((L, L)) < 0.05
    contacts = contacts | contacts.T
    feats = rng.normal(size=(L, L, C)).astype(np.float32)
    feats[..., 2] += 3.0 * contacts
    x, y = pair_training_set([feats], [contacts], 6)
    assert len(y) == (L - 6) * (L - 5) // 2  # pairs i < j with j - i >= 6
    from sklearn.linear_model import LogisticRegression

    lr = LogisticRegression(l1_ratio=1.0, C=0.15, solver="liblinear").fit(x, y)
    assert np.argmax(np.abs(lr.coef_[0])) == 2


@pytest.fixture(scope="module")
def structures(tmp_path_factory):
    """``fm-prep structures --slice`` (tests may run data_prep; the tasks only read its output)."""
    from data_prep.structures import prepare_slice

    out = tmp_path_factory.mktemp("structures")
    prepare_slice(out, cluster_steps=1, test_fraction=0.3, valid_fraction=0.05)
    return out


def _common(tmp_path, structures, task, extra=()):
    return [f"task={task}", "logger=csv", f"paths.run_dir={tmp_path}", f"task.data_dir={structures}",
            "model=tiny", "model.max_length=1024", "task.max_test_chains=12", "trainer.enable_progress_bar=false", *extra]


def test_contacts_task_end_to_end(compose, structures, tmp_path, alphabet):
    from fm_core.export import load_pretrained
    from fm_core.finetune import finetune
    from tasks.structure.data import load_split
    from tasks.structure.predict import predict

    test = load_split(structures, "test", 12, seed=0)
    # a pre-training corpus that holds three of the test chains: they must be found and excluded
    corpus = tmp_path / "corpus.fa"
    corpus.write_text("".join(f">p{k}\n{c.sequence}\n" for k, c in enumerate(test[:3])))
    cfg = compose(_common(tmp_path / "run", structures, "contacts",
                          [f"task.pretrain_corpus={corpus}", "task.supervised.train_chains=8",
                           "task.supervised.max_steps=3", "task.supervised.crop=48", "task.plot_chains=1"]),
                  config_name="finetune")
    m = finetune(cfg)
    assert m["data/test_chains"] == 12 and m["data/test_with_pretrain_hit_ge50"] == 3
    assert m["data/test_no_pretrain_hit_chains"] == 9
    assert m["data/test_no_train_hit_chains"] == sum(c.train_max_identity <= 0 for c in test)
    # metrics of the separation prior, recomputed here from the coordinates, per subset
    rows = [contact_precisions(separation_prior_scores(len(c), seed=0), c.contacts()) for c in test]
    assert m["test/separation_prior/long_P@L5"] == pytest.approx(mean_precisions(rows)["long_P@L5"])
    assert m["test_no_pretrain_hit/separation_prior/long_P@L5"] == pytest.approx(mean_precisions(rows[3:])["long_P@L5"])
    on_disk = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert on_disk["test/esm_lr/long_P@L5"] == m["test/esm_lr/long_P@L5"]
    assert (tmp_path / "run" / "contact_maps.png").stat().st_size > 10_000
    assert (tmp_path / "run" / "per_chain_precision.png").stat().st_size > 10_000

    # the export carries the fitted regression: fm-predict-structure reproduces the run's scores
    net, tok = load_pretrained(tmp_path / "run" / "export")
    assert net.heads["contact"].regression.weight.abs().sum() > 0
    fasta = tmp_path / "q.fa"
    fasta.write_text(f">{test[0].id}\n{test[0].sequence}\n")
    summary = predict(str(tmp_path / "run" / "export"), str(fasta), str(tmp_path / "pred"), heads=[], png=False)
    assert summary["read"] == summary["predicted"] == 1 and summary["contacts"] == "supervised head"
    probs = np.load(tmp_path / "pred" / f"{test[0].id}.contacts.npy")
    from tasks.contacts.task import pair_head_scorer
    from tasks.structure.heads import load_head

    head, _ = load_head(tmp_path / "run" / "export" / "heads" / "contacts.json")
    expected = pair_head_scorer(net, head, tok)(test[0])
    np.testing.assert_allclose(probs, expected, rtol=1e-5, atol=1e-6)
    assert np.allclose(probs, probs.T, atol=1e-6)


def test_secondary_structure_task_and_prediction(compose, structures, tmp_path):
    from fm_core.finetune import finetune
    from tasks.secondary_structure.task import propensity_table
    from tasks.structure.data import load_split
    from tasks.structure.predict import predict

    test = load_split(structures, "test", 12, seed=0)
    corpus = tmp_path / "corpus.fa"  # a small pre-training corpus keeps the MMseqs2 search short
    corpus.write_text(">p0\nMKTAYIAKQRQISFVKSHFSRQ\n")
    cfg = compose(_common(tmp_path / "run", structures, "secondary_structure",
                          ["task.train.max_steps=30", "task.max_train_chains=40", f"task.pretrain_corpus={corpus}",
                           "~task.heads.conv", "task.window_mlp.hidden=32", "task.repr_layers=[-1]"]),
                  config_name="finetune")
    m = finetune(cfg)
    assert m["data/test_no_pretrain_hit_chains"] == 12
    train = load_split(structures, "train", 40, seed=0)
    p3, p8 = propensity_table(train)
    # the propensity baseline, recomputed by hand
    assert m["test/propensity/Q3"] == pytest.approx(
        np.mean(np.concatenate([p3[c.aa_index] == c.y3 for c in test])))
    assert m["test/propensity/Q8_per_chain"] == pytest.approx(np.mean([np.mean(p8[c.aa_index] == c.y8) for c in test]))
    # trained heads beat the majority class on these chains (the profile MLP clearly)
    majority = np.mean(np.concatenate([c.y3 == np.bincount(np.concatenate([t.y3 for t in train])).argmax()
                                       for c in test]))
    assert m["test/profile_window/Q3"] > majority + 0.1
    assert (tmp_path / "run" / "per_chain_q3.png").stat().st_size > 10_000

    fasta = tmp_path / "q.fa"
    # then an empty record, a repeated id, and two ids that make the same file name
    fasta.write_text("".join(f">{c.id}\n{c.sequence}\n" for c in test[:2]) + ">bad\nMKX1\n>empty\n\n"
                     + f">{test[0].id}\nMKV\n>a/b\nMKTAYIAK\n>a_b\nMKTAYIAK\n")
    with pytest.raises(ValueError, match="bad"):
        predict(str(tmp_path / "run" / "export"), str(fasta), str(tmp_path / "pred"), png=False)
    assert not (tmp_path / "pred").exists()  # the input is checked before anything is written
    s = predict(str(tmp_path / "run" / "export"), str(fasta), str(tmp_path / "pred"), on_invalid="skip", png=True)
    assert (s["read"], s["predicted"], s["rejected_invalid"], s["rejected_empty"], s["rejected_duplicate_id"]) == (
        7, 4, 1, 1, 1)
    rows = (tmp_path / "pred" / "secondary_structure.tsv").read_text().splitlines()
    assert rows[0] == "id\tsequence\tss3\tss8" and len(rows) == 5
    _, seq, ss3, ss8 = rows[1].split("\t")
    assert seq == test[0].sequence and len(ss3) == len(ss8) == len(seq) and set(ss3) <= set("HEC")
    # the mapping of ids to file names, and the rejected records with their reasons
    names = [r.split("\t")[:2] for r in (tmp_path / "pred" / "records.tsv").read_text().splitlines()[1:]]
    assert names == [[test[0].id, test[0].id], [test[1].id, test[1].id], ["a/b", "a_b"], ["a_b", "a_b-2"]]
    rejected = [r.split("\t")[:2] for r in (tmp_path / "pred" / "rejected.tsv").read_text().splitlines()[1:]]
    assert rejected == [["bad", "invalid"], ["empty", "empty"], [test[0].id, "duplicate_id"]]
    # this export's contact regression was never fitted: no 0.5-everywhere maps, and the summary says so
    assert s["contacts"].startswith("not predicted") and not list((tmp_path / "pred").glob("*.contacts.*"))


def test_predict_refuses_an_unfitted_contact_head(tmp_path, alphabet, capsys):
    """A pre-training export (its contact regression never fitted, no heads): refused, not a map
    of 0.5 everywhere; the same backbone with a fitted regression predicts, and says which."""
    from bio_fm.contact import attach_contact_head
    from fm_core.errors import UserError
    from fm_core.export import save_pretrained
    from fm_core.model import build_model
    from tasks.structure.predict import predict

    net = build_model("tiny", alphabet)
    save_pretrained(tmp_path / "pretrained", net, alphabet)
    fasta = tmp_path / "q.fa"
    fasta.write_text(">q1\nMKTAYIAKQRQISFVKSHFSRQ\n")
    with pytest.raises(UserError, match="nothing to predict: contacts not predicted: no contacts head, and the "
                                        "backbone's contact regression was never fitted"):
        predict(str(tmp_path / "pretrained"), str(fasta), str(tmp_path / "pred"), png=False)
    assert not (tmp_path / "pred").exists()  # nothing written (the lock's directory is removed again)
    with torch.no_grad():
        attach_contact_head(net).regression.bias.fill_(-1.0)
    save_pretrained(tmp_path / "fitted", net, alphabet)
    s = predict(str(tmp_path / "fitted"), str(fasta), str(tmp_path / "pred"), png=False)
    assert s["contacts"] == "backbone contact regression" and (s["read"], s["predicted"]) == (1, 1)
    probs = np.load(tmp_path / "pred" / "q1.contacts.npy")
    assert probs.shape == (22, 22) and not np.allclose(probs, 0.5)
    assert "fm-predict-structure: read 1, predicted 1, rejected 0" in capsys.readouterr().err


def test_contact_module_freezes_or_finetunes_the_backbone(alphabet):
    from bio_fm.contact import attach_contact_head
    from fm_core.model import build_model
    from tasks.structure.heads import ContactDataset, ContactModule, PairHead

    rng = np.random.default_rng(0)
    seq = rng.integers(4, 24, size=40)
    contacts = rng.random((40, 40)) < 0.1
    ds = ContactDataset([(alphabet.add_special_tokens(seq), contacts | contacts.T)], crop=40, pad_id=alphabet.pad_id,
                        min_separation=6, seed=0)
    batch = ds.collate([ds[0]])
    for finetune_backbone in (False, True):
        torch.manual_seed(0)
        net = build_model("tiny", alphabet)
        attach_contact_head(net)  # a backbone head stays frozen while the pair head trains
        before = {k: v.clone() for k, v in net.state_dict().items()}
        module = ContactModule(net, PairHead(net.config.embed_dim, proj=8, channels=8, dilations=[1]),
                               finetune_backbone=finetune_backbone, min_separation=6, lr=1e-2, backbone_lr=1e-2,
                               weight_decay=1e-2, name="contact_head")
        opt = module.configure_optimizers()
        head_before = module.head.out.weight.detach().clone()
        loss = module.training_step(batch, 0)
        loss.backward()
        opt.step()
        changed = [k for k, v in net.state_dict().items() if not torch.equal(v, before[k])]
        assert not torch.equal(module.head.out.weight, head_before)
        if finetune_backbone:
            assert "encoder.layers.0.attn.qkv.weight" in changed
            assert not any(k.startswith(("heads.", "lm_head.")) for k in changed)
        else:
            assert changed == []


def test_a_missing_data_dir_names_the_command_that_makes_it(compose, tmp_path):
    """The tasks never prepare data: without an fm-prep output they stop before building a backbone."""
    from fm_core.finetune import finetune

    missing = tmp_path / "no_structures"
    cfg = compose(["task=secondary_structure", "model=tiny", "logger=csv", f"paths.run_dir={tmp_path / 'run'}",
                   f"task.data_dir={missing}"], config_name="finetune")
    with pytest.raises(FileNotFoundError, match=f"fm-prep structures --slice --out {missing}"):
        finetune(cfg)
    assert not missing.exists()


def test_fm_prep_structures_slice_defaults():
    """``fm-prep structures --slice`` is the committed slice with the split the tasks' figures use;
    flags given win."""
    import argparse

    from data_prep.structures import SLICE, StructurePrepConfig, add_arguments, from_args

    p = argparse.ArgumentParser()
    add_arguments(p)
    cfg = from_args(p.parse_args(["--slice"]))
    assert (cfg.input, cfg.out, cfg.test_fraction, cfg.valid_fraction) == (str(SLICE), "data/structure_slice", 0.3, 0.05)
    assert from_args(p.parse_args(["--slice", "--test-fraction", "0.2"])).test_fraction == 0.2
    assert from_args(p.parse_args([])) == StructurePrepConfig()


def test_load_head_builds_only_registered_heads(tmp_path):
    from tasks.structure.heads import WindowHead, load_head, save_head

    torch.manual_seed(0)
    head = WindowHead(6, out_dims=[3, 8], window=3, hidden=0, dropout=0.1)
    spec_path = save_head(tmp_path, "ss", head, task="secondary_structure")
    again, spec = load_head(spec_path)
    assert spec["head"] == "WindowHead" and spec["task"] == "secondary_structure"
    assert all(torch.equal(a, b) for a, b in zip(head.state_dict().values(), again.state_dict().values(), strict=True))
    spec["head"] = "os.system"
    spec_path.write_text(json.dumps(spec))
    with pytest.raises(ValueError, match="unknown head 'os.system'"):
        load_head(spec_path)


def _retrieval_database(tmp_path, planted):
    """The bio_fm UniProt slice (sequences only) plus the ``planted`` chains' sequences."""
    import gzip

    from tasks.structure.data import PRETRAIN_SLICE

    db = tmp_path / "retrieval_db.fa"
    db.write_bytes(gzip.decompress(PRETRAIN_SLICE.read_bytes())
                   + "".join(f">planted{k}\n{c.sequence}\n" for k, c in enumerate(planted)).encode())
    return db


@pytest.mark.slow
def test_secondary_structure_with_retrieval(compose, structures, tmp_path):
    """task.retrieval.database: retrieved profiles beside the embeddings, on the slice with the UniProt
    slice as database; two test chains planted in the database are found identical and left out of
    every *_no_identical_hit subset."""
    from bio_fm import profiles
    from fm_core.finetune import finetune
    from tasks.structure.data import load_split

    test = load_split(structures, "test", 12, seed=0)
    db = _retrieval_database(tmp_path, test[:2])
    corpus = tmp_path / "corpus.fa"
    corpus.write_text(">p0\nMKTAYIAKQRQISFVKSHFSRQ\n")
    cfg = compose(_common(tmp_path / "run", structures, "secondary_structure",
                          ["task.train.max_steps=20", "task.max_train_chains=20", f"task.pretrain_corpus={corpus}",
                           "~task.heads.conv", "task.window_mlp.hidden=32", "task.repr_layers=[-1]",
                           f"task.retrieval.database={db}", f"task.retrieval.cache_dir={tmp_path / 'cache'}"]),
                  config_name="finetune")
    m = finetune(cfg)
    for method in ("retrieved_profile_window", "linear_retrieval", "linear", "onehot_window", "propensity",
                   "profile_window"):
        assert 0 <= m[f"test/{method}/Q3"] <= 1 and f"test_no_identical_hit/{method}/Q3" in m
    identical = m["retrieval/test_chains_with_identical_hit"]
    assert identical >= 2 and m["data/test_no_identical_hit_chains"] == 12 - identical
    strata = [m[f"retrieval/test_chains_homologues_{s}"] for s in ("0", "1-9", "10+")]
    assert sum(strata) == 12 and strata == [m[f"data/test_homologues_{s}_chains"] for s in ("0", "1-9", "10+")]
    assert m["summary/best_retrieval_method"] in ("retrieved_profile_window", "linear_retrieval")
    rows = [r.split("\t") for r in (tmp_path / "run" / "retrieval_per_chain.tsv").read_text().splitlines()]
    assert rows[0][:4] == ["chain", "split", "length", "homologues"] and len(rows) == 1 + 20 + 12
    by_id = {r[0]: r for r in rows[1:] if r[1] == "test"}
    assert by_id[test[0].id][4] == "1.000" and by_id[test[0].id][6] == "1"
    # the cached search gives the same alignments; the profile of a chain is the one built from them
    from tasks.structure.retrieval import retrieve

    again = retrieve(test[:1], dict(cfg.task.retrieval), threads=1)[0]
    assert again.identical and again.max_identity == pytest.approx(1.0)
    w = profiles.sequence_weights(again.msa, cfg.task.retrieval.identity)
    np.testing.assert_allclose(again.features[:, :20], profiles.position_profile(again.msa, w, 1.0), rtol=1e-6)


class _Chain:
    def __init__(self, rows):
        from bio_fm import profiles
        from tasks.structure.retrieval import Retrieved

        msa = np.stack([profiles.encode(r) for r in rows])
        self.sequence = rows[0]
        self.cache = {"retrieval": Retrieved(msa, profiles.profile_features(msa, identity=0.8, pseudocount=1.0),
                                             len(rows) - 1, 0.5, 0.5, False)}

    def __len__(self) -> int:
        return len(self.sequence)


def test_pair_features_standardise_the_coupling_and_give_the_separation():
    """Columns 1 and 4 co-vary perfectly over the alignment, the others are constant or random:
    (1, 4) gets the largest standardised coupling; below min_homologues_mi the channel is zero."""
    from tasks.contacts.task import pair_features

    rng = np.random.default_rng(0)
    aa = "ACDEFGHIKLMNPQRSTVWY"
    rows = []
    for _ in range(40):
        k = rng.integers(0, 20)
        noise = [aa[rng.integers(0, 20)] for _ in range(6)]
        rows.append("".join([noise[0], aa[k], "G", noise[3], aa[(k + 7) % 20], noise[5]]))
    cfg = {"min_homologues_mi": 10, "identity": 0.8, "mi_pseudocount": 0.5}
    f = pair_features(_Chain(rows), cfg)
    assert f.shape == (6, 6, 2)
    mi = f[..., 0]
    off = ~np.eye(6, dtype=bool)
    np.testing.assert_allclose(mi, mi.T, atol=1e-6)
    assert mi[off].mean() == pytest.approx(0.0, abs=1e-5) and mi[off].std() == pytest.approx(1.0, rel=1e-4)
    assert np.unravel_index(np.argmax(np.where(off, mi, -np.inf)), mi.shape) in ((1, 4), (4, 1))
    np.testing.assert_allclose(f[0, 5, 1], np.log1p(5) / np.log1p(6), rtol=1e-6)
    assert f[2, 2, 1] == 0.0
    few = pair_features(_Chain(rows[:5]), cfg)  # 4 homologues < 10
    assert not few[..., 0].any() and np.array_equal(few[..., 1], f[..., 1])


def test_pair_head_takes_pair_features_and_the_dataset_crops_them_with_the_residues():
    from tasks.structure.heads import PairFeatureDataset, PairHead

    torch.manual_seed(0)
    head = PairHead(5, proj=4, channels=8, dilations=[1, 2], pair_dim=2).eval()
    x, pair = torch.randn(1, 9, 5), torch.randn(1, 9, 9, 2)
    y = head(x, pair)
    assert y.shape == (1, 9, 9) and torch.allclose(y, y.transpose(1, 2))
    assert not torch.allclose(y, head(x, pair + 1.0))  # the pair channels reach the output
    plain = PairHead(5, proj=4, channels=8, dilations=[1, 2]).eval()
    assert plain.kwargs["pair_dim"] == 0 and plain(x).shape == (1, 9, 9)
    # features, pair features and contacts cut from the same window
    n = 20
    feats = np.arange(n, dtype=np.float32)[:, None].repeat(3, 1)
    pf = (np.arange(n)[:, None] * 100 + np.arange(n)[None, :]).astype(np.float32)[..., None]
    contacts = np.zeros((n, n), bool)
    contacts[np.arange(n - 1), np.arange(1, n)] = True
    ds = PairFeatureDataset([(feats, pf, contacts)], crop=8, min_separation=6, seed=3)
    fx, fp, fc = ds[0]
    start = int(fx[0, 0])
    assert len(fx) == 8 and fp[0, 0, 0] == start * 101 and fp[2, 5, 0] == (start + 2) * 100 + start + 5
    batch = ds.collate([ds[0], (feats[:5], pf[:5, :5], contacts[:5, :5])])
    assert batch["x"].shape == (2, 8, 3) and batch["pair"].shape == (2, 8, 8, 1)
    assert not batch["pair_mask"][1, :, 5:].any() and batch["pair_mask"][0, 0, 6] and not batch["pair_mask"][0, 0, 5]


@pytest.mark.slow
def test_contacts_with_retrieval(compose, structures, tmp_path):
    """task.retrieval.database in the contacts task: the coupling baseline and the two supervised
    pair heads over the retrieved profile (with and without the backbone), their summary margins,
    and the train chains of the supervised heads searched too (in retrieval_per_chain.tsv)."""
    from fm_core.finetune import finetune
    from tasks.structure.data import load_split

    test = load_split(structures, "test", 12, seed=0)
    db = _retrieval_database(tmp_path, test[:2])
    cfg = compose(_common(tmp_path / "run", structures, "contacts",
                          ["task.supervised.train_chains=8", "task.supervised.max_steps=3", "task.supervised.crop=48",
                           "task.plot_chains=1", f"task.retrieval.database={db}", "task.retrieval.iterations=1",
                           f"task.retrieval.cache_dir={tmp_path / 'cache'}"]),
                  config_name="finetune")
    m = finetune(cfg)
    for method in ("retrieved_coupling", "retrieved_pair", "supervised_retrieval"):
        assert 0 <= m[f"test/{method}/long_P@L5"] <= 1 and f"test_no_identical_hit/{method}/long_P@L5" in m
    best = m["summary/best_retrieval_method"]
    single = ("esm_lr", "supervised", "random_init_esm_lr", "random_init_supervised", "random", "separation_prior")
    assert m["test/margin_best_retrieval_vs_best_single_sequence/long_P@L5"] == pytest.approx(
        m[f"test/{best}/long_P@L5"] - max(m[f"test/{s}/long_P@L5"] for s in single))
    assert m["retrieval/test_chains_with_identical_hit"] >= 2
    rows = (tmp_path / "run" / "retrieval_per_chain.tsv").read_text().splitlines()
    assert len(rows) == 1 + 8 + 12 and sum(r.split("\t")[1] == "train" for r in rows) == 8


def test_window_head_with_two_hidden_layers_keeps_padding_out():
    """layers=2: a chain padded in a batch gets the same logits as alone (the hidden layer is masked
    before the second window), and the saved kwargs rebuild the same head."""
    from tasks.structure.heads import WindowHead

    torch.manual_seed(0)
    head = WindowHead(6, out_dims=(3, 8), window=5, hidden=16, dropout=0.0, layers=2).eval()
    with torch.no_grad():
        head.mean.fill_(0.3)  # a nonzero standardisation: padding would leak without the masks
        for p in head.parameters():
            p.add_(0.1)
    short, long = torch.randn(1, 7, 6), torch.randn(1, 12, 6)
    batch = torch.zeros(2, 12, 6)
    batch[0, :7], batch[1] = short[0], long[0]
    mask = torch.zeros(2, 12, dtype=torch.bool)
    mask[0, :7], mask[1] = True, True
    with torch.no_grad():
        alone = head(short, torch.ones(1, 7, dtype=torch.bool))
        padded = head(batch, mask)
    for a, b in zip(alone, padded, strict=True):
        torch.testing.assert_close(a[0], b[0, :7], rtol=1e-5, atol=1e-6)
    assert len([m for m in head.net if isinstance(m, torch.nn.Conv1d)]) == 3
    assert WindowHead(**{k: v for k, v in head.kwargs.items() if k != "in_dim"}, in_dim=6).kwargs == head.kwargs


def test_retrieval_summary_margins_by_hand():
    from tasks.structure.retrieval import retrieval_summary

    m = {"test/a_retrieval/Q3": 0.70, "test/b_retrieval/Q3": 0.75, "test/onehot/Q3": 0.68, "test/conv/Q3": 0.65,
         "test/profile/Q3": 0.80, "sub/a_retrieval/Q3": 0.9, "sub/b_retrieval/Q3": 0.6, "sub/onehot/Q3": 0.5,
         "sub/conv/Q3": 0.55, "sub/profile/Q3": 0.7}
    out = retrieval_summary(m, {"test": [0, 1], "sub": [0], "empty": []}, ["a_retrieval", "b_retrieval"],
                            ["onehot", "conv"], ("Q3",), {"shipped": "profile"})
    assert out["summary/best_retrieval_method"] == "b_retrieval"  # chosen on test, kept on every subset
    assert out["test/margin_best_retrieval_vs_best_single_sequence/Q3"] == pytest.approx(0.07)
    assert out["test/margin_best_retrieval_vs_shipped/Q3"] == pytest.approx(-0.05)
    assert out["sub/margin_best_retrieval_vs_best_single_sequence/Q3"] == pytest.approx(0.05)
    assert out["sub/margin_best_retrieval_vs_shipped/Q3"] == pytest.approx(-0.1)
    assert not any(k.startswith("empty/") for k in out)
