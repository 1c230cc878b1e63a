import numpy as np
import pytest

from fm_core.data import SequenceDataset, TokenBudgetBatchSampler


@pytest.fixture(scope="module")
def real_lengths(slice_dir):
    """Token lengths of the embedded UniProt training slice, cropped at 512 as training does."""
    from bio_fm.alphabet import ProteinAlphabet
    from bio_fm.fasta import fasta_dataset

    ds = fasta_dataset(slice_dir / "train.fasta.gz", ProteinAlphabet())
    return np.minimum(ds.lengths + 2, 512)


def test_budget_respected_and_each_sample_once(real_lengths):
    sampler = TokenBudgetBatchSampler(real_lengths, 8192, seed=3)
    seen = []
    for batch in sampler:
        idx = [i for i, _ in batch]
        assert len(idx) * real_lengths[idx].max() <= 8192
        seen += idx
    assert sorted(seen) == list(range(len(real_lengths)))


def test_padding_waste_small_on_real_lengths(real_lengths):
    sampler = TokenBudgetBatchSampler(real_lengths, 8192, seed=0)
    bucketed = sampler.padding_fraction()
    # the same number of batches filled at random (no bucketing) wastes a large share
    rng = np.random.default_rng(0)
    chunks = np.array_split(rng.permutation(len(real_lengths)), len(sampler))
    naive = 1 - sum(real_lengths[c].sum() for c in chunks) / sum(len(c) * real_lengths[c].max() for c in chunks)
    assert bucketed < 0.02
    assert naive > 0.25


def test_epochs_reshuffle_but_keep_batch_count(real_lengths):
    sampler = TokenBudgetBatchSampler(real_lengths, 8192, seed=0)
    first = [tuple(i for i, _ in b) for b in sampler]
    sampler.set_epoch(1)
    second = [tuple(i for i, _ in b) for b in sampler]
    assert len(first) == len(second) and first != second
    sampler.set_epoch(0)
    assert [tuple(i for i, _ in b) for b in sampler] == first  # deterministic per (seed, epoch)


def test_sample_seeds_change_per_epoch_in_training_only(real_lengths):
    train = TokenBudgetBatchSampler(real_lengths, 8192, seed=0)
    val = TokenBudgetBatchSampler(real_lengths, 8192, shuffle=False, seed=0)
    seeds = lambda s: dict(x for b in s for x in b)  # noqa: E731
    t0, v0 = seeds(train), seeds(val)
    train.set_epoch(1)
    val.set_epoch(1)
    assert seeds(train) != t0
    assert seeds(val) == v0


def test_ranks_partition_batches(real_lengths):
    samplers = [TokenBudgetBatchSampler(real_lengths, 8192, seed=0, num_replicas=3, rank=r) for r in range(3)]
    single = TokenBudgetBatchSampler(real_lengths, 8192, seed=0)
    per_rank = [[i for b in s for i, _ in b] for s in samplers]
    assert len({len(s) for s in samplers}) == 1  # ranks step together
    union = sum(per_rank, [])
    assert len(union) == len(set(union))  # nothing seen twice across ranks
    assert len(single) - 3 < sum(len(s) for s in samplers) <= len(single)


def test_rejects_budget_below_longest():
    with pytest.raises(ValueError, match="max_tokens"):
        TokenBudgetBatchSampler(np.array([10, 600]), 512)


def test_dataset_keys_and_seed(alphabet):
    from fm_core.data import ReadStats

    arrays = [alphabet.encode("MKV"), alphabet.encode("LLLLL")]
    ds = SequenceDataset(arrays, ["a", "b"], ReadStats("mem"))
    assert ds[(1, 99)]["seed"] == 99 and ds[1]["ids"].tolist() == arrays[1].tolist()
    assert ds.token_counts(33)[alphabet.index["L"]] == 5


def test_evaluation_ranks_cover_every_sample_once(real_lengths):
    samplers = [TokenBudgetBatchSampler(real_lengths, 8192, shuffle=False, num_replicas=3, rank=r) for r in range(3)]
    union = [i for s in samplers for b in s for i, _ in b]
    assert sorted(union) == list(range(len(real_lengths)))  # nothing trimmed, nothing twice
