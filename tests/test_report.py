"""``fm-report``: label-efficiency tables and curves from synthetic run trees (values, intervals,
paired differences, missing metrics reported by run, pre-training tokens, errors)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from fm_core.report import ReportError, interval, report

T_975_2 = 4.302652729911275  # Student t, 97.5% quantile, 2 degrees of freedom (3 seeds)
T_975_1 = 12.706204736174698  # 1 degree of freedom (2 seeds)


def write_run(d: Path, *, task: str, seed: int, train_size, init_from: str | None, size: str | None = None,
              metrics: dict) -> Path:
    d.mkdir(parents=True)
    (d / "metrics.json").write_text(json.dumps({"task": task, **metrics}))
    (d / ".hydra").mkdir()
    ts = "null" if train_size is None else train_size
    model = f"  init_from: {init_from}\n  size: null\n" if init_from else f"  init_from: null\n  size: {size}\n"
    (d / ".hydra" / "config.yaml").write_text(f"task:\n  name: {task}\n  train_size: {ts}\n  data_dir: x\n"
                                              f"model:\n{model}seed: {seed}\npaths:\n  run_dir: ${{hydra:runtime.output_dir}}\n")
    return d


def ss_metrics(linear: float, twin: float, onehot: float, kept: int, profile: bool = True) -> dict:
    m = {"test/linear/Q3": linear, "test/random_init_linear/Q3": twin, "test/conv/Q3": linear + 0.01,
         "test/random_init_conv/Q3": twin + 0.01, "test/onehot_window/Q3": onehot, "test/propensity/Q3": 0.4,
         "data/train_size": kept}
    if profile:
        m["test/profile_window/Q3"] = 0.7
    return m


@pytest.fixture
def tree(tmp_path):
    """secondary_structure: budgets 10 and 30 x seeds 0, 1, 2 from a pre-trained export, and budget 10
    from a random-init mini backbone; one run without the profile baseline."""
    root = tmp_path / "sweep"
    lin = {10: [0.50, 0.60, 0.70], 30: [0.62, 0.64, 0.66]}
    twin = {10: [0.40, 0.50, 0.60], 30: [0.63, 0.61, 0.68]}
    for budget in (10, 30):
        for seed in range(3):
            write_run(root / f"pt_{budget}_{seed}", task="secondary_structure", seed=seed, train_size=budget,
                      init_from="runs/pt/export",
                      metrics=ss_metrics(lin[budget][seed], twin[budget][seed], 0.55 + 0.01 * seed, budget - seed,
                                         profile=not (budget == 30 and seed == 2)))
    for seed in range(3):  # the baselines of these runs repeat the pre-trained runs' (same seed): counted once
        write_run(root / f"mini_10_{seed}", task="secondary_structure", seed=seed, train_size=10, init_from=None,
                  size="mini", metrics=ss_metrics(0.45, 0.44, 0.55 + 0.01 * seed, 10 - seed))
    (root / "crashed" / ".hydra").mkdir(parents=True)  # a multirun job that failed: config, no metrics.json
    (root / "crashed" / ".hydra" / "config.yaml").write_text("task:\n  name: secondary_structure\n")
    return root


def read(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(open(path)))


def row(rows, **match):
    found = [r for r in rows if all(r[k] == v for k, v in match.items())]
    assert len(found) == 1, (match, found)
    return found[0]


def test_summary_means_and_intervals(tree, tmp_path, capsys):
    out = tmp_path / "report"
    res = report([tree], out)
    assert res["report/runs"] == 9 and res["report/missing"] == 1
    s = read(out / "summary.csv")
    r = row(s, method="linear", backbone="pt", budget="10", role="backbone")
    half = T_975_2 * 0.1 / math.sqrt(3)  # values 0.5, 0.6, 0.7: mean 0.6, sample std 0.1
    assert (int(r["n"]), float(r["mean"]), float(r["std"])) == (3, pytest.approx(0.6), pytest.approx(0.1))
    assert float(r["ci95_low"]) == pytest.approx(0.6 - half) and float(r["ci95_high"]) == pytest.approx(0.6 + half)
    assert float(r["train_size"]) == pytest.approx((10 + 9 + 8 + 10 + 9 + 8) / 6)  # records kept, over the runs
    r = row(s, method="linear", backbone="random-init mini", budget="10")
    assert (int(r["n"]), float(r["mean"]), float(r["std"])) == (3, pytest.approx(0.45), pytest.approx(0.0))
    # a baseline repeated by the runs of both backbones at the same seed counts once per seed
    r = row(s, method="onehot_window", budget="10")
    assert (r["backbone"], int(r["n"]), float(r["mean"])) == ("-", 3, pytest.approx(0.56))
    # the missing profile baseline: two seeds at budget 30, and the run is named
    r = row(s, method="profile_window", budget="30")
    assert int(r["n"]) == 2 and float(r["ci95_low"]) == pytest.approx(0.7) and float(r["ci95_high"]) == pytest.approx(0.7)
    runs = read(out / "runs.csv")
    gone = [x for x in runs if x["status"] == "missing"]
    assert [(Path(x["run"]).name, x["key"]) for x in gone] == [("pt_30_2", "test/profile_window/Q3")]
    md = (out / "report.md").read_text()
    assert "missing metrics (1)" in md and f"{tree / 'pt_30_2'}: test/profile_window/Q3" in md
    printed = capsys.readouterr().out
    assert "no metric test/profile_window/Q3" in printed and f"{tree / 'crashed'}: no metrics.json" in printed
    assert res["report/unfinished"] == 1 and f"- {tree / 'crashed'}" in md
    # twins only from the runs with a pre-trained backbone (9 runs: 6 with twins)
    assert sum(x["role"] == "twin" for x in runs) == 12
    assert (out / "secondary_structure.png").stat().st_size > 10_000


def test_paired_difference_against_the_twin(tree, tmp_path):
    out = tmp_path / "report"
    report([tree], out)
    p = read(out / "paired.csv")
    r = row(p, method="linear", backbone="pt", budget="10")  # differences 0.1, 0.1, 0.1
    assert float(r["mean"]) == pytest.approx(0.1) and float(r["ci95_low"]) == pytest.approx(0.1)
    assert r["beats_twin"] == "True" and r["loses_to_twin"] == "False"
    r = row(p, method="linear", backbone="pt", budget="30")  # -0.01, 0.03, -0.02
    diffs = [-0.01, 0.03, -0.02]
    mean = sum(diffs) / 3
    std = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 2)
    assert float(r["mean"]) == pytest.approx(mean) and float(r["std"]) == pytest.approx(std)
    assert float(r["ci95_high"]) == pytest.approx(mean + T_975_2 * std / math.sqrt(3))
    assert r["beats_twin"] == "False" and r["loses_to_twin"] == "False"
    assert not [x for x in p if x["backbone"] == "random-init mini"]  # no twin pairs without a pre-trained backbone
    md = (out / "report.md").read_text()
    assert "| linear | pt | 10 | 0.1 [0.1, 0.1] (n=3) | better |" in md


def test_twins_of_two_backbones_are_summarised_apart(tmp_path):
    """Two pre-trained backbones (of different shapes, so different twins) at one budget: each twin
    is a row of its own backbone, never one pooled "twin" row."""
    runs = tmp_path / "sweep"
    for name, twin in (("small", 0.40), ("large", 0.50)):
        for seed in range(2):
            write_run(runs / f"{name}_{seed}", task="secondary_structure", seed=seed, train_size=10,
                      init_from=f"runs/{name}/export", metrics=ss_metrics(0.6, twin + 0.02 * seed, 0.55, 10))
    report([runs], tmp_path / "report")
    s = read(tmp_path / "report" / "summary.csv")
    assert float(row(s, method="linear", role="twin", backbone="small")["mean"]) == pytest.approx(0.41)
    assert float(row(s, method="linear", role="twin", backbone="large")["mean"]) == pytest.approx(0.51)
    assert int(row(s, method="onehot_window", budget="10")["n"]) == 2  # a baseline still pools its seeds
    md = (tmp_path / "report" / "report.md").read_text()
    assert "| linear (random-init twin) | small |" in md and "| linear (random-init twin) | large |" in md


def test_drug_runs_are_reported_per_dataset_with_their_twin_and_features_only_arm(tmp_path):
    """drug_property runs name their dataset: two datasets give two curve sets, not one mixed; the
    backbone run's in-run twin and features-only heads are its twin and baseline."""
    runs = tmp_path / "sweep"
    for i, (dataset, seed) in enumerate([("a", 0), ("a", 1), ("b", 0), ("b", 1)]):
        r2 = 0.5 + 0.1 * (dataset == "b") + 0.01 * seed
        write_run(runs / str(i), task="drug_property", seed=seed, train_size=50, init_from="runs/sm/export",
                  metrics={"dataset": dataset, "test/r2_mean": r2, "test/random_init/r2_mean": r2 - 0.02,
                           "test/no_backbone/r2_mean": r2 - 0.05, "rf/test/r2_mean": 0.3, "data/train_size": 48})
    res = report([runs], tmp_path / "report")
    assert res["report/tasks"] == 2 and res["report/missing"] == 0 and res["report/pngs"] == 2
    s = read(tmp_path / "report" / "summary.csv")
    assert float(row(s, task="drug_property-b", method="head", role="backbone")["mean"]) == pytest.approx(0.605)
    assert float(row(s, task="drug_property-a", method="features_only")["mean"]) == pytest.approx(0.455)
    p = row(read(tmp_path / "report" / "paired.csv"), task="drug_property-a", method="head")
    assert float(p["mean"]) == pytest.approx(0.02) and p["beats_twin"] == "True"
    assert (tmp_path / "report" / "drug_property-a.png").is_file()


