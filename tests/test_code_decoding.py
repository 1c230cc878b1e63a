"""Completions a person would accept: repetition handling in the decoding loop, token healing that
continues from the cursor whatever the indentation typed, the retriever at an indented cursor, and
fm-complete's refusal of a line number outside the file."""

from __future__ import annotations

import pytest
import torch

from fm_core.decoding import generate, penalize_repeats
from tasks.code_completion.complete import Completer, main

CODE = '''class Greeter:
    def __init__(self, name):
        self.name = name

    def greet(self, other):
        return "hello " + other + " from " + self.name
'''


@pytest.fixture(scope="module")
def bpe():
    from code_fm.bpe import train_bpe

    return train_bpe([CODE * 3, "def add(a, b):\n    return a + b\n" * 5], vocab_size=400, min_frequency=1)


def test_repetition_penalty_and_repeated_ngram_ban_are_golden():
    scores = torch.tensor([[2.0, -1.0, 0.5, 3.0, 1.0]])
    penalize_repeats(scores, 0, [0, 1, 0], penalty=2.0, no_repeat_ngram=0)
    assert scores.tolist() == [[1.0, -2.0, 0.5, 3.0, 1.0]]  # seen: 0 (2 / 2) and 1 (-1 * 2)
    scores = torch.zeros(1, 5)
    penalize_repeats(scores, 0, [1, 2, 3, 1, 2], penalty=1.0, no_repeat_ngram=3)
    assert torch.isinf(scores[0, 3]) and int(torch.isinf(scores).sum()) == 1  # "1 2 3" may not come again
    scores = torch.zeros(1, 5)
    penalize_repeats(scores, 0, [4, 4], penalty=1.0, no_repeat_ngram=1)
    assert torch.isinf(scores[0, 4]) and int(torch.isinf(scores).sum()) == 1


class Loop:
    """A NextTokenModel stuck in the loop 5 6 7 5 6 7 ...: it always prefers the token after the last."""

    vocab_size = 10

    def _scores(self, last):
        out = torch.zeros(len(last), self.vocab_size)
        for r, t in enumerate(last):
            out[r, 5 + (t - 4) % 3] = 5.0
            out[r, 9] = 1.0  # the end-of-line token, second best
        return out

    def start(self, prompts):
        self.last = [p[-1] for p in prompts]
        return self._scores(self.last)

    def step(self, tokens):
        self.last = tokens.tolist()
        return self._scores(self.last)


def test_the_loop_is_broken_by_the_ngram_ban_and_not_without_it():
    stop = lambda row, ids: ids[-1] == 9  # noqa: E731
    plain = generate(Loop(), [[4]], max_new_tokens=12, stop=stop)
    assert plain.ids[0] == [5, 6, 7] * 4 and plain.stopped == ["max_new_tokens"]
    banned = generate(Loop(), [[4]], max_new_tokens=12, stop=stop, no_repeat_ngram=3)
    assert banned.ids[0] == [5, 6, 7, 5, 6, 9] and banned.stopped == ["stop"]  # "5 6 7" once, then the line ends
    penal = generate(Loop(), [[4]], max_new_tokens=12, stop=stop, repetition_penalty=6.0)
    assert penal.ids[0] == [5, 6, 7, 9]  # 5 / 6 < 1: every seen token falls below the end of line


def test_healing_continues_after_typed_indentation_without_adding_any(bpe):
    class Any_:
        vocab_size = bpe.vocab_size

    comp = Completer(Any_(), bpe, 64)
    prompt = comp.prompt("def add(a, b):\n    ")  # the cursor after the indentation, as in an editor
    assert prompt.healed == "\n    " and prompt.indented  # healed back to the newline: training's tokenization
    first = {comp.texts[i] for i in comp.allowed_after(prompt.healed, True).nonzero().flatten().tolist()}
    assert first == {"\n", "\n  ", "\n   "}  # no "\n       ": the typed indentation is not deepened
    rest = {comp.texts[i] for i in comp.allowed_after(comp.still_to_heal("\n    ", list(map(int, bpe.encode("\n   ")))),
                                                      True).nonzero().flatten().tolist()}
    assert " return" in rest and not any(t[1:2].isspace() for t in rest)
    # at a line start (nothing typed) the model chooses the indentation itself
    start = comp.prompt("def add(a, b):\n")
    assert not start.indented and "\n       " in {comp.texts[i] for i in comp.allowed_after(start.healed).nonzero().flatten().tolist()}


def test_retrieval_continues_at_an_indented_cursor():
    from tasks.code_completion.retrieval import continuation

    text = "def f(x):\n    y = g(x)\n    return y\ndef h(x):\n    y = g(x)\n"
    assert continuation(text) == ("    return y", 100.0)  # at the line start: the whole line
    assert continuation(text + "    ") == ("return y", 100.0)  # after the typed indentation: the code
    assert continuation(text + "  ") == ("return y", 100.0)  # other indentation, same code
    assert continuation(text + "    ret") == ("urn y", 100.0)
    assert continuation(text + "    x") == ("", 100.0)


