import esm
import numpy as np
import pytest
import torch

from fm_core.tokenizer import InvalidRecordError, tokenizer_from_dict

# Golden ids, written out so that a change on either side is caught (fair-esm ESM-1b alphabet).
GOLDEN_TOKENS = ["<cls>", "<pad>", "<eos>", "<unk>", "L", "A", "G", "V", "S", "E", "R", "T", "I", "D",
                 "P", "K", "Q", "N", "F", "Y", "M", "H", "W", "C", "X", "B", "U", "Z", "O", ".", "-",
                 "<null_1>", "<mask>"]


def test_tokens_and_specials_match_fair_esm(alphabet):
    ref = esm.Alphabet.from_architecture("ESM-1b")
    assert alphabet.tokens == GOLDEN_TOKENS == ref.all_toks
    assert (alphabet.cls_id, alphabet.pad_id, alphabet.eos_id, alphabet.unk_id, alphabet.mask_id) == (0, 1, 2, 3, 32)
    assert (alphabet.cls_id, alphabet.pad_id, alphabet.eos_id, alphabet.unk_id, alphabet.mask_id) == (
        ref.cls_idx, ref.padding_idx, ref.eos_idx, ref.unk_idx, ref.mask_idx)
    assert alphabet.vocab_size == len(ref) == 33


def test_golden_encoding():
    from bio_fm.alphabet import ProteinAlphabet

    ids = ProteinAlphabet().add_special_tokens(ProteinAlphabet().encode("MKTAYIAKQR"))
    assert ids.tolist() == [0, 20, 15, 11, 5, 19, 12, 5, 15, 16, 10, 2]


def test_real_batch_matches_fair_esm_batch_converter(alphabet, valid_records):
    records = valid_records[:16]
    _, _, ref = esm.Alphabet.from_architecture("ESM-1b").get_batch_converter()(records)
    for row, (_, seq) in enumerate(records):
        ours = alphabet.add_special_tokens(alphabet.encode(seq))
        assert torch.equal(ref[row, : len(ours)], torch.from_numpy(ours))
        assert (ref[row, len(ours):] == alphabet.pad_id).all()


def test_lower_case_stop_mark_and_inline_specials(alphabet):
    assert alphabet.encode("mktAyi*").tolist() == alphabet.encode("MKTAYI").tolist()
    assert alphabet.encode("MK<mask>T").tolist() == [20, 15, 32, 11]
    assert alphabet.decode(alphabet.encode("MKT.-XBUZO")) == "MKT.-XBUZO"


@pytest.mark.parametrize("seq,position,char", [("MKT*LV", 4, "*"), ("MK1", 3, "1"), ("MKé", 3, "é"),
                                               ("MK<mask>T#", 10, "#"), ("AC\x00D", 3, "\x00")])
def test_invalid_character_names_record_and_position(alphabet, seq, position, char):
    with pytest.raises(InvalidRecordError) as err:
        alphabet.encode(seq, record="sp|P1", source="x.fa")
    assert err.value.position == position
    assert "record 'sp|P1'" in str(err.value) and f"position {position}" in str(err.value)
    assert repr(char) in str(err.value) and "x.fa" in str(err.value)


def test_unknown_inline_token(alphabet):
    with pytest.raises(InvalidRecordError, match="unknown token <foo>"):
        alphabet.encode("MK<foo>")


def test_round_trip_through_dict(alphabet):
    again = tokenizer_from_dict(alphabet.to_dict())
    assert again.tokens == alphabet.tokens
    assert np.array_equal(again.encode("MKV"), alphabet.encode("MKV"))


def test_untrusted_tokenizer_module_refused():
    with pytest.raises(ValueError, match="untrusted"):
        tokenizer_from_dict({"kind": "evil", "module": "os"})
