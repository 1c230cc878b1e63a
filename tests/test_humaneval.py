"""HumanEval built in: the 164 problems and 1,033 single-line infilling tasks from the installed package's
data file, the unbiased pass@k estimator against hand-computed values, and execution in the sandbox
(the canonical solution passes, a wrong one fails, a hanging one is killed and counted as failed)."""

from __future__ import annotations

from math import comb

import numpy as np
import pytest

from tasks.code_completion import humaneval as he

FIXTURE = he.Problem(
    task_id="Fixture/0",
    prompt='def add(a: int, b: int) -> int:\n    """Sum of a and b.\n    >>> add(2, 3)\n    5\n    """\n',
    canonical_solution="    total = a + b\n\n    return total\n",
    test="def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n",
    entry_point="add",
)


def test_pass_at_k_against_hand_computed_values():
    assert he.pass_at_k(10, 1, 1) == pytest.approx(0.1)
    assert he.pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)  # 1 - C(3,2)/C(5,2)
    assert he.pass_at_k(10, 3, 5) == pytest.approx(1 - 21 / 252)  # 1 - C(7,5)/C(10,5)
    assert he.pass_at_k(10, 0, 10) == 0.0 and he.pass_at_k(10, 2, 9) == 1.0  # n - c < k: certain
    assert he.pass_at_k(200, 1, 100) == pytest.approx(0.5)
    # the stable product equals the binomial form where the latter is exact
    assert he.pass_at_k(150, 37, 10) == pytest.approx(1 - comb(113, 10) / comb(150, 10), rel=1e-12)
    assert he.mean_pass_at_k([0, 10, 5], 10, 1) == pytest.approx(100 * (0 + 1 + 0.5) / 3)
    with pytest.raises(ValueError):
        he.pass_at_k(5, 6, 1)


def test_the_package_problems_and_the_infilling_construction():
    problems = he.load_problems()
    assert len(problems) == 164 and problems[0].task_id == "HumanEval/0" and problems[-1].entry_point == "generate_integers"
    tasks = he.infilling_tasks(problems)
    assert len(tasks) == 1033  # Bavarian et al. 2022's single-line infilling count
    t = next(x for x in tasks if x.task_id == "HumanEval/0")
    assert t.middle == "    for idx, elem in enumerate(numbers):" and t.prefix == problems[0].prompt
    # masking a line and putting it back gives the canonical program
    for x in tasks[:40]:
        p = problems[x.problem]
        assert he.fill(x, problems, x.middle) == he.program(p, p.canonical_solution)


def test_fixture_problem_canonical_passes_wrong_fails_hang_is_killed():
    fixture = [FIXTURE]
    sandbox = he.Sandbox(workers=2, timeout_s=2.0, memory_mb=512)
    bodies = [["    return a + b\n", "    return a - b\n", "    while True:\n        pass\n", "    return a +\n"]]
    res, correct = he.score_samples(sandbox, fixture, bodies, [1, 2])
    assert correct.tolist() == [1] and res["pass@1"] == pytest.approx(25.0) and res["pass@2"] == pytest.approx(50.0)
    assert sandbox.passes([he.program(FIXTURE, FIXTURE.canonical_solution)]) == [True]
    tasks = he.infilling_tasks(fixture)
    assert [t.middle for t in tasks] == ["    total = a + b", "    return total"]
    scores, per = he.score_infilling(sandbox, fixture, tasks, ["total = a + b", "    return total + 1"])
    # the first line without its indentation still matches (stripped) but does not run; the second runs wrong
    assert scores == {"pass@1": 0.0, "exact_match": 50.0} and per["exact_match"].tolist() == [100.0, 0.0]
    scores, _ = he.score_infilling(sandbox, fixture, tasks, [t.middle for t in tasks])
    assert scores == {"pass@1": 100.0, "exact_match": 100.0}


