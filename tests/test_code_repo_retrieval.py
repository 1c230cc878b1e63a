"""Repository-level retrieval: BM25 over the other files of the prompt's repository (its own file
excluded), the retrieved chunks ahead of the prompt within the budget and named by file, bad files
skipped by name, and fm-complete --repo."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tasks.code_completion.evaluate import LineCase
from tasks.code_completion.repo_retrieval import (
    SETTINGS_FILE,
    RepoRetriever,
    chunks_of,
    code_tokens,
    preambles,
    read_repo,
)

BM25 = {"_target_": "tasks.code_completion.repo_retrieval.BM25Ranker"}
SETTINGS = {"chunk_lines": 3, "stride": 2, "query_lines": 2, "top_k": 4, "budget_tokens": 400, "iterations": 1,
            "ranker": BM25}
FILES = {
    "pkg/tokens.py": "def parse_token(stream):\n    return stream.next_token()\n",
    "pkg/parser.py": "from pkg.tokens import parse_token\n\nclass Parser:\n    def run(self, stream):\n"
                     "        tok = parse_token(stream)\n        return tok\n",
    "pkg/unrelated.py": "import os\nprint(os.getcwd())\n",
}


@pytest.fixture(scope="module")
def bpe():
    from code_fm.bpe import train_bpe

    return train_bpe(list(FILES.values()) * 3, vocab_size=300, min_frequency=1)


def test_tokens_and_chunks():
    assert code_tokens("parseToken(HTTP_server2)") == ["parsetoken", "parse", "token", "http_server2", "http",
                                                       "server", "2"]
    chunks = chunks_of("m.py", "a\nb\nc\nd\ne", 3, 2)
    assert [(c.start, c.text) for c in chunks] == [(0, "a\nb\nc"), (2, "c\nd\ne")]
    assert chunks[0].as_context() == "# file: m.py (line 1)\na\nb\nc\n\n"


def test_search_never_returns_the_query_file(bpe):
    r = RepoRetriever(**SETTINGS).index(FILES)
    query = "class Parser:\n    def run(self, stream):\n        tok = parse_token(stream)\n"
    (own_excluded,) = r.search([query], exclude="pkg/parser.py")
    assert own_excluded and all(c.file != "pkg/parser.py" for c in own_excluded)
    assert own_excluded[0].file == "pkg/tokens.py"  # the definition of parse_token ranks first
    (anything,) = r.search([query], exclude="pkg/tokens.py")
    assert anything[0].file == "pkg/parser.py"  # without the exclusion the file itself would win
    pre = r.preamble(own_excluded, bpe)
    assert pre.startswith("# file: ") and pre.rstrip().endswith("stream.next_token()")  # best chunk nearest the prompt
    small = RepoRetriever(**{**SETTINGS, "budget_tokens": len(bpe.encode(own_excluded[0].as_context()))})
    assert small.index(FILES).preamble(own_excluded, bpe) == own_excluded[0].as_context()  # whole chunks within budget


def test_preambles_stay_inside_the_package(bpe):
    names = ["py/pkg/a.py", "py/pkg/b.py", "py/other/c.py"]
    texts = ["def shared_helper():\n    pass\n", "x = shared_helper()\n", "def shared_helper():\n    return 1\n"]
    cases = [LineCase(1, "x = shared_helper()\n", "y", ""), LineCase(0, "def shared_helper():\n", "    pass", "")]
    pre, counts = preambles(SETTINGS, cases, names, texts, bpe)
    assert "# file: py/pkg/a.py" in pre[0] and "other" not in pre[0]  # b.py sees a.py, never c.py (another package)
    assert "py/pkg/a.py" not in pre[1]  # a.py's own text is not retrieved for a.py
    assert counts["retrieved_share"] == 100.0


def test_bad_files_are_skipped_by_name(tmp_path):
    (tmp_path / "good.py").write_text("x = 1\n")
    (tmp_path / "blob.py").write_bytes(b"x\0y")
    (tmp_path / "latin.py").write_bytes(b"s = '\xe9'\n")
    files, skipped = read_repo(str(tmp_path))
    assert list(files) == ["good.py"]
    assert skipped == ["blob.py: binary (NUL byte)", "latin.py: not UTF-8 (invalid byte at offset 5)"]


def test_prompt_puts_the_preamble_ahead_and_cuts_the_prefix_from_the_left(bpe):
    from tasks.code_completion.complete import Completer

    class Any_:
        vocab_size = bpe.vocab_size

    comp = Completer(Any_(), bpe, 64)
    pre = "# file: a.py (line 1)\nx = 1\n\n"
    p = comp.prompt("y = 2\n" * 40, preamble=pre)
    n = len(bpe.encode(pre))
    assert len(p.ids) == 64 and p.ids[1 : 1 + n] == list(map(int, bpe.encode(pre))) and p.truncated_from > 64


def test_fm_complete_repo(bpe, tmp_path, capsys):
    import torch

    from fm_core.config import EncoderConfig
    from fm_core.export import save_pretrained
    from fm_core.model import MaskedLM
    from tasks.code_completion.complete import main

    torch.manual_seed(0)
    net = MaskedLM(EncoderConfig.from_name("tiny", vocab_size=bpe.vocab_size, pad_id=bpe.pad_id, mask_id=bpe.mask_id,
                                           causal=True, max_length=64))
    export = save_pretrained(tmp_path / "m", net, bpe)
    repo = tmp_path / "repo"
    for name, text in FILES.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text)
    (repo / "pkg" / "bad.py").write_bytes(b"\xff\xfe")
    args = ["--checkpoint", str(export), "--repo", str(repo), "--file", str(repo / "pkg/parser.py"), "--line", "5",
            "--max-new-tokens", "3"]
    assert main(args) == 2 and f"no {SETTINGS_FILE}" in capsys.readouterr().err
    old = {k: v for k, v in SETTINGS.items() if k != "ranker"}  # written before rankers were chosen: BM25
    (export / SETTINGS_FILE).write_text(json.dumps(old))
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "skipped pkg/bad.py: not UTF-8" in err and "3 files indexed, 1 skipped" in err


def test_fim_training_windows_carry_chunks_of_the_other_files_in_the_inference_layout(bpe):
    """FIM fine-tuning with retrieved context: the chunks come from the other budget files of the
    record's package (never its own file, never a file outside the budget), within the token budget,
    ahead of the prefix as ``Completer.prompt(preamble=...)`` places them; validation windows get none."""
    import torch

    from code_fm.fim import FIMCollator
    from tasks.code_completion.repo_retrieval import TrainingContext

    names = ["py/pkg/tokens.py", "py/pkg/parser.py", "py/other/c.py", "py/pkg/held_out.py"]
    texts = {0: FILES["pkg/tokens.py"], 1: FILES["pkg/parser.py"], 2: FILES["pkg/unrelated.py"]}  # 3: not in the budget
    context = TrainingContext({**SETTINGS, "budget_tokens": 60, "query_lines": 4}, names, texts, bpe)
    own = context(1, "class Parser:\n    def run(self, stream):\n        tok = parse_token(stream)\n")
    assert own and bpe.decode(own).startswith("# file: py/pkg/tokens.py (line 1)\n") and len(own) <= 60
    assert "class Parser" not in bpe.decode(own)  # the record's own file is never retrieved
    assert context(2, "print(os.getcwd())") == []  # alone in its package: nothing to retrieve
    assert context(0, "   ") == []

    ids = bpe.encode(FILES["pkg/parser.py"])
    always = FIMCollator(bpe, 256, fim_rate=0.0, spm_rate=0.0, context=context, context_rate=1.0, context_tokens=60)
    seq = always.sequence(ids, torch.Generator().manual_seed(0), index=1)
    pre = context(1, bpe.decode(ids[: len(ids) // 2]))
    assert pre and seq == [bpe.bos_id, *pre, *map(int, ids)]  # <cls> R text
    psm = FIMCollator(bpe, 256, fim_rate=1.0, spm_rate=0.0, context=context, context_rate=1.0, context_tokens=60)
    seq = psm.sequence(ids, torch.Generator().manual_seed(3), index=1)
    i_suf = seq.index(bpe.fim_suffix_id)
    assert bpe.decode(seq[1:i_suf]).startswith("# file: py/pkg/tokens.py")  # <fim_prefix> R P <fim_suffix> ...
    assert bpe.decode(seq[i_suf + 1:]).replace("<fim_middle>", "") != ""
    spm = FIMCollator(bpe, 256, fim_rate=1.0, spm_rate=1.0, context=context, context_rate=1.0, context_tokens=60)
    seq = spm.sequence(ids, torch.Generator().manual_seed(3), index=1)
    assert seq[:2] == [bpe.fim_prefix_id, bpe.fim_suffix_id]  # <fim_prefix><fim_suffix> S <fim_middle> R P M
    assert bpe.decode(seq[seq.index(bpe.fim_middle_id) + 1:]).startswith("# file: py/pkg/tokens.py")
    never = FIMCollator(bpe, 256, fim_rate=0.0, spm_rate=0.0, context=context, context_rate=0.0, context_tokens=60)
    assert never.sequence(ids, torch.Generator().manual_seed(0), index=1) == [bpe.bos_id, *map(int, ids)]
    with pytest.raises(ValueError, match="context_tokens"):
        FIMCollator(bpe, 100, fim_rate=0.5, spm_rate=0.5, context=context, context_rate=0.5, context_tokens=60)

    from code_fm.fim import FIMDataModule

    dm = FIMDataModule.__new__(FIMDataModule)  # only the collator choice, no data directory needed
    dm.tokenizer, dm.max_length, dm.fim_rate, dm.spm_rate = bpe, 256, 0.0, 0.0
    dm.context, dm.context_rate, dm.context_tokens = context, 1.0, 60
    assert dm.collator(train=True).context is context and dm.collator(train=False).context is None


@pytest.fixture(scope="module")
def encoder(bpe, tmp_path_factory):
    """A tiny bidirectional encoder export with the fixture's tokenizer (random weights)."""
    import torch

    from fm_core.config import EncoderConfig
    from fm_core.export import save_pretrained
    from fm_core.model import MaskedLM

    torch.manual_seed(0)
    net = MaskedLM(EncoderConfig.from_name("tiny", vocab_size=bpe.vocab_size, pad_id=bpe.pad_id, mask_id=bpe.mask_id,
                                           max_length=64))
    return str(save_pretrained(tmp_path_factory.mktemp("enc") / "enc", net, bpe))