def test_fm_complete_refuses_line_zero(tmp_path, capsys):
    src = tmp_path / "m.py"
    src.write_text("x = 1\ny = 2\n")
    # the cursor is checked before any model is loaded: the checkpoint need not exist
    for line, shown in ((0, "--line 0 outside 1..3"), (9, "--line 9 outside 1..3")):
        assert main(["--checkpoint", str(tmp_path / "none"), "--file", str(src), "--line", str(line)]) == 2
        err = capsys.readouterr().err
        assert shown in err and "1-based" in err and "Traceback" not in err


def test_serve_answers_json_lines_and_survives_bad_requests(bpe, tmp_path, capsys, monkeypatch):
    import io
    import json
    import sys

    from fm_core.config import EncoderConfig
    from fm_core.export import save_pretrained
    from fm_core.model import MaskedLM

    torch.manual_seed(0)
    net = MaskedLM(EncoderConfig.from_name("tiny", vocab_size=bpe.vocab_size, pad_id=bpe.pad_id, mask_id=bpe.mask_id,
                                           causal=True, max_length=32))
    export = save_pretrained(tmp_path / "m", net, bpe)
    src = tmp_path / "m.py"
    src.write_text("x = 1\n")
    requests = [{"id": 1, "prefix": "def add(a, b):\n    return", "max_new_tokens": 4},
                "not json", {"id": 3, "prefix": "x = 1\n", "colour": "red"}, {"id": 4, "prefix": "   "},
                {"id": 5, "file": str(src), "line": 0}, {"id": 6, "prefix": "x = 1\n" * 40, "max_new_tokens": 2},
                {"id": 7, "text": "def f():\n    <cursor>\n", "mode": "block", "max_new_tokens": 3}]
    lines = "\n".join(r if isinstance(r, str) else json.dumps(r) for r in requests) + "\n"
    monkeypatch.setattr(sys, "stdin", io.StringIO(lines))
    assert main(["--checkpoint", str(export), "--serve"]) == 0
    replies = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert replies[0] == {"ready": True, "context": 32} and len(replies) == 1 + len(requests)
    one = replies[1]
    assert one["id"] == 1 and isinstance(one["text"], str) and one["stopped"] in ("stop", "eos", "max_new_tokens")
    assert replies[2]["error"].startswith("request 2: not JSON")
    assert "unknown keys ['colour']" in replies[3]["error"] and replies[3]["id"] == 3
    assert "empty prompt" in replies[4]["error"] and "--line 0 outside" in replies[5]["error"]
    long = replies[6]
    assert long["truncated_from"] > 32 and long["prompt_tokens"] == 32 and "cut from the left" in long["notes"][0]
    assert replies[7]["id"] == 7 and "error" not in replies[7]


def test_a_partly_healed_prompt_is_not_taken_for_an_ended_line(bpe):
    """The healed "\\n    " may come back a piece at a time ("\\n", "  ", "  "): the first "\\n" is the
    healed text being written, not the end of the line."""
    class Scripted:
        vocab_size = bpe.vocab_size

        def _next(self):
            out = torch.full((1, self.vocab_size), -10.0)
            out[0, script[min(self.t, len(script) - 1)]] = 10.0
            self.t += 1
            return out

        def start(self, prompts):
            self.t = 0
            return self._next()

        def step(self, tokens):
            return self._next()

    pieces = ["\n", "  ", " ", " return", " a", "\n"]
    script = [int(bpe.encode(p)[0]) for p in pieces]
    assert [bpe.decode([i]) for i in script] == pieces
    comp = Completer(Scripted(), bpe, context=64)
    (c,) = comp.complete([comp.prompt("def add(a, b):\n    ")], mode="line", max_new_tokens=10)
    assert c.text == "return a" and c.stopped == "stop"


def test_a_body_at_a_line_start_ends_where_the_enclosing_code_is_left():
    from tasks.code_completion.complete import block_end, block_floor

    prompt = 'def f(x):\n    """Doc."""\n'  # HumanEval's shape: the cursor on the line after the docstring
    floor = block_floor(prompt)
    assert floor == 4 and block_floor("def f(x):\n") == 1 and block_floor("x = 1") == 0
    body = "    if x:\n        return 1\n    return 2\nprint(f(1))\n"
    assert block_end("", body, floor) == len("    if x:\n        return 1\n    return 2")  # the whole body
    assert block_end("", "xc = 1\n    y\n", floor) == 0  # leaves the function at once: an empty body
    assert block_end("", "\nprint(1)\n", floor) == 0
