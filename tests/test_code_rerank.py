"""Candidate reranking: retrieval proposes the lines after the most similar earlier lines, each
system adds its own, a scorer fitted on other prompts chooses; the n-gram scores lines as the
neural scorer does."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.code_completion import rerank


def test_proposals_rank_by_similarity_dedupe_and_count_votes():
    text = ("x = load(a)\ny = 1\n"        # anchor "x = load(a)" -> "y = 1"
            "x = load(b)\ny = 2\n"        # "x = load(b)" -> "y = 2"
            "z = other()\ny = 1\n"
            "x = load(b)\ny = 2\n"        # the most recent of the best anchors
            "x = load(b)\n")              # the cursor's previous line
    got = rerank.proposals(text, 3)
    assert [p[0] for p in got] == ["y = 2", "y = 1", "x = load(b)"]
    assert got[0][1] == 100.0 and got[0][2] == 0 and got[0][3] == 2  # two of the best 6 anchors propose it
    assert [p[2] for p in got] == [0, 1, 2]
    assert rerank.proposals("only one line\n", 3) == []


def test_proposals_continue_typed_code():
    text = "if a:\n    return f(a)\nif b:\n    return g(b)\nif c:\n    ret"
    got = rerank.proposals(text, 4)
    assert [p[0] for p in got] == ["urn g(b)", "urn f(a)"]  # the rest of each retrieved line after "ret"


def test_candidate_sets_merge_the_own_line_with_an_equal_proposal():
    text = "a = 1\nb = 2\na = 1\n"
    (cands,) = rerank.candidate_sets([text], ["b = 2"], 3)
    assert cands[0] == ("b = 2", 100.0, 0, 1, True)  # the proposal's retrieval features go to the own line
    assert all(not c[4] for c in cands[1:]) and "b = 2" not in [c[0] for c in cands[1:]]
    (alone,) = rerank.candidate_sets([text], ["zzz"], 3)
    assert alone[0] == ("zzz", 0.0, 3, 0, True)


def test_features_are_relative_to_the_best_candidate():
    cands = [("own", 0.0, 3, 0, True), ("x = 1", 90.0, 0, 2, False)]
    X = rerank.features(cands, "own", [(-4.0, 3), (-2.0, 1)])
    f = {name: X[:, i] for i, name in enumerate(rerank.FEATURES)}
    assert f["logp_minus_best"].tolist() == [-2.0, 0.0]
    assert f["mean_logp"].tolist() == [-1.0, -1.0] and f["mean_logp_minus_best"].tolist() == [0.0, 0.0]
    assert f["own"].tolist() == [1.0, 0.0] and f["agreement"][0] == 100.0 and f["votes"].tolist() == [0, 2]
    assert not rerank.features(cands, "own", None)[:, 7:].any()  # no language model: zeros


def test_reranker_learns_which_candidate_to_trust():
    """Where the true line is always the candidate of highest log-probability (not the most similar
    anchor), the fitted scorer picks it on new prompts; without the LM columns it cannot."""
    rng = np.random.default_rng(0)

    def group():
        lp = rng.normal(-10, 3, size=5)
        sim = rng.uniform(50, 100, size=5)
        X = np.zeros((5, len(rerank.FEATURES)))
        X[:, 0], X[:, 7], X[:, 9] = sim, lp, lp - lp.max()
        gain = np.where(lp == lp.max(), 100.0, 20.0)
        return X, gain

    fit = [group() for _ in range(80)]
    test = [group() for _ in range(50)]
    lm = rerank.Reranker(rerank.FEATURES).fit(np.concatenate([x for x, _ in fit]), np.concatenate([g for _, g in fit]))
    picks = lm.choose([x for x, _ in test])
    assert np.mean([g[p] == 100.0 for (_, g), p in zip(test, picks, strict=True)]) > 0.9
    blind = rerank.Reranker(rerank.RETRIEVAL_ONLY).fit(np.concatenate([x for x, _ in fit]),
                                                       np.concatenate([g for _, g in fit]))
    assert np.mean([g[p] == 100.0 for (_, g), p in zip(test, blind.choose([x for x, _ in test]), strict=True)]) < 0.5
    assert lm.choose([np.zeros((0, len(rerank.FEATURES)))]) == [-1]
    with pytest.raises(ValueError, match=">= 20"):
        rerank.Reranker().fit(np.zeros((3, len(rerank.FEATURES))), np.zeros(3))


def test_ngram_line_logprobs_by_hand():
    """The n-gram's log p(line, end of line | prompt) is the sum of its normalised next-token
    log-probabilities plus the log of the newline mass after the line."""
    from code_fm.bpe import train_bpe
    from tasks.code_completion.complete import Completer
    from tasks.code_completion.ngram import NgramLM

    corpus = ["a = 1\nb = 2\n", "a = 1\nc = 3\n"] * 5
    bpe = train_bpe(corpus, vocab_size=280, min_frequency=1)
    lm = NgramLM(bpe.vocab_size, 3).fit([np.asarray(bpe.encode(t)) for t in corpus], bpe.bos_id)
    comp = Completer(lm, bpe, 64)
    prompt = comp.prompt("a = 1\n")
    ((total, n),) = lm.line_logprobs(comp, [prompt], ["b = 2"])
    ids = list(map(int, bpe.encode(prompt.healed + "b = 2")))
    ctx, want = list(prompt.ids), 0.0
    for t in ids:
        s = lm.scores(ctx)
        want += np.log(s[t] / s.sum())
        ctx.append(t)
    s = lm.scores(ctx)
    newline = np.array([x.startswith("\n") for x in comp.texts])
    want += np.log(s[newline].sum() / s.sum())
    assert n == len(ids) > 0 and total == pytest.approx(want)
    ((seen, _), (unseen, _)) = lm.line_logprobs(comp, [prompt, prompt], ["b = 2", "zz zz zz"])
    assert seen > unseen  # a line of the corpus is likelier than one it never saw


def test_evaluate_rerank_picks_among_each_systems_candidates_and_compares_them():
    """Every system's chosen line is one of its candidates (its own line or a retrieved one), the
    scorer without a language model is scored beside them, and the comparisons pair the same prompts."""
    import torch

    from code_fm.bpe import train_bpe
    from fm_core.config import EncoderConfig
    from fm_core.decoding import NeuralLM
    from fm_core.model import MaskedLM
    from tasks.code_completion.complete import Completer
    from tasks.code_completion.evaluate import line_cases
    from tasks.code_completion.ngram import NgramLM
    from tasks.code_completion.task import rerank_comparisons

    files = [f"def f{i}(x):\n    y = x + {i}\n    return y\n\n" * 3 + f"z{i} = f{i}({i})\nprint(z{i})\n"
             for i in range(12)]
    bpe = train_bpe(files, vocab_size=300, min_frequency=1)
    torch.manual_seed(0)
    net = MaskedLM(EncoderConfig.from_name("tiny", vocab_size=bpe.vocab_size, pad_id=bpe.pad_id, mask_id=bpe.mask_id,
                                           causal=True, max_length=128)).eval()
    ngram = NgramLM(bpe.vocab_size, 3).fit([np.asarray(bpe.encode(t)) for t in files[:8]], bpe.bos_id)
    completers = {"model": Completer(NeuralLM(net), bpe, 128), "ngram3": Completer(ngram, bpe, 128)}
    fit_cases, cases = line_cases(files[:8], 30, 0), line_cases(files[8:], 12, 1)
    preds, scorers = rerank.evaluate_rerank(completers, fit_cases, [""] * len(fit_cases), cases, [""] * len(cases), {},
                                            candidates=4, batch_size=8, line_tokens=8, seed=0)
    assert set(preds) == {"copy_line+rerank", "model+rerank", "ngram3+rerank"}
    assert set(scorers) == {"copy_line", "model", "ngram3"} and scorers["copy_line"].features == rerank.RETRIEVAL_ONLY
    from tasks.code_completion.evaluate import greedy

    own = {f"{k}+rerank": greedy(c, [c.prompt(x.prefix) for x in cases], "line", 8, 8) for k, c in completers.items()}
    for key, got in preds.items():
        assert len(got) == len(cases)
        for i, (line, c) in enumerate(zip(got, cases, strict=True)):
            allowed = [p[0] for p in rerank.proposals(c.prefix, 4)] + ([own[key][i]] if key in own else [])
            assert line in allowed or (line == "" and not allowed)
    targets = [c.target for c in cases]
    copy = [rerank.proposals(c.prefix, 1)[0][0] if rerank.proposals(c.prefix, 1) else "" for c in cases]
    out = rerank_comparisons({**preds, "copy_line+repo": copy}, targets, 0)
    from tasks.code_completion.evaluate import line_scores

    diff = line_scores(preds["model+rerank"], targets)["edit_sim"] - line_scores(preds["copy_line+rerank"], targets)["edit_sim"]
    assert out["paired/line/edit_sim/model+rerank-copy_line+rerank/mean"] == pytest.approx(diff)
    assert isinstance(out["beats_baselines_rerank/line/exact_match"], bool)


class Evil:
    """Not a boosted tree: a saved scorer holding it must be refused."""


def test_a_saved_scorer_round_trips_and_fm_complete_reranks_with_it(tmp_path, capsys):
    import json

    import skops.io
    import torch

    from code_fm.bpe import train_bpe
    from fm_core.config import EncoderConfig
    from fm_core.export import save_pretrained
    from fm_core.model import MaskedLM
    from tasks.code_completion.complete import main

    rng = np.random.default_rng(0)
    X, gain = rng.normal(size=(60, len(rerank.FEATURES))), rng.uniform(0, 100, size=60)
    scorer = rerank.Reranker().fit(X, gain)
    text = "def f(x):\n    y = x + 1\n    return y\n\ndef g(x):\n    y = x + 2\n    return y\n\ndef h(x):\n"
    bpe = train_bpe([text] * 4, vocab_size=280, min_frequency=1)
    torch.manual_seed(0)
    net = MaskedLM(EncoderConfig.from_name("tiny", vocab_size=bpe.vocab_size, pad_id=bpe.pad_id, mask_id=bpe.mask_id,
                                           causal=True, max_length=64))
    export = save_pretrained(tmp_path / "m", net, bpe)
    src = tmp_path / "a.py"
    src.write_text(text)  # the cursor at the end: no text after it, so the own line is the same either way
    args = ["--checkpoint", str(export), "--file", str(src), "--line", "10", "--column", "0", "--rerank",
            "--max-new-tokens", "4"]
    assert main(args) == 2 and f"no {rerank.SCORER_FILE}" in capsys.readouterr().err
    scorer.save(export, candidates=3, fitted_on=7)
    loaded, n = rerank.Reranker.load(export)
    assert n == 3 and np.allclose(loaded.model.predict(X[:5]), scorer.model.predict(X[:5]))
    assert main(args) == 0
    got = capsys.readouterr().out.rstrip("\n")
    assert main(args[:-3] + ["--max-new-tokens", "4"]) == 0  # the model's own line, without --rerank
    own = capsys.readouterr().out.rstrip("\n")
    assert got in [p[0] for p in rerank.proposals(text, 3)] + [own]
    assert main([*args, "--retrieval"]) == 2 and "give one" in capsys.readouterr().err
    assert main([*args, "--mode", "block"]) == 2 and "--rerank works in --mode line" in capsys.readouterr().err
    skops.io.dump({"model": Evil()}, export / rerank.SCORER_FILE)  # a scorer file holding another type
    with pytest.raises(ValueError, match="not a boosted tree"):
        rerank.Reranker.load(export)
    settings = json.loads((export / rerank.SETTINGS_FILE).read_text())
    assert settings == {"features": list(rerank.FEATURES), "candidates": 3, "fitted_on": 7}
