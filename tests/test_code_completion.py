"""Code foundation model and completion: causal attention, span masking, FIM data, decoding,
baselines, metrics, fm-complete's bad-input handling, and fm-finetune task=code_completion."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from code_fm.fim import FIMCollator
from fm_core.config import EncoderConfig
from fm_core.decoding import NeuralLM, generate, top_p_filter
from fm_core.export import save_pretrained
from fm_core.masking import IGNORE, MaskingConfig, SpanMasking, mask_tokens
from fm_core.model import MaskedLM
from tasks.code_completion import evaluate as ev
from tasks.code_completion.complete import Completer, CompletionError, block_end, decode_source, main
from tasks.code_completion.ngram import NgramLM

CODE = '''import os


class Greeter:
    def __init__(self, name):
        self.name = name

    def greet(self, other):
        return "hello " + other + " from " + self.name

    def shout(self, other):
        return self.greet(other).upper()
'''


@pytest.fixture(scope="module")
def bpe():
    from code_fm.bpe import train_bpe

    return train_bpe([CODE * 3, "def add(a, b):\n    return a + b\n" * 5], vocab_size=400, min_frequency=1)


def causal_net(vocab: int = 50, seed: int = 0) -> MaskedLM:
    torch.manual_seed(seed)
    return MaskedLM(EncoderConfig.from_name("tiny", vocab_size=vocab, pad_id=0, mask_id=4, causal=True)).eval()


def test_causal_attention_ignores_the_future_and_left_padding():
    net = causal_net()
    a = torch.tensor([[5, 6, 7, 8, 9, 10]])
    b = torch.tensor([[5, 6, 7, 30, 31, 32]])
    with torch.no_grad():
        la, lb = net(a)["logits"], net(b)["logits"]
        padded = net(torch.tensor([[0, 0, 5, 6, 7, 8, 9, 10]]))["logits"][:, 2:]
        weights = net(a, need_weights=True)
    assert torch.equal(la[:, :3], lb[:, :3]) and not torch.allclose(la[:, 3:], lb[:, 3:])
    torch.testing.assert_close(padded, la, rtol=1e-5, atol=1e-5)  # rotary is relative: padding is invisible
    torch.testing.assert_close(weights["logits"], la, rtol=1e-5, atol=1e-5)  # explicit path agrees with SDPA
    assert float(weights["attentions"][0, :, :, 0, 1:].abs().max()) == 0.0  # token 0 sees only itself
    # the flag off: the same weights are bidirectional
    bidir = MaskedLM(EncoderConfig.from_dict({**net.config.to_dict(), "causal": False}))
    bidir.load_state_dict(net.state_dict())
    with torch.no_grad():
        assert not torch.allclose(bidir.eval()(a)["logits"][:, :3], bidir(b)["logits"][:, :3])


def test_kv_cache_decoding_matches_full_forward():
    net = causal_net()
    prompts = [[5, 6, 7, 8, 9, 10, 11], [12, 13, 14]]
    res = generate(NeuralLM(net), prompts, max_new_tokens=6)
    for p, got in zip(prompts, res.ids, strict=True):
        seq = list(p)
        for _ in range(6):
            with torch.no_grad():
                seq.append(int(net(torch.tensor([seq]))["logits"][0, -1].argmax()))
        assert got == seq[len(p):]


def test_top_p_keeps_the_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = torch.isfinite(top_p_filter(logits, 0.7))[0].tolist()
    assert kept == [True, True, False, False]
    assert torch.isfinite(top_p_filter(logits, 1.0)).all()


def test_span_masking_covers_whole_identifiers(bpe):
    strategy = SpanMasking(mask_prob=0.3, mean_span=2, max_span=10, whole_words=True,
                           mask_token_prob=0.8, random_token_prob=0.1).for_tokenizer(bpe)
    ids = torch.as_tensor(bpe.encode(CODE * 2).astype(np.int64))
    maskable = torch.ones(len(ids), dtype=torch.bool)
    words = strategy.word_ids(ids)
    # an identifier split by the BPE is one word: "__init__" or "greet" never straddles two
    text = [bpe.decode([int(t)]) for t in ids]
    for w in torch.unique(words)[:200]:
        piece = "".join(text[i] for i in torch.nonzero(words == w).flatten().tolist())
        assert piece.strip() == "" or not any(c.isspace() for c in piece.strip())
    picked = []
    for seed in range(5):
        x, y = strategy(ids, maskable, mask_id=bpe.mask_id, random_ids=torch.as_tensor(bpe.random_ids),
                        generator=torch.Generator().manual_seed(seed))
        sel = y != IGNORE
        for w in torch.unique(words[sel]):  # all or nothing per word
            assert bool(sel[words == w].all())
        assert torch.equal(y[sel], ids[sel])
        picked.append(float(sel.float().mean()))
    assert 0.3 <= np.mean(picked) <= 0.45  # the budget, overshooting by at most a span
    again = strategy(ids, maskable, mask_id=bpe.mask_id, random_ids=torch.as_tensor(bpe.random_ids),
                     generator=torch.Generator().manual_seed(4))
    assert torch.equal(again[1], y)
    # spans are contiguous: far fewer runs than selected tokens
    runs = int((sel[1:] & ~sel[:-1]).sum())
    assert runs < 0.6 * int(sel.sum())


def test_token_masking_strategy_is_the_bert_rule():
    tokens = torch.arange(10, 60)
    maskable = torch.ones(50, dtype=torch.bool)
    kw = dict(mask_id=4, random_ids=torch.arange(5, 60))
    a = MaskingConfig(0.15, 0.8, 0.1)(tokens, maskable, generator=torch.Generator().manual_seed(3), **kw)
    b = mask_tokens(tokens, maskable, generator=torch.Generator().manual_seed(3), cfg=MaskingConfig(0.15, 0.8, 0.1), **kw)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_fim_layout_round_trips_the_window(bpe):
    collate = FIMCollator(bpe, max_length=256, fim_rate=1.0, spm_rate=0.5)
    ids = bpe.encode(CODE)
    layouts = set()
    for seed in range(12):
        seq = collate.sequence(ids, torch.Generator().manual_seed(seed))
        assert seq[0] == bpe.fim_prefix_id and seq[-1] == bpe.eos_id
        i_suf, i_mid = seq.index(bpe.fim_suffix_id), seq.index(bpe.fim_middle_id)
        if i_suf == 1:  # SPM: <pre><suf> S <mid> P M
            layouts.add("spm")
            s, pm = bpe.decode(seq[2:i_mid]), bpe.decode(seq[i_mid + 1 : -1])
            assert pm + s == CODE
        else:  # PSM: <pre> P <suf> S <mid> M
            layouts.add("psm")
            p, s, m = bpe.decode(seq[1:i_suf]), bpe.decode(seq[i_suf + 1 : i_mid]), bpe.decode(seq[i_mid + 1 : -1])
            assert p + m + s == CODE
    assert layouts == {"psm", "spm"}
    batch = FIMCollator(bpe, 256, fim_rate=0.0, spm_rate=0.5)([{"ids": ids, "seed": 1, "index": 0}])
    x, y = batch["input_ids"][0], batch["labels"][0]
    assert x[0] == bpe.bos_id and torch.equal(y[:-1], x[1:]) and y[-1] == IGNORE


def test_fim_tokenizer_is_a_type_and_the_task_takes_every_option_from_its_yaml(bpe, alphabet, compose):
    import inspect

    from hydra.utils import instantiate

    from code_fm.fim_format import FIMTokenizer
    from tasks.code_completion.task import CodeCompletionTask

    assert isinstance(bpe, FIMTokenizer) and not isinstance(alphabet, FIMTokenizer)
    params = inspect.signature(CodeCompletionTask).parameters.values()
    assert all(p.kind is p.KEYWORD_ONLY and p.default is p.empty for p in params)  # no second default
    cfg = compose(["task=code_completion"], config_name="finetune").task
    task = instantiate({k: v for k, v in cfg.items() if k != "name"}, _recursive_=False)
    assert {p.name for p in params} == set(cfg) - {"name", "_target_"} and task.max_length == 256
    from fm_core.config import ConfigError

    options = {k: v for k, v in cfg.items() if k not in ("name", "_target_")}
    with pytest.raises(ConfigError, match="task.retrieval_train_rate=1.5"):
        CodeCompletionTask(**{**options, "retrieval_train_rate": 1.5})
    with pytest.raises(ConfigError, match="task.rerank_candidates=-1"):
        CodeCompletionTask(**{**options, "rerank_candidates": -1})
    with pytest.raises(ConfigError, match=r"gate_prompts >= 1 .*got 0"):
        CodeCompletionTask(**{**options, "rerank_candidates": 8, "gate_prompts": 0, "retrieval": False})
    assert CodeCompletionTask(**{**options, "repo_retrieval": None}).training_context(bpe, None, None) == {}


def test_ngram_counts_and_backoff():
    lm = NgramLM(vocab_size=16, order=3, backoff=0.4).fit([np.array([5, 6, 7, 5, 6, 8])], boundary=2)
    s = lm.scores([5, 6])
    assert s[7] == pytest.approx(0.5) and s[8] == pytest.approx(0.5)  # count(5 6 x) / count(5 6)
    s = lm.scores([9, 6])  # unseen trigram context: bigram "6 x", one order down
    assert s[7] == pytest.approx(0.4 * 0.5)
    assert s[5] == pytest.approx(0.4 * 0.4 * lm.unigram[5])
    with pytest.raises(ValueError, match="int64"):
        NgramLM(vocab_size=8192, order=5)


def test_copy_line_metrics_and_block_end():
    prefix = "a = f(1)\nb = g(a)\nx = 3\na = f(2)\n"
    assert ev.copy_line(prefix) == "b = g(a)"  # follows the line most like "a = f(2)"
    assert ev.copy_line("only\n") == ""
    scores = ev.line_scores(["  return x", "foo"], ["return x", "bar"])
    assert scores == {"exact_match": 50.0, "edit_sim": 50.0}
    assert ev.parses("def f(x):", "    y = x\n    return y") and not ev.parses("def f(x):", "    return (")
    assert block_end("def f(x):", "\n    y = 1\n    return y\nz = 2\n") == len("\n    y = 1\n    return y")
    assert block_end("    ", "if a:\n        b\n    c\n") == len("if a:\n        b")  # the block the line opens
    assert block_end("    ", "x = 1\n    y = 2\nz\n") == len("x = 1\n    y = 2")
    assert block_end("def f(x):", "\n    y = 1\n    ret") is None


def test_paired_bootstrap_of_two_systems_on_the_same_prompts():
    per = ev.per_prompt_scores(["return x", "foo", "a"], ["return x", "bar", "ab"])
    assert per["exact_match"].tolist() == [100.0, 0.0, 0.0] and per["edit_sim"][2] == pytest.approx(100 * 2 / 3)
    a, b = np.array([100.0, 0, 100, 0]), np.array([0.0, 0, 100, 0])
    boot = ev.paired_bootstrap(a, b, n=4000, seed=1)
    assert boot["mean"] == 25.0 and 0.0 <= boot["ci95_low"] < 25.0 < boot["ci95_high"] <= 100.0
    assert boot["ci95_low"] == 0.0  # a resample without prompt 0 has no difference
    same = ev.paired_bootstrap(a + 5, a)  # a constant gain of 5 points: no spread at all
    assert same == {"mean": 5.0, "ci95_low": 5.0, "ci95_high": 5.0}


def test_line_and_function_cases_are_golden():
    texts = [CODE]
    cases = ev.line_cases(texts, 100, seed=0)
    assert len(cases) == 7  # every non-blank line but the first
    for c in cases:
        assert c.prefix + c.target + c.suffix == CODE and c.prefix.endswith("\n")
    funcs = ev.function_cases(texts, 10, seed=0)
    assert [f.header.strip() for f in funcs] == []  # every method here has a one-line body
    more = CODE + "\n    def two(self):\n        a = 1\n        return a\n"
    (f,) = ev.function_cases([more], 10, seed=0)
    assert f.header.strip() == "def two(self):" and more[: len(f.prefix)].endswith("def two(self):")


class Scripted:
    """A NextTokenModel that emits a fixed token sequence (for stop/healing tests)."""

    def __init__(self, vocab: int, script: list[int]):
        self.vocab_size, self.script, self.t, self.seen = vocab, script, 0, []

    def _next(self) -> torch.Tensor:
        out = torch.full((1, self.vocab_size), -10.0)
        out[0, self.script[min(self.t, len(self.script) - 1)]] = 10.0
        self.t += 1
        return out

    def start(self, prompts):
        self.seen = prompts
        self.t = 0
        return self._next()

    def step(self, tokens):
        return self._next()


def test_completer_heals_the_last_token_and_stops_at_line_end(bpe):
    target = "        return a\n    x"
    script = list(map(int, bpe.encode("\n" + target)))
    comp = Completer(Scripted(bpe.vocab_size, script), bpe, context=64)
    prompt = comp.prompt("def f(a):\n")
    assert prompt.healed == "\n" and prompt.ids[0] == bpe.bos_id
    (c,) = comp.complete([prompt], mode="line")
    assert c.text == "        return a" and c.stopped == "stop"
    long = comp.prompt("x = 1\n" * 200)
    assert long.truncated_from > 64 and len(long.ids) == 64
    fim = comp.prompt("def f(a):\n", "\n    return a\n")
    assert fim.ids[0] == bpe.fim_prefix_id and fim.ids[-1] == bpe.fim_middle_id
    with pytest.raises(CompletionError, match="empty prompt"):
        comp.prompt("  \n")


def test_statement_stop_closes_brackets_strings_and_continuations(bpe):
    from tasks.code_completion.complete import LineState, open_brackets, statement_end

    assert open_brackets("x = foo(a,\n    [b, '(',  # (\n") == LineState(2)  # strings and comments hold none
    assert open_brackets("def f():\n    return 1\n") == LineState() and open_brackets("x = (1))\n") == LineState()
    assert open_brackets('log.info("hello') == LineState(1, '"')  # the cursor inside a string
    assert open_brackets('def f():\n    """Doc\n') == LineState(0, '"""')
    assert open_brackets("x = 1  # note") == LineState(0, "#") and open_brackets("y = 1 + \\") == LineState(0, "", True)
    assert statement_end("x = 1\ny = 2\n") == 5
    assert statement_end("foo(a,\n    b)\nz\n") == len("foo(a,\n    b)")
    assert statement_end("b)\nz\n", LineState(1)) == 2  # closes the bracket the prefix opened
    assert statement_end("c,\n    d)\n", LineState(2)) is None
    assert statement_end(' world")\n    x = 1\n', LineState(1, '"')) == len(' world")')  # closes the string, then ()
    assert statement_end('more.\n    """\n    x = 1\n', LineState(0, '"""')) == len('more.\n    """')
    assert statement_end(" more\nx = 1\n", LineState(0, "#")) == len(" more")
    assert statement_end("\n    2\nz", LineState(0, "", True)) == len("\n    2")  # after a trailing backslash
    assert statement_end("s = ')\\n' + '''a\nb'''\nz") == len("s = ')\\n' + '''a\nb'''")
    assert statement_end("y = 1 + \\\n    2\nz") == len("y = 1 + \\\n    2")
    assert statement_end("y = 1 + \\\r\n    2\r\nz") == len("y = 1 + \\\r\n    2")  # CRLF
    assert statement_end("y = [1,  # ]\n 2]\n") == len("y = [1,  # ]\n 2]")
    assert statement_end("return (a") is None
    script = list(map(int, bpe.encode("\n    return foo(a,\n        b)\n    x = 1\n")))
    comp = Completer(Scripted(bpe.vocab_size, script), bpe, context=64)
    (c,) = comp.complete([comp.prompt("def f(a, b):\n")], mode="statement")
    assert c.text == "    return foo(a,\n        b)" and c.stopped == "stop"
    (c,) = comp.complete([comp.prompt("def f(a, b):\n")], mode="line")
    assert c.text == "    return foo(a,"
    comp = Completer(Scripted(bpe.vocab_size, list(map(int, bpe.encode("\n        b)\n    x = 1\n")))), bpe, context=64)
    (c,) = comp.complete([comp.prompt("def f(a, b):\n    return foo(a,\n")], mode="statement")
    assert c.text == "        b)"  # the bracket the prefix opened is counted
    inline = comp.prompt("def f(a, b):\n    return foo(a,\n", ")\n")  # an editor's auto-closed bracket after the cursor
    assert inline.inline and not comp.prompt("def f(a, b):\n    return foo(a,\n", "\n    pass\n").inline