def test_interval_golden_values():
    assert interval([1.0, 3.0]) == {"n": 2, "mean": 2.0, "std": pytest.approx(math.sqrt(2)),
                                    "ci95_low": pytest.approx(2 - T_975_1), "ci95_high": pytest.approx(2 + T_975_1)}
    one = interval([0.3])
    assert one["n"] == 1 and one["mean"] == 0.3 and math.isnan(one["ci95_low"])


def test_metric_against_pretraining_tokens(tmp_path):
    pre = tmp_path / "pt"
    for step, tokens in ((250, 1_000_000), (500, 2_000_000)):
        e = pre / "exports" / f"step{step:07d}"
        e.mkdir(parents=True)
        (e / "config.json").write_text(json.dumps({"metadata": {"train/steps": step, "train/tokens_seen": tokens}}))
    runs = tmp_path / "runs"
    for step, base in ((250, 0.5), (500, 0.6)):
        for seed in range(2):
            write_run(runs / f"s{step}_{seed}", task="secondary_structure", seed=seed, train_size=None,
                      init_from=str(pre / "exports" / f"step{step:07d}"),
                      metrics=ss_metrics(base + 0.02 * seed, 0.4, 0.5, 100))
    out = tmp_path / "report"
    res = report([runs], out, pretrain=[pre])
    rows = read(out / "runs.csv")
    assert {r["pretrain_tokens"] for r in rows if r["role"] == "backbone"} == {"1000000", "2000000"}
    assert row(read(out / "summary.csv"), method="linear", backbone="pt@step0000500", role="backbone")["mean"] == "0.61"
    assert (out / "secondary_structure_pretrain_tokens.png").stat().st_size > 10_000 and res["report/pngs"] == 2
    curve = read(out / "pretrain_tokens.csv")  # the backbone rises with the tokens; its twin stays flat beside it
    assert [(r["pretrain_tokens"], r["mean"]) for r in curve if r["method"] == "linear" and r["role"] == "backbone"] \
        == [("1000000", "0.51"), ("2000000", "0.61")]
    assert [r["mean"] for r in curve if r["method"] == "linear" and r["role"] == "twin"] == ["0.4", "0.4"]
    assert {r["method"] for r in curve if r["role"] == "baselines"} == {"onehot_window", "profile_window", "propensity"}