def embedding(model):
    return {"_target_": "tasks.code_completion.repo_retrieval.EmbeddingRanker", "model": model, "layer": -1,
            "max_tokens": 512}


def test_embedding_ranker_finds_the_same_text_first_and_never_the_excluded_file(bpe, encoder):
    from tasks.code_completion.repo_retrieval import EmbeddingRanker

    r = RepoRetriever(**{**SETTINGS, "ranker": embedding(encoder), "query_lines": 3}).index(FILES)
    target = next(c for c in r.chunks if c.file == "pkg/tokens.py")
    (found,) = r.search([target.text], exclude="pkg/parser.py")
    assert found[0] is target  # cosine 1 with itself
    assert len(found) == min(4, sum(c.file != "pkg/parser.py" for c in r.chunks))  # top_k, every score finite
    assert all(c.file != "pkg/parser.py" for c in found)
    (none,) = r.search([target.text], exclude="pkg/tokens.py")
    assert target not in none
    ranker = EmbeddingRanker(model=encoder, layer=-1, max_tokens=512)
    v = ranker.vectors(["x = 1", "", "x = 1"])
    assert v.shape[0] == 3 and np.allclose(np.linalg.norm(v[[0, 2]], axis=1), 1.0) and not v[1].any()
    ranker.fit([c.text for c in r.chunks])
    assert ranker.rank([""], 2, np.ones(len(r.chunks), bool)) == [[]]  # an empty query retrieves nothing
    with pytest.raises(ValueError, match="no model"):
        EmbeddingRanker(model=None, layer=-1, max_tokens=512)


