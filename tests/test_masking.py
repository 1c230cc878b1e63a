import numpy as np
import pytest
import torch

from fm_core.data import MLMCollator
from fm_core.masking import IGNORE, MaskingConfig, mask_tokens

BERT = MaskingConfig(mask_prob=0.15, mask_token_prob=0.8, random_token_prob=0.1)  # conf/data/uniprot_slice.yaml


def corrupt(alphabet, seqs, seed=0):
    collate = MLMCollator(alphabet, max_length=10_000, masking=BERT)
    return collate([{"ids": alphabet.encode(s), "seed": seed + i, "index": i} for i, s in enumerate(seqs)])


def test_rates_follow_bert_recipe(alphabet, valid_records):
    batch = corrupt(alphabet, [s for _, s in valid_records[:300]])
    x, y = batch["input_ids"], batch["labels"]
    original = torch.where(y != IGNORE, y, x)  # unselected positions are unchanged
    maskable = ~torch.isin(original, torch.as_tensor(alphabet.special_ids))
    selected = y != IGNORE
    n_maskable, n_sel = int(maskable.sum()), int(selected.sum())
    assert n_maskable > 50_000
    assert abs(n_sel / n_maskable - 0.15) < 0.005
    to_mask = (x == alphabet.mask_id) & selected
    unchanged = (x == y) & selected
    randomised = selected & ~to_mask & ~unchanged
    assert abs(int(to_mask.sum()) / n_sel - 0.8) < 0.01
    # random draws can hit the original residue (1/20), which then counts as unchanged
    assert abs(int(unchanged.sum()) / n_sel - (0.1 + 0.1 / 20)) < 0.01
    assert abs(int(randomised.sum()) / n_sel - (0.1 - 0.1 / 20)) < 0.01
    assert set(torch.unique(x[randomised]).tolist()) <= set(alphabet.random_ids.tolist())


def test_specials_and_padding_never_selected(alphabet, valid_records):
    batch = corrupt(alphabet, [s for _, s in valid_records[:64]])
    x, y = batch["input_ids"], batch["labels"]
    special = torch.isin(torch.where(y != IGNORE, y, x), torch.as_tensor(alphabet.special_ids))
    assert (y[special] == IGNORE).all()
    assert (x[:, 0] == alphabet.cls_id).all()
    lengths = (x != alphabet.pad_id).sum(1)
    for row, n in enumerate(lengths.tolist()):
        assert x[row, n - 1] == alphabet.eos_id
        assert (y[row, n:] == IGNORE).all() and (x[row, n:] == alphabet.pad_id).all()
    assert (y[y != IGNORE] >= 4).all()


def test_same_seed_same_corruption_whatever_the_batch(alphabet, valid_records):
    seqs = [s for _, s in valid_records[:8]]
    collate = MLMCollator(alphabet, max_length=300, masking=BERT)
    alone = collate([{"ids": alphabet.encode(seqs[3]), "seed": 123, "index": 3}])
    batch = collate([{"ids": alphabet.encode(s), "seed": 123 if i == 3 else i, "index": i}
                     for i, s in enumerate(seqs)])
    n = int((alone["input_ids"] != alphabet.pad_id).sum())
    assert torch.equal(alone["input_ids"][0, :n], batch["input_ids"][3, :n])
    assert torch.equal(alone["labels"][0, :n], batch["labels"][3, :n])


def test_crop_is_a_window_of_the_record(alphabet):
    seq = "".join(np.random.default_rng(0).choice(list("ACDEFGHIKLMNPQRSTVWY"), 1000))
    collate = MLMCollator(alphabet, max_length=100, masking=MaskingConfig(mask_prob=1e-9, mask_token_prob=0.8, random_token_prob=0.1))
    windows = set()
    for seed in range(20):
        out = collate([{"ids": alphabet.encode(seq), "seed": seed, "index": 0}])["input_ids"][0]
        assert len(out) == 100 and out[0] == alphabet.cls_id and out[-1] == alphabet.eos_id
        window = alphabet.decode(out[1:-1])
        assert window in seq
        windows.add(seq.index(window))
    assert len(windows) > 10  # random offsets


def test_masking_config_validation():
    with pytest.raises(ValueError):
        MaskingConfig(mask_prob=0, mask_token_prob=0.8, random_token_prob=0.1)
    with pytest.raises(ValueError):
        MaskingConfig(mask_prob=0.15, mask_token_prob=0.9, random_token_prob=0.2)


def test_mask_tokens_labels_hold_originals():
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(4, 24, (5000,))
    inputs, labels = mask_tokens(tokens, torch.ones(5000, dtype=torch.bool), mask_id=32,
                                 random_ids=torch.arange(4, 24), generator=g, cfg=BERT)
    sel = labels != IGNORE
    assert torch.equal(labels[sel], tokens[sel])
    assert torch.equal(inputs[~sel], tokens[~sel])