def test_an_earlier_reports_runs_csv_stands_in_for_runs_that_are_gone(tree, tmp_path):
    """Seeds 0-1 reported, their run directories deleted; seed 2 run later: the earlier runs.csv plus the
    new run give the same summary and paired tables as all the runs read from disk."""
    import shutil

    whole = tmp_path / "whole"
    report([tree], whole)
    first, later = tmp_path / "first", tmp_path / "later"
    first.mkdir()
    later.mkdir()
    for d in tree.iterdir():  # seed 2 (and the crashed job) stay for later, the rest is reported first
        shutil.copytree(d, (later if d.name.endswith("_2") else first) / d.name)
    report([first], tmp_path / "r01")
    shutil.rmtree(first)
    merged = tmp_path / "merged"
    res = report([tmp_path / "r01", later], merged)
    assert res["report/runs"] == 9 and res["report/runs_from_csv"] == 6 and res["report/missing"] == 1
    for name in ("summary.csv", "paired.csv"):
        a, b = read(whole / name), read(merged / name)
        assert len(a) == len(b) >= (10 if name == "summary.csv" else 4)
        key = ("task", "method", "backbone", "budget") + (("role",) if name == "summary.csv" else ())
        b_by = {tuple(r[k] for k in key): r for r in b}
        for r in a:
            other = b_by[tuple(r[k] for k in key)]
            assert other["n"] == r["n"]
            for col in ("mean", "ci95_low", "ci95_high"):
                if r[col] not in ("", "nan"):
                    assert float(other[col]) == pytest.approx(float(r[col]), rel=1e-9)
    row(read(merged / "paired.csv"), method="linear", backbone="pt", budget="30")  # 3 seeds again
    # the same run given both ways counts once (from disk); the runs.csv file itself is an input too
    again = report([merged / "runs.csv", later], tmp_path / "again")
    assert again["report/runs"] == 9 and again["report/runs_from_csv"] == 6
    assert read(tmp_path / "again" / "summary.csv") == read(merged / "summary.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("task,value\nx,1\n")
    with pytest.raises(ReportError, match=r"bad\.csv: not an fm-report runs\.csv \(no column backbone"):
        report([bad], tmp_path / "out")


def test_clear_errors(tmp_path, capsys):
    from fm_core.report_cli import main

    (tmp_path / "empty").mkdir()
    with pytest.raises(ReportError, match="no metrics.json below it"):
        report([tmp_path / "empty"], tmp_path / "out")
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "metrics.json").write_text("{}")
    with pytest.raises(ReportError, match=r"no \.hydra/config\.yaml beside it"):
        report([bare], tmp_path / "out")
    write_run(tmp_path / "odd" / "r", task="no_such_task", seed=0, train_size=None, init_from=None, size="mini",
              metrics={})
    with pytest.raises(ReportError, match="task 'no_such_task': no report spec"):
        report([tmp_path / "odd"], tmp_path / "out")
    with pytest.raises(SystemExit) as exc:
        main([str(tmp_path / "empty"), "-o", str(tmp_path / "out")])
    assert exc.value.code == 2 and "fm-report: error:" in capsys.readouterr().err