def test_fusion_is_reciprocal_rank_fusion():
    from tasks.code_completion.repo_retrieval import FusionRanker

    class Fixed:
        def __init__(self, order):
            self.order = order

        def fit(self, texts):
            self.n = len(texts)

        def rank(self, queries, k, keep):
            return [[i for i in self.order if keep[i]][:k] for _ in queries]

    f = FusionRanker(rankers=[Fixed([0, 1, 2]), Fixed([2, 3, 0])], k=1, depth=3)
    f.fit(["a", "b", "c", "d"])
    # 1/(1+r): 0 -> 1/2 + 1/4, 1 -> 1/3, 2 -> 1/4 + 1/2, 3 -> 1/3; ties by index
    assert f.rank(["q"], 4, np.ones(4, bool)) == [[0, 2, 1, 3]]
    # chunk 1 excluded: 0 -> 1/2 + 1/4, 2 -> 1/3 + 1/2, 3 -> 1/3
    assert f.rank(["q"], 2, np.array([True, False, True, True])) == [[2, 0]]


def test_an_embedding_rankers_encoder_travels_with_the_export(bpe, encoder, tmp_path):
    """export_settings copies the ranker's encoder beside the model and names it relative to it, so
    fm-complete --repo retrieves the same chunks from the export alone."""
    from tasks.code_completion.repo_retrieval import RepoContext, export_settings, with_model

    settings = with_model({**SETTINGS, "ranker": embedding(None)}, encoder)
    assert settings["ranker"]["model"] == encoder
    export = tmp_path / "export"
    export.mkdir()
    written = export_settings(settings, export)
    assert written["ranker"]["model"] == "ranker_model0" and (export / "ranker_model0" / "model.safetensors").is_file()
    repo = tmp_path / "repo"
    for name, text in FILES.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text)
    prefix = "class Parser:\n    def run(self, stream):\n"
    ctx = RepoContext(str(export), str(repo), bpe)
    direct = RepoRetriever(**settings).index(FILES)
    assert ctx.preamble(prefix, str(repo / "pkg/parser.py")) == direct.preamble(
        direct.search([prefix], exclude="pkg/parser.py")[0], bpe) != ""


