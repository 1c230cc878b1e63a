import gzip

import pytest

from bio_fm.fasta import fasta_dataset
from fm_core.tokenizer import InvalidRecordError


def write(path, text, gz=False):
    data = text.encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


@pytest.mark.parametrize("gz", [False, True])
def test_reads_plain_and_gzip_with_windows_line_endings(tmp_path, alphabet, gz):
    path = write(tmp_path / "a.fa", ">p1 desc\r\nMKTA\r\nyiak*\r\n>p2\r\nLV\r\n", gz=gz)
    ds = fasta_dataset(path, alphabet)
    assert len(ds) == 2 and ds.names == ["p1", "p2"]
    assert ds.array(0).tolist() == alphabet.encode("MKTAYIAK").tolist()
    assert ds.lengths.tolist() == [8, 2]


def test_invalid_record_error_names_file_record_position(tmp_path, alphabet):
    path = write(tmp_path / "bad.fa", ">ok\nMKV\n>broken\nMKV1L\n")
    with pytest.raises(InvalidRecordError) as err:
        fasta_dataset(path, alphabet, on_invalid="error")
    assert "bad.fa" in str(err.value) and "'broken'" in str(err.value) and "position 4" in str(err.value)


def test_skip_policy_counts_every_record(tmp_path, alphabet):
    path = write(tmp_path / "mixed.fa", ">a\nMKV\n>b\nMK1\n>c\n\n>d\nM\n>e\nLLLL\n")
    ds = fasta_dataset(path, alphabet, on_invalid="skip", min_length=2)
    s = ds.stats
    assert (s.read, s.kept) == (5, 2)
    assert dict(s.rejected) == {"invalid": 1, "empty": 1, "too_short": 1}
    assert s.read == s.kept + sum(s.rejected.values())
    assert ds.names == ["a", "e"]


def test_text_before_first_record_is_an_error_naming_the_file(tmp_path, alphabet):
    path = write(tmp_path / "junk.fa", "not fasta\n>a\nMKV\n")
    with pytest.raises(ValueError, match="junk.fa"):
        fasta_dataset(path, alphabet)


def test_truncated_gzip_is_an_error_naming_the_file(tmp_path, alphabet):
    full = gzip.compress(b">a\n" + b"MKV" * 20000 + b"\n")
    path = tmp_path / "cut.fa.gz"
    path.write_bytes(full[: len(full) // 2])
    with pytest.raises(ValueError, match="cut.fa.gz"):
        fasta_dataset(path, alphabet)


def test_missing_file(tmp_path, alphabet):
    with pytest.raises(FileNotFoundError, match="nope.fa"):
        fasta_dataset(tmp_path / "nope.fa", alphabet)