def test_bad_sources_are_refused():
    with pytest.raises(CompletionError, match="binary"):
        decode_source(b"x = 1\0\0", "file a.py")
    with pytest.raises(CompletionError, match="not UTF-8.*offset 4"):
        decode_source(b"x = \xe9\n", "file a.py")


def test_fm_complete_cli_errors_and_completion(bpe, tmp_path, capsys, monkeypatch):
    import io
    import sys

    net = MaskedLM(EncoderConfig.from_name("tiny", vocab_size=bpe.vocab_size, pad_id=bpe.pad_id,
                                           mask_id=bpe.mask_id, causal=True, max_length=64))
    good = save_pretrained(tmp_path / "good", net, bpe)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"def add(a, b):\n    return\n")))
    assert main(["--checkpoint", str(good), "--max-new-tokens", "5"]) == 0
    out = capsys.readouterr()
    assert out.out.endswith("\n") and "fm-complete:" not in out.err
    # a masked LM (not adapted), an unknown tokenizer, a binary file, an empty prompt
    mlm = save_pretrained(tmp_path / "mlm", MaskedLM(EncoderConfig.from_dict({**net.config.to_dict(), "causal": False})), bpe)
    bad = save_pretrained(tmp_path / "bad", net, bpe)
    spec = json.loads((bad / "config.json").read_text())
    spec["tokenizer"]["kind"] = "no_such_tokenizer"
    (bad / "config.json").write_text(json.dumps(spec))
    (tmp_path / "blob.py").write_bytes(b"\0\1\2")
    (tmp_path / "empty.py").write_text("")
    for args, message in ((["--checkpoint", str(good), "--file", str(tmp_path / "empty.py")], "empty prompt"),
                          (["--checkpoint", str(mlm), "--file", str(good / "config.json")], "masked LM"),
                          (["--checkpoint", str(bad), "--file", str(good / "config.json")], "no_such_tokenizer"),
                          (["--checkpoint", str(good), "--file", str(tmp_path / "blob.py")], "binary"),
                          (["--checkpoint", str(tmp_path / "nope"), "--file", str(good / "config.json")], "no such")):
        assert main(args) == 2
        assert message in capsys.readouterr().err


