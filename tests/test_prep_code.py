"""fm-prep code on a committed slice of the CPython 3.11 standard library plus crafted bad files:
skip reasons, exact and near duplicates, package splits that keep near-twins together, the BPE
tokenizer, and training from code shards."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from code_fm.bpe import SPECIAL_TOKENS, CodeBPETokenizer
from data_prep.code import CodePrepConfig, prepare, shingles
from fm_core.shards import ShardDataset, load_tokenizer
from fm_core.tokenizer import Tokenizer, tokenizer_from_dict

SLICE = Path(__file__).parent / "data" / "code" / "python3.11"


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("src") / "lib"
    shutil.copytree(SLICE, root)
    heapq = (root / "heapq.py").read_text()
    (root / "blob.py").write_bytes(b"x = 1\n\0\0binary")
    (root / "latin1.py").write_bytes("# caf\xe9\nx = 1\n".encode("latin-1"))
    (root / "mini.py").write_text("x=[" + ",".join(str(i) for i in range(600)) + "]\n")
    (root / "big.py").write_text("x = 1\n" * 40_000)
    (root / "empty.py").write_text("\n\n")
    (root / "tests").mkdir()
    (root / "tests" / "test_heapq.py").write_text(heapq)  # test folders are not part of the corpus
    (root / "json" / "heapq_copy.py").write_text(heapq)  # exact copy
    lines = heapq.splitlines()
    (root / "html" / "heapq_edited.py").write_text("\n".join(lines[:-4] + ["# edited"]))  # near copy
    # a near-twin below the removal threshold (Jaccard ~0.7): must land in the split of heapq.py
    half = "\n".join(lines[: int(len(lines) * 0.6)])
    (root / "xmlrpc" / "heapq_part.py").write_text(half + "\n\ndef extra(a, b):\n    return sorted(a + b)\n")
    return root


@pytest.fixture(scope="module")
def prepared(tree, tmp_path_factory):
    out = tmp_path_factory.mktemp("code")
    cfg = CodePrepConfig(inputs=[str(tree)], out=str(out), vocab_size=2000, valid_fraction=0.2, test_fraction=0.2)
    return out, prepare(cfg), cfg


def test_counts_and_skip_reasons(prepared):
    out, m, _ = prepared
    c = m["counts"]
    assert c["rejected"] == {"binary": 1, "empty": 1, "exact_duplicate": 1, "generated": 2, "minified": 1,
                             "near_duplicate": 1, "non_utf8": 1, "oversized": 1}
    assert c["read"] == 37 and c["kept"] == 28 and json.loads((out / "manifest.json").read_text())["balanced"]
    assert "html/heapq_edited.py ~ lib/heapq.py" in c["reject_examples"]["near_duplicate"][0]
    assert sorted(x.split("/")[-1] for x in c["reject_examples"]["generated"]) == ["keyword.py", "token.py"]
    sets = {s: ShardDataset(out / s) for s in ("train", "valid", "test")}
    assert sum(len(d) for d in sets.values()) == 28
    for s, d in sets.items():
        assert int(d.lengths.sum()) == m["splits"][s]["tokens"] and len(d) == m["splits"][s]["records"] > 0


def test_packages_and_near_twins_never_cross_splits(prepared, tree):
    out, m, cfg = prepared
    where, groups = {}, {}
    for s in ("train", "valid", "test"):
        for r in ShardDataset(out / s).rows(["path", "group"]):
            where[r["path"]] = s
            groups.setdefault(r["group"], set()).add(s)
    assert all(len(v) == 1 for v in groups.values())  # a package lives in one split
    assert where["lib/xmlrpc/heapq_part.py"] == where["lib/heapq.py"]  # its near-twin followed it
    assert m["group_merges_for_twins"] >= 1
    # exact Jaccard of 5-token shingles over every cross-split pair stays below the twin threshold
    sh = {p: shingles((tree.parent / p).read_text()) for p in where}
    paths = sorted(where)
    worst = max(len(sh[a] & sh[b]) / len(sh[a] | sh[b])
                for i, a in enumerate(paths) for b in paths[i + 1 :] if where[a] != where[b])
    assert worst < cfg.twin_threshold
    twin = len(sh["lib/xmlrpc/heapq_part.py"] & sh["lib/heapq.py"]) / len(sh["lib/xmlrpc/heapq_part.py"] | sh["lib/heapq.py"])
    assert 0.6 < twin < cfg.near_dup_threshold


def test_bpe_tokenizer_round_trip_and_specials(prepared):
    out, m, _ = prepared
    tok = load_tokenizer(out)
    assert isinstance(tok, CodeBPETokenizer) and isinstance(tok, Tokenizer)
    assert tok.vocab_size == m["vocab_size"] == 2000
    assert [tok.hf.id_to_token(i) for i in range(8)] == list(SPECIAL_TOKENS)
    assert (tok.pad_id, tok.mask_id, tok.bos_id, tok.eos_id, tok.fim_middle_id) == (0, 4, 2, 3, 6)
    assert tok.special_ids.tolist() == list(range(8)) and tok.random_ids[0] == 8
    held = next(iter(ShardDataset(out / "test").rows(["path", "tokens"])))
    text = (SLICE.parent / "python3.11" / held["path"].split("/", 1)[1]).read_text()
    assert tok.decode(held["tokens"]) == text  # byte level: exact, indentation included
    odd = "def f(x):\n\tréturn x  # ünïcode ✓ <mask>\n"
    ids = tok.encode(odd)
    assert tok.decode(ids) == odd and tok.mask_id not in ids  # special-token text stays text
    assert len(ids) < len(odd.encode())  # merges learned something
    again = tokenizer_from_dict(json.loads(json.dumps(tok.to_dict())))
    assert np.array_equal(again.encode(text), tok.encode(text))
    assert tok.add_special_tokens(np.array([9, 10])).tolist() == [2, 9, 10, 3]


def test_rerun_is_idempotent(prepared, tree):
    out, m, cfg = prepared
    again = prepare(cfg)
    assert again["stages"]["ran"] == [] and again["splits"] == m["splits"]


def test_pretrain_from_code_shards(prepared, compose, tmp_path):
    from fm_core.train import train

    out, m, _ = prepared
    cfg = compose(["data=code_shards", f"data.dir={out}", "model=tiny", "model.max_length=256", "logger=csv",
                   "trainer.max_steps=8", "trainer.val_check_interval=8", "trainer.enable_progress_bar=false",
                   "data.max_tokens=4096", "data.val_split=test", f"paths.run_dir={tmp_path}"])
    metrics = train(cfg)
    assert metrics["train/steps"] == 8 and metrics["data/train_read"] == m["splits"]["train"]["records"]
    assert metrics["data/val_read"] == m["splits"]["test"]["records"]
    assert np.isfinite(metrics["val/perplexity"]) and metrics["val/unigram_perplexity"] > 50


def test_fim_training_windows_change_every_epoch(prepared, tmp_path):
    """Lightning must reach the FIM sampler's epoch: otherwise every epoch replays epoch 0's crops and
    FIM cuts and the completion model memorises them (train loss 1.2, held-out loss rising)."""
    import functools

    import lightning as L
    import torch

    from code_fm.fim import FIMDataModule
    from fm_core.config import EncoderConfig
    from fm_core.model import MaskedLM
    from fm_core.module import CausalLMModule
    from fm_core.schedules import warmup_decay
    from fm_core.shards import load_tokenizer

    out, _, _ = prepared
    tok = load_tokenizer(out)
    dm = FIMDataModule(tok, str(out), fim_rate=0.5, spm_rate=0.5, max_length=64, max_tokens=4096, seed=0)
    net = MaskedLM(EncoderConfig(vocab_size=tok.vocab_size, num_layers=1, embed_dim=16, num_heads=2,
                                 max_length=64, causal=True, pad_id=tok.pad_id, mask_id=tok.mask_id))
    module = CausalLMModule(net, functools.partial(torch.optim.AdamW, lr=1e-3),
                            functools.partial(warmup_decay, warmup_steps=1, total_steps=100))
    seen: dict[int, list[tuple[int, ...]]] = {}

    class Record(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            rows = [tuple(r[r != tok.pad_id].tolist()) for r in batch["input_ids"]]
            seen.setdefault(trainer.current_epoch, []).extend(rows)

    L.Trainer(max_epochs=2, limit_val_batches=0, logger=False, enable_checkpointing=False,
              enable_progress_bar=False, enable_model_summary=False, callbacks=[Record()],
              default_root_dir=tmp_path).fit(module, datamodule=dm)
    assert set(seen) == {0, 1} and len(seen[0]) == len(seen[1]) > 0
    assert sorted(seen[0]) != sorted(seen[1])


def test_second_corpus_reuses_the_tokenizer_and_keeps_held_out_files_unseen(prepared, tmp_path):
    """A pre-training corpus beside the task's (``--tokenizer`` + ``--exclude``): the same ids, and a
    near-copy of a valid/test file of the task corpus is rejected, counted and named."""
    out, _, _ = prepared
    tok = load_tokenizer(out)
    held = next(iter(ShardDataset(out / "test").rows(["path", "tokens"])))
    train_file = next(iter(ShardDataset(out / "train").rows(["path", "tokens"])))
    root = tmp_path / "pypi"
    (root / "vendored").mkdir(parents=True)
    lines = tok.decode(held["tokens"]).splitlines()
    (root / "vendored" / "copy_of_test.py").write_text("\n".join(lines[:-2] + ["# vendored"]) + "\n")
    (root / "vendored" / "copy_of_train.py").write_text(tok.decode(train_file["tokens"]))  # train: allowed
    (root / "fresh.py").write_text("def add(a, b):\n    return a + b\n\n\nprint(add(1, 2))\n")
    m = prepare(CodePrepConfig(inputs=[str(root)], out=str(tmp_path / "out"), tokenizer=str(out), exclude=[str(out)],
                               valid_fraction=0.0, test_fraction=0.0))
    c = m["counts"]
    assert c["read"] == 3 and c["kept"] == 2 and c["rejected"] == {"held_out_near_duplicate": 1}
    assert c["reject_examples"]["held_out_near_duplicate"] == [f"pypi/vendored/copy_of_test.py ~ test:{held['path']}"]
    assert (tmp_path / "out" / "tokenizer.json").read_text() == (out / "tokenizer.json").read_text()
    kept = {r["path"]: r["tokens"] for r in ShardDataset(tmp_path / "out" / "train").rows(["path", "tokens"])}
    assert kept["pypi/vendored/copy_of_train.py"] == train_file["tokens"]  # same ids as the task corpus
    with pytest.raises(FileNotFoundError, match="--exclude .*: no valid, test, tokenizer.json"):
        prepare(CodePrepConfig(inputs=[str(root)], out=str(tmp_path / "bad"), exclude=[str(tmp_path / "out" / "train")]))