def test_fusion_of_real_rankers_on_a_repository_smaller_than_its_depth(bpe, encoder):
    """A fusion asks each ranker for its depth (50) best; BM25 over a 6-chunk repository must not fail."""
    fusion = {"_target_": "tasks.code_completion.repo_retrieval.FusionRanker", "k": 60, "depth": 50,
              "rankers": [BM25, embedding(encoder)]}
    r = RepoRetriever(**{**SETTINGS, "ranker": fusion}).index(FILES)
    assert len(r.chunks) < 50
    query = "class Parser:\n    def run(self, stream):\n        tok = parse_token(stream)\n"
    (found,) = r.search([query], exclude="pkg/parser.py")
    assert found and all(c.file != "pkg/parser.py" for c in found)
    assert found[0].file == "pkg/tokens.py"  # first for BM25, and fused first


def test_only_this_modules_rankers_are_built(tmp_path, bpe, capsys):
    """A settings file naming another callable is refused before anything is imported or called."""
    from tasks.code_completion.complete import main
    from tasks.code_completion.repo_retrieval import make_ranker

    evil = {"_target_": "builtins.print", "_args_": ["called"]}
    with pytest.raises(ValueError, match="choose one of"):
        make_ranker(evil)
    with pytest.raises(ValueError, match="choose one of"):
        RepoRetriever(**{**SETTINGS, "ranker": {"_target_": "tasks.code_completion.repo_retrieval.FusionRanker",
                                                "k": 1, "depth": 1, "rankers": [evil]}})
    from fm_core.config import EncoderConfig
    from fm_core.export import save_pretrained
    from fm_core.model import MaskedLM

    net = MaskedLM(EncoderConfig.from_name("tiny", vocab_size=bpe.vocab_size, pad_id=bpe.pad_id, mask_id=bpe.mask_id,
                                           causal=True, max_length=64))
    export = save_pretrained(tmp_path / "m", net, bpe)
    (export / SETTINGS_FILE).write_text(json.dumps({**SETTINGS, "ranker": evil}))
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "a.py").write_text("x = 1\n")
    assert main(["--checkpoint", str(export), "--repo", str(repo), "--file", str(repo / "a.py")]) == 2
    assert "'builtins.print': choose one of" in capsys.readouterr().err