def test_retrieval_finds_the_line_and_scores_it_like_the_decoder(bpe):
    """The retrieved line (golden), and line_logprobs equal to token-by-token scoring through the
    KV-cache decoder, with and without cutting the prompt to fit the context."""
    from tasks.code_completion import retrieval

    cursor = CODE.index("        return self.greet")
    line, sim = retrieval.retrieve(CODE[:cursor])  # "def shout(self, other):" ~ "def greet(...)": LCS of shout/greet is "t", indel 8 of 46
    assert line == '        return "hello " + other + " from " + self.name' and sim == pytest.approx(100 * (1 - 8 / 46), abs=1e-4)
    assert retrieval.continuation(CODE[:cursor] + "        return ") == ('"hello " + other + " from " + self.name', sim)
    assert retrieval.continuation(CODE[:cursor] + "        x") == ("", sim)  # typed text disagrees
    assert retrieval.retrieve("x = 1\n") == ("", 0.0)
    net = causal_net(bpe.vocab_size, seed=3)
    newline = [i for i in range(bpe.vocab_size) if bpe.decode([i]).startswith("\n")]
    for context in (256, 40):
        comp = Completer(NeuralLM(net), bpe, context)
        prompt = comp.prompt(CODE[:cursor])
        got = retrieval.line_logprobs(comp, [prompt, prompt], [line, ""])
        for (score, n), text in zip(got, (line, ""), strict=True):
            ids = list(map(int, bpe.encode(prompt.healed + text)))  # the healed token is always scored
            keep = context - len(ids) - 1
            ctx = [bpe.bos_id, *prompt.ids[1:][-keep:]]
            lm = NeuralLM(net)
            logp = lm.start([ctx]).log_softmax(-1)[0]
            ref = 0.0
            for t in ids:
                ref += float(logp[t])
                logp = lm.step(torch.tensor([t])).log_softmax(-1)[0]
            ref += float(torch.logsumexp(logp[newline], 0))
            assert n == len(ids) and score == pytest.approx(ref, abs=1e-3) and len(ctx) + n <= context
        assert got[1][1] == 1 and got[0][0] < got[1][0]  # a whole line is less likely than ending at once