class Echo:
    """A completer stand-in: answers every block prompt with a fixed body, every line prompt with a line."""

    def __init__(self, body: str):
        self.body = body

    def prompt(self, prefix, suffix=""):
        from tasks.code_completion.complete import Prompt

        return Prompt([1] * (1 + len(suffix) // 50), "", 0, prefix)

    def complete(self, prompts, *, mode, max_new_tokens, temperature=0.0, top_p=1.0, seed=0):
        from tasks.code_completion.complete import Completion

        return [Completion(self.body if mode == "block" else "    total = a + b", "stop", 1, 0, 0.0) for _ in prompts]


def test_bench_scores_every_system_on_the_same_problems(monkeypatch):
    from dataclasses import replace

    monkeypatch.setattr(he, "load_problems", lambda: [replace(FIXTURE, task_id=f"Fixture/{i}") for i in range(3)])
    bench = he.HumanEvalBench(problems=2, samples=4, temperature=0.8, top_p=0.95, ks=[1, 10], block_tokens=16,
                              line_tokens=8, infilling=True, batch_size=8, timeout_s=2.0, memory_mb=512, workers=2,
                              decontam_threshold=0.5, decontam_shingle=5)
    vendored = "import os\n\n" + FIXTURE.prompt + FIXTURE.canonical_solution + "\nprint(add(1, 2))\n"
    corpus = lambda: iter([("clean.py", "x = 1\n" * 50), ("vendored.py", vendored)])  # noqa: E731
    metrics, per = bench.run({"model": Echo("    return a + b\n"), "random_init": Echo("    return 0\n")}, seed=0,
                             corpus=corpus)
    assert metrics["decontam/humaneval_contaminated"] == 2 and metrics["decontam/humaneval_max_containment"] == 1.0
    assert metrics["data/humaneval_problems"] == 2 and metrics["data/humaneval_infill_tasks"] == 4
    assert metrics["humaneval/canonical_pass"] == 100.0
    assert metrics["humaneval/pass@1/model"] == 100.0 and metrics["humaneval/pass@1/random_init"] == 0.0
    assert "humaneval/pass@10/model" not in metrics  # 4 samples: pass@10 is not estimable
    # the echo writes the first canonical line for every infill task: right on half of them
    assert metrics["humaneval_infill/exact_match/model"] == 50.0 and metrics["humaneval_infill/pass@1/model"] == 50.0
    assert set(per) == {"model", "random_init", "copy_line"}
    assert np.array_equal(per["model"]["humaneval/pass@1"], [100.0, 100.0])


def test_decontamination_finds_a_vendored_problem_and_passes_clean_files():
    from code_fm.decontam import containment, shingles

    assert len(shingles("a b c d e f", 5)) == 2 and shingles("a  b\n c d e", 5) == shingles("a b c d e", 5)
    problem = FIXTURE.prompt + FIXTURE.canonical_solution
    files = [("big.py", "\n".join(f"value_{i} = compute({i}) + other_{i}" for i in range(400))),
             ("copy.py", "import sys\n" + "\n".join(f"v{i} = {i}" for i in range(300)) + "\n" + problem),
             ("half.py", problem[: len(problem) // 2])]
    found = {m.query: m for m in containment({"p": problem, "q": "def unrelated(x):\n    return x * 3 - 7\n"},
                                             lambda: iter(files), threshold=0.5, k=5, num_perm=128)}
    assert found["p"].file == "copy.py" and found["p"].containment == 1.0  # inside a 300-line file: containment, not Jaccard
    assert found["q"].file is None and found["q"].containment == 0.0


def test_the_task_yaml_builds_the_bench_and_the_gpu_experiment_composes(compose):
    from hydra.utils import instantiate

    cfg = compose(["task=code_completion"], config_name="finetune").task
    bench = instantiate(cfg.humaneval)
    assert isinstance(bench, he.HumanEvalBench) and bench.problems == 164 and bench.ks == [1, 10]
    gpu = compose(["task=code_completion", "+experiment=code_completion_gpu"], config_name="finetune")
    assert gpu.trainer.accelerator == "gpu" and gpu.task.max_length == 1024 and gpu.task.humaneval.samples == 100
    assert gpu.task.repo_retrieval.budget_tokens == 512 and gpu.task.humaneval.ks == [1, 10, 100]