def test_step_exports_feed_the_pretraining_curve(tmp_path, alphabet):
    """fm-pretrain's geometric-series exports (callbacks.step_exports) carry the tokens fm-report reads."""
    from types import SimpleNamespace

    from fm_core.export import load_pretrained
    from fm_core.model import build_model
    from fm_core.report import export_tokens
    from fm_core.train import StepExports, training_flops

    cb = StepExports(str(tmp_path / "exports"), first=250, factor=2)
    assert cb.steps(3000) == [250, 500, 1000, 2000] and StepExports("x", 3, 1.5).steps(12) == [3, 4, 7, 10]
    with pytest.raises(ValueError, match="factor > 1"):
        StepExports("x", 10, 1.0)
    net = build_model("tiny", alphabet)
    module = SimpleNamespace(net=net, tokenizer=alphabet, tokens_seen=0)
    n = sum(p.numel() for p in net.parameters())
    for step in range(1, 1001):
        module.tokens_seen = 100 * step
        cb.on_train_batch_end(SimpleNamespace(global_step=step, max_steps=1000, is_global_zero=True), module,
                              None, None, 0)
    assert sorted(p.name for p in (tmp_path / "exports").iterdir()) == ["step0000250", "step0000500", "step0001000"]
    meta = json.loads((tmp_path / "exports" / "step0000500" / "config.json").read_text())["metadata"]
    assert meta == {"train/steps": 500, "train/tokens_seen": 50_000, "train/flops_estimate": 6.0 * n * 50_000}
    assert training_flops(n, 50_000) == 6.0 * n * 50_000
    again, _ = load_pretrained(tmp_path / "exports" / "step0000250")
    assert sum(p.numel() for p in again.parameters()) == n
    assert export_tokens([tmp_path]) == {(tmp_path / "exports" / f"step{s:07d}").resolve(): 100.0 * s
                                         for s in (250, 500, 1000)}