def test_retrieval_gate_fits_decides_and_round_trips(tmp_path):
    from tasks.code_completion.retrieval import FEATURES, GATE_FILE, RetrievalGate

    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, len(FEATURES))) * 10 + 50
    gain = (X[:, 0] - 50) * 2 - (X[:, 7] - 50) + rng.normal(size=300)  # similarity for, agreement against
    gate = RetrievalGate.fit(X, gain)
    truth = (X[:, 0] - 50) * 2 - (X[:, 7] - 50) > 0
    assert (gate.take_retrieved(X) == truth).mean() > 0.95
    again = RetrievalGate.load(gate.save(tmp_path).parent)
    assert np.array_equal(again.take_retrieved(X), gate.take_retrieved(X)) and again.fitted_on == 300
    spec = json.loads((tmp_path / GATE_FILE).read_text())
    (tmp_path / GATE_FILE).write_text(json.dumps({**spec, "features": ["other"]}))
    with pytest.raises(ValueError, match="features"):
        RetrievalGate.load(tmp_path)
    with pytest.raises(FileNotFoundError, match="no retrieval_gate.json"):
        RetrievalGate.load(tmp_path / "nowhere")
    with pytest.raises(ValueError, match=">= 10 rows"):
        RetrievalGate.fit(X[:5], gain[:5])


def test_code_quick_experiment_selects_whole_identifier_span_masking(compose):
    from hydra.utils import instantiate

    cfg = compose(["experiment=code_quick"])
    strategy = instantiate(cfg.data.masking)
    assert isinstance(strategy, SpanMasking) and strategy.whole_words and strategy.mask_prob == 0.15
    assert cfg.model.size == "mini" and cfg.data._target_.endswith("ShardDataModule")
    pypi = compose(["experiment=code_pypi"])  # code_quick's recipe on the larger pre-training corpus
    assert pypi.data.dir == "data/code_pypi" and pypi.data.masking == cfg.data.masking and pypi.model == cfg.model
    assert pypi.trainer.max_steps == 10000 and pypi.trainer.limit_val_batches == 60


@pytest.mark.slow
def test_pretrain_then_code_completion_end_to_end(compose, tmp_path, capsys):
    """fm-prep code -> fm-pretrain (span masking) -> fm-finetune task=code_completion -> fm-complete."""
    from pathlib import Path

    from data_prep.code import CodePrepConfig, prepare
    from fm_core.finetune import finetune
    from fm_core.train import train

    src = Path(__file__).parent / "data" / "code" / "python3.11"
    data = tmp_path / "code"
    prepare(CodePrepConfig(inputs=[str(src)], out=str(data), vocab_size=600, valid_fraction=0.2, test_fraction=0.2))
    pre = train(compose(["experiment=code_quick", f"data.dir={data}", "model=tiny", "model.max_length=128",
                         "logger=csv", "trainer.max_steps=6", "trainer.val_check_interval=6",
                         "trainer.enable_progress_bar=false", "data.max_tokens=1024", f"paths.run_dir={tmp_path / 'pre'}"]))
    assert np.isfinite(pre["val/perplexity"])
    cfg = compose(["task=code_completion", f"task.data_dir={data}", f"model.init_from={tmp_path / 'pre' / 'export'}",
                   "task.max_length=128", "task.max_tokens=1024", "task.steps=4", "task.line_prompts=60",
                   "task.fim_prompts=20", "task.functions=8", "task.ngram_order=3", "logger=csv",
                   "task.decoding_prompts=10", "task.humaneval.problems=3", "task.humaneval.samples=2",
                   "task.humaneval.ks=[1]", "task.rerank_candidates=4", "trainer.enable_progress_bar=false",
                   f"paths.run_dir={tmp_path / 'ft'}"],
                  config_name="finetune")
    metrics = finetune(cfg)
    # HumanEval on a 3-problem subset: the harness passes its canonical solutions, every system scored
    assert metrics["humaneval/canonical_pass"] == 100.0
    assert all(0 <= metrics[f"humaneval/pass@1/{s}"] <= 100 for s in ("model", "random_init"))
    on_disk = json.loads((tmp_path / "ft" / "metrics.json").read_text())
    assert on_disk["data/line_prompts"] == 60 and on_disk["data/fim_prompts"] == 20
    for system in ("model", "random_init", "ngram3", "copy_line"):
        assert 0 <= on_disk[f"line/exact_match/{system}"] <= 100 and 0 <= on_disk[f"line/edit_sim/{system}"] <= 100
    # copy-line is deterministic: the task's figure equals a direct computation on the same cases
    from fm_core.shards import ShardDataset, load_tokenizer
    from tasks.code_completion import evaluate as ev

    tok = load_tokenizer(data)
    test = ShardDataset(data / "test")
    texts = [tok.decode(test.array(i)) for i in range(len(test))]
    cases = ev.line_cases(texts, 60, 0)
    direct = ev.line_scores([ev.copy_line(c.prefix) for c in cases], [c.target for c in cases])
    assert metrics["line/edit_sim/copy_line"] == pytest.approx(direct["edit_sim"])
    assert metrics["model/fim_val_loss"] < np.log(tok.vocab_size)  # it learned something
    assert "system" in capsys.readouterr().out  # the printed table
    assert main(["--checkpoint", metrics["export"], "--file", str(src / "heapq.py"), "--line", "5"]) == 0
    # retrieval-augmented systems: scored beside the others, the model's gate exported for fm-complete
    for system in ("model+retrieval", "random_init+retrieval"):
        assert 0 <= on_disk[f"line/edit_sim/{system}"] <= 100 and 0 <= on_disk[f"retrieval/taken/{system.split('+')[0]}"] <= 100
    assert on_disk["data/gate_prompts"] > 0 and (Path(metrics["export"]) / "retrieval_gate.json").is_file()
    # candidate reranking: every system and the scorer without a language model, on the same prompts
    for system in ("model+rerank", "random_init+rerank", "ngram3+rerank", "copy_line+rerank"):
        assert 0 <= on_disk[f"line/edit_sim/{system}"] <= 100
    assert on_disk["data/rerank_fit_prompts"] > 0 and "beats_baselines_rerank/line/edit_sim" in on_disk
    assert main(["--checkpoint", metrics["export"], "--file", str(src / "heapq.py"), "--line", "9", "--column", "0",
                 "--rerank"]) == 0  # with the scorer the run exported
    capsys.readouterr()
    assert main(["--checkpoint", metrics["export"], "--file", str(src / "heapq.py"), "--line", "9", "--column", "0",
                 "--retrieval"]) == 0
    # every system's line completions, and the paired comparison of the twins on the same prompts
    rows = [json.loads(x) for x in (tmp_path / "ft" / "line_predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 60 and [r["target"] for r in rows] == [c.target for c in cases]
    assert [r["copy_line"] for r in rows] == [ev.copy_line(c.prefix) for c in cases]
    assert ev.line_scores([r["model"] for r in rows], [c.target for c in cases])["edit_sim"] == pytest.approx(
        on_disk["line/edit_sim/model"])
    for a, b in (("model", "random_init"), ("model+retrieval", "random_init+retrieval")):
        key = f"paired/line/edit_sim/{a}-{b}"
        assert on_disk[f"{key}/mean"] == pytest.approx(on_disk[f"line/edit_sim/{a}"] - on_disk[f"line/edit_sim/{b}"])
        assert on_disk[f"{key}/ci95_low"] <= on_disk[f"{key}/mean"] <= on_disk[f"{key}/ci95_high"]
    assert main(["--checkpoint", metrics["export"], "--mode", "block", "--retrieval", "--file", str(src / "heapq.py")]) == 2
    assert "--retrieval works in --mode line" in capsys.readouterr().err
