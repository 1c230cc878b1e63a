"""``fm-report DIR...``: label-efficiency (and pre-training compute) curves from finished runs.

Every ``metrics.json`` below the given directories is one run; the Hydra config saved beside it
(``.hydra/config.yaml``) says its task (``task.name``), label budget (``task.train_size``), seed
and backbone (``model.init_from``, or a random-init ``model.size``); a run whose metrics name a
``dataset`` (drug_property) is grouped as ``<task>-<dataset>``, one curve set per dataset. What to
draw for a task is read from ``fm_conf/report/<task>.yaml`` (``--spec`` for another file): the metric keys of the
methods over the backbone (one line per backbone), of their random-init twins in the same run, and
of the baselines. A key the spec names and a run lacks is reported by run, never skipped silently.

Out (``--out``): ``runs.csv`` (tidy: one row per run and method), ``summary.csv`` (per task,
method, backbone and budget: seeds, mean, sample std and the 95% interval of the mean, Student t),
``paired.csv`` (backbone minus its twin, per seed of the same run, with its interval), ``report.md``
(the tables) and one PNG per task: the metric against the label budget (log x). With
``--pretrain RUN`` (an fm-pretrain run directory: ``exports/step*/`` and ``export/``) runs whose
``model.init_from`` is one of its exports also give ``<task>_pretrain_tokens.png``: the metric
against the tokens the backbone was pre-trained on (``pretrain_tokens.csv``: per export, budget and
method, with the twins and baselines of the same runs beside).

A previous report can stand in for runs that are gone: a ``runs.csv`` that fm-report wrote (or its
output folder) given among the inputs adds its rows as they are, so seeds run on another machine,
cluster or day are summarised with the runs at hand (a run found both there and on disk counts once,
from disk). Sweeps keep only that small tidy file; the run directories can be deleted.
"""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np

from fm_core.errors import UserError

RUN_COLUMNS = ("task", "method", "role", "backbone", "budget", "train_size", "seed", "pretrain_tokens", "key",
               "value", "status", "run", "spec")
ROW_TYPES = {"train_size": float, "seed": int, "pretrain_tokens": float, "value": float}
SUMMARY_COLUMNS = ("task", "method", "role", "backbone", "budget", "train_size", "n", "mean", "std", "ci95_low",
                   "ci95_high", "values")
ROLES = ("backbone", "twin", "baselines")


class ReportError(UserError, ValueError):
    """A directory without runs, an unreadable metrics.json or config, or no report spec for a task."""


@dataclass
class Run:
    path: Path  # the run directory (holds metrics.json)
    task: str  # what the report groups by: the task name, "<task>-<dataset>" when the run names its dataset
    seed: int
    budget: str  # the requested task.train_size ("all" for null)
    train_size: float  # the training records the run kept (data/train_size), NaN when it does not say
    backbone: str  # a label for model.init_from / model.size
    init_from: str | None
    metrics: dict[str, Any] = field(repr=False, default_factory=dict)
    spec: str = ""  # the report spec's name: task.name

    def __post_init__(self):
        self.spec = self.spec or self.task


def previous_report(path: Path) -> Path | None:
    """The ``runs.csv`` an input names (the file, or an fm-report output folder holding it), else None."""
    if path.is_file() and path.suffix == ".csv":
        return path
    if path.is_dir() and (path / "report.md").is_file() and (path / "runs.csv").is_file():
        return path / "runs.csv"
    return None


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a ``runs.csv`` written by fm-report, typed as ``run_rows`` makes them."""
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        need = set(RUN_COLUMNS) - {"spec"}  # reports written before the spec column: the task name up to '-'
        lacking = sorted(need - set(reader.fieldnames or ()))
        if lacking:
            raise ReportError(f"{path}: not an fm-report runs.csv (no column {', '.join(lacking)})")
        rows = []
        for line, rec in enumerate(reader, start=2):
            try:
                row = {k: ROW_TYPES[k](rec[k]) if k in ROW_TYPES else rec[k] for k in need}
            except ValueError as err:
                raise ReportError(f"{path}: line {line}: {err}") from err
            row["spec"] = rec.get("spec") or row["task"].split("-", 1)[0]
            rows.append(row)
    return rows


def find_runs(dirs: list[str | Path]) -> list[Path]:
    """Every ``metrics.json`` below ``dirs`` (sorted); a directory without one is an error."""
    found: list[Path] = []
    for d in map(Path, dirs):
        if not d.is_dir():
            raise ReportError(f"{d}: no such directory; give fm-finetune run directories (or a multirun folder)")
        # fm-report's own output (report.md beside its metrics.json) is no run
        mine = sorted(p for p in d.rglob("metrics.json") if not (p.parent / "report.md").is_file())
        if not mine:
            raise ReportError(f"{d}: no metrics.json below it; give the run directories of finished fm-finetune "
                              "runs (each writes <run_dir>/metrics.json)")
        found += mine
    return sorted(set(found))


def unfinished_runs(dirs: list[str | Path]) -> list[Path]:
    """Run directories below ``dirs`` with a Hydra config but no metrics.json (failed or running)."""
    return sorted({c.parent.parent for d in map(Path, dirs) for c in d.rglob(".hydra/config.yaml")
                   if not (c.parent.parent / "metrics.json").is_file()})


def backbone_label(init_from: str | None, size: Any) -> str:
    """``runs/x/export`` -> ``x``; ``runs/x/exports/step0001000`` -> ``x@step0001000``; a random init
    at a size -> ``random-init <size>``; neither -> ``no backbone``."""
    if init_from:
        p = Path(str(init_from).rstrip("/"))
        if p.parent.name == "exports":
            return f"{p.parent.parent.name}@{p.name}"
        return p.parent.name if p.name == "export" else p.stem
    return f"random-init {size}" if size else "no backbone"


def read_run(metrics_path: Path) -> Run:
    from omegaconf import OmegaConf

    run_dir = metrics_path.parent
    cfg_path = run_dir / ".hydra" / "config.yaml"
    try:
        metrics = json.loads(metrics_path.read_text())
    except (OSError, ValueError) as err:
        raise ReportError(f"{metrics_path}: unreadable ({type(err).__name__}: {err})") from err
    if not cfg_path.is_file():
        raise ReportError(f"{metrics_path}: no .hydra/config.yaml beside it (fm-report reads the task, budget, "
                          "seed and backbone from there; a run with paths.run_dir away from Hydra's folder has none)")
    cfg = OmegaConf.to_container(OmegaConf.load(cfg_path), resolve=False)
    task_cfg, model = cfg.get("task") or {}, cfg.get("model") or {}
    task = str(task_cfg.get("name") or metrics.get("task") or "")
    if not task:
        raise ReportError(f"{cfg_path}: no task.name")
    init_from = model.get("init_from")
    init_from = None if init_from in (None, "???") else str(init_from)
    requested = task_cfg.get("train_size")
    kept = metrics.get("data/train_size")
    dataset = metrics.get("dataset")  # a task over several datasets (drug_property) reports each apart
    label = f"{task}-{dataset}" if isinstance(dataset, str) and dataset else task
    return Run(run_dir, label, int(cfg.get("seed", 0)), "all" if requested is None else str(requested),
               float(kept) if isinstance(kept, int | float) else math.nan,
               backbone_label(init_from, model.get("size")), init_from, metrics, spec=task)


def load_spec(task: str, spec_dir: Path | None) -> dict[str, Any]:
    """The report spec of ``task``: ``<spec_dir>/<task>.yaml``, else ``fm_conf/report/<task>.yaml``."""
    from omegaconf import OmegaConf

    from fm_core.cli import CONFIG_MODULE

    path = (spec_dir or Path(str(files(CONFIG_MODULE.removeprefix("pkg://")).joinpath("report")))) / f"{task}.yaml"
    if not path.is_file():
        raise ReportError(f"task {task!r}: no report spec {path}; write one (see fm_conf/report/*.yaml) and pass "
                          "its folder with --spec")
    spec = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    return {"metric": spec.get("metric", ""), **{r: dict(spec.get(r) or {}) for r in ROLES}}


def pick(metrics: dict[str, Any], keys: str | list[str]) -> tuple[str, float | None]:
    """The first of ``keys`` that ``metrics`` holds (key, value), else (the first key, None)."""
    candidates = [keys] if isinstance(keys, str) else list(keys)
    for k in candidates:
        v = metrics.get(k)
        if isinstance(v, int | float) and not isinstance(v, bool):
            return k, float(v)
    return candidates[0], None


def run_rows(run: Run, spec: dict[str, Any], tokens: dict[Path, float]) -> list[dict[str, Any]]:
    """One row per method of the spec: its value in this run, or status ``missing``."""
    rows = []
    pre = tokens.get(Path(run.init_from).resolve(), math.nan) if run.init_from else math.nan
    for role in ROLES:
        for method, keys in spec[role].items():
            if role == "twin" and not run.init_from:
                continue  # a random-init run has no separate twin
            key, value = pick(run.metrics, keys)
            rows.append({"task": run.task, "method": method, "role": role,
                         # a twin keeps its backbone's label: twins of backbones of different shapes differ
                         "backbone": run.backbone if role != "baselines" else "-", "budget": run.budget,
                         "train_size": run.train_size, "seed": run.seed, "pretrain_tokens": pre, "key": key,
                         "value": math.nan if value is None else value,
                         "status": "ok" if value is not None else "missing", "run": str(run.path),
                         "spec": run.spec})
    return rows


def interval(values: list[float]) -> dict[str, float]:
    """n, mean, sample std and the 95% interval of the mean (Student t, n - 1 degrees of freedom)."""
    from scipy import stats

    v = np.asarray(values, dtype=np.float64)
    n = len(v)
    mean = float(v.mean()) if n else math.nan
    if n < 2:
        return {"n": n, "mean": mean, "std": math.nan, "ci95_low": math.nan, "ci95_high": math.nan}
    std = float(v.std(ddof=1))
    half = float(stats.t.ppf(0.975, n - 1)) * std / math.sqrt(n)
    return {"n": n, "mean": mean, "std": std, "ci95_low": mean - half, "ci95_high": mean + half}


def per_seed(rows: list[dict[str, Any]], keys: tuple[str, ...]) -> dict[tuple, dict[int, list[float]]]:
    """Values grouped by ``keys`` then by seed (the same seed twice, e.g. a baseline repeated in the
    runs of two backbones, counts once: its mean)."""
    out: dict[tuple, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r["status"] == "ok":
            out[tuple(r[k] for k in keys)][r["seed"]].append(r["value"])
    return out


def budget_order(budget: str) -> tuple[int, float]:
    return (1, math.inf) if budget == "all" else (0, float(budget))


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    keys = ("task", "method", "role", "backbone", "budget")
    sizes: dict[tuple, list[float]] = defaultdict(list)
    for r in rows:
        if np.isfinite(r["train_size"]):
            sizes[(r["task"], r["budget"])].append(r["train_size"])
    out = []
    for group, seeds in per_seed(rows, keys).items():
        values = [float(np.mean(v)) for _, v in sorted(seeds.items())]
        size = sizes.get((group[0], group[4]))
        out.append({**dict(zip(keys, group, strict=True)), "train_size": float(np.mean(size)) if size else math.nan,
                    **interval(values), "values": " ".join(f"{v:.6g}" for v in values)})
    return sorted(out, key=lambda r: (r["task"], ROLES.index(r["role"]), r["method"], r["backbone"],
                                      budget_order(r["budget"])))


def paired(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per task, backbone method, backbone and budget: the backbone minus its twin of the same run,
    over seeds (mean and 95% interval); ``beats_twin`` when the interval lies above zero."""
    twins = {(r["run"], r["method"]): r for r in rows if r["role"] == "twin" and r["status"] == "ok"}
    diffs = [{**r, "value": r["value"] - twins[(r["run"], r["method"])]["value"]} for r in rows
             if r["role"] == "backbone" and r["status"] == "ok" and (r["run"], r["method"]) in twins]
    out = []
    for (task, method, backbone, budget), seeds in per_seed(diffs, ("task", "method", "backbone", "budget")).items():
        stats = interval([float(np.mean(v)) for _, v in sorted(seeds.items())])
        out.append({"task": task, "method": method, "backbone": backbone, "budget": budget, **stats,
                    "beats_twin": bool(stats["ci95_low"] > 0), "loses_to_twin": bool(stats["ci95_high"] < 0)})
    return sorted(out, key=lambda r: (r["task"], r["method"], r["backbone"], budget_order(r["budget"])))


def export_tokens(pretrain_dirs: list[str | Path]) -> dict[Path, float]:
    """Tokens each export of the given fm-pretrain runs was trained on (its ``train/tokens_seen``
    metadata; the final ``export/`` from the run's metrics.json)."""
    out: dict[Path, float] = {}
    for d in map(Path, pretrain_dirs):
        exports = sorted((d / "exports").glob("*/config.json"))
        for cfg in exports:
            meta = json.loads(cfg.read_text()).get("metadata", {})
            if "train/tokens_seen" in meta:
                out[cfg.parent.resolve()] = float(meta["train/tokens_seen"])
        final = d / "metrics.json"
        if (d / "export" / "config.json").is_file() and final.is_file():
            out[(d / "export").resolve()] = float(json.loads(final.read_text()).get("train/tokens_seen", math.nan))
        if not exports and not (d / "export").is_dir():
            raise ReportError(f"{d}: no exports/step*/ nor export/ (give an fm-pretrain run directory; periodic "
                              "exports come from callbacks.step_exports, e.g. experiment=protein_cpu_long)")
    return out


def fmt(stats: dict[str, Any]) -> str:
    if not stats["n"]:
        return "-"
    if stats["n"] < 2:
        return f"{stats['mean']:.4g} (n=1)"
    return f"{stats['mean']:.4g} [{stats['ci95_low']:.4g}, {stats['ci95_high']:.4g}] (n={stats['n']})"


def markdown(summary: list[dict[str, Any]], pairs: list[dict[str, Any]], missing: list[dict[str, Any]],
             specs: dict[str, dict[str, Any]]) -> str:
    """Per task: methods x budgets (mean [95% interval] (seeds)), the paired differences, and the
    metrics the spec names that some run lacks."""
    lines: list[str] = []
    for task in sorted({r["task"] for r in summary} | {r["task"] for r in missing}):
        mine = [r for r in summary if r["task"] == task]
        budgets = sorted({r["budget"] for r in mine}, key=budget_order)
        sizes = {r["budget"]: r["train_size"] for r in mine}
        lines += [f"### {task}: {specs[task]['metric']}", "",
                  "| method | backbone | " + " | ".join(f"{b} ({sizes[b]:.0f})" if np.isfinite(sizes[b]) else b
                                                       for b in budgets) + " |",
                  "|---|---|" + "---|" * len(budgets)]
        cells: dict[tuple, dict[str, str]] = defaultdict(dict)
        for r in mine:
            label = r["method"] if r["role"] != "twin" else f"{r['method']} (random-init twin)"
            cells[(label, r["backbone"])][r["budget"]] = fmt(r)
        lines += [f"| {m} | {b} | " + " | ".join(c.get(x, "-") for x in budgets) + " |" for (m, b), c in cells.items()]
        pp = [p for p in pairs if p["task"] == task]
        if pp:
            lines += ["", "backbone minus its random-init twin (same run, per seed):", "",
                      "| method | backbone | budget | difference [95% interval] | interval excludes 0 |",
                      "|---|---|---|---|---|"]
            lines += [f"| {p['method']} | {p['backbone']} | {p['budget']} | {fmt(p)} | "
                      f"{'better' if p['beats_twin'] else 'worse' if p['loses_to_twin'] else 'no'} |" for p in pp]
        gone = [m for m in missing if m["task"] == task]
        if gone:
            lines += ["", f"missing metrics ({len(gone)}):", ""]
            lines += [f"- {m['run']}: {m['key']} ({m['method']})" for m in gone]
        lines.append("")
    return "\n".join(lines)


def plot_task(task: str, summary: list[dict[str, Any]], spec: dict[str, Any], x_key: str, path: Path,
              xlabel: str) -> Path:
    """One line per method and backbone (mean, shaded 95% interval) against ``x_key`` (log x)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fm_core.plots import save_figure

    fig, ax = plt.subplots(figsize=(9.5, 4.5))
    lines: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in summary:
        if r["task"] == task and np.isfinite(r[x_key]):
            lines[(r["role"], r["method"], r["backbone"], r.get("budget_line", ""))].append(r)
    for (role, method, backbone, extra), pts in sorted(lines.items()):
        pts = sorted(pts, key=lambda r: r[x_key])
        x = np.array([p[x_key] for p in pts])
        y, lo, hi = (np.array([p[k] for p in pts]) for k in ("mean", "ci95_low", "ci95_high"))
        twin = f"{method} · random-init twin" + (f" of {backbone}" if backbone != "-" else "")
        label = {"backbone": f"{method} · {backbone}", "twin": twin}.get(role, method)
        style = {"backbone": "-", "twin": "--"}.get(role, ":")
        (line,) = ax.plot(x, y, style, marker="o", ms=4, label=label + (f" · {extra}" if extra else ""))
        ok = np.isfinite(lo)
        if ok.any():  # bars at every budget with an interval (>= 2 seeds), a band between neighbours
            ax.errorbar(x[ok], y[ok], yerr=[y[ok] - lo[ok], hi[ok] - y[ok]], fmt="none", ecolor=line.get_color(),
                        capsize=3, lw=1)
            ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.12, lw=0)
    ax.set_xscale("log")
    ax.set(xlabel=xlabel, ylabel=spec["metric"], title=f"{task}: mean and 95% interval over seeds")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    ax.grid(alpha=0.3, which="both")
    return save_figure(fig, path, dpi=120)


def token_summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Runs from a pre-training export, per export's tokens and budget: the backbone methods, their
    random-init twins and the baselines of the same runs (flat references: neither depends on the
    export, so a curve that rises above them is what the pre-training bought)."""
    mine = [r for r in rows if np.isfinite(r["pretrain_tokens"])]
    out = []
    keys = ("task", "method", "role", "budget", "pretrain_tokens")
    for group, seeds in per_seed(mine, keys).items():
        rec = dict(zip(keys, group, strict=True))
        out.append({**rec, "backbone": "pre-trained" if rec["role"] == "backbone" else "-",
                    "budget_line": f"budget {rec['budget']}",
                    **interval([float(np.mean(v)) for _, v in sorted(seeds.items())])})
    return sorted(out, key=lambda r: (r["task"], ROLES.index(r["role"]), r["method"], budget_order(r["budget"]),
                                      r["pretrain_tokens"]))


def write_csv(path: Path, rows: list[dict[str, Any]], columns: tuple[str, ...] | list[str]) -> Path:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(columns), extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.10g}" if isinstance(v, float) else v) for k, v in r.items()})
    return path


def report(dirs: list[str | Path], out: str | Path, *, pretrain: list[str | Path] = (),
           spec_dir: str | Path | None = None) -> dict[str, Any]:
    """Read the runs below ``dirs``, write the CSVs, markdown and PNGs into ``out``; returns counts."""
    out = Path(out)
    previous = {Path(d): previous_report(Path(d)) for d in dirs}
    run_dirs = [d for d, csv_path in previous.items() if csv_path is None]
    runs = [read_run(p) for p in find_runs(run_dirs)]
    seen = {str(r.path) for r in runs}  # a run on disk counts once, from disk; in two CSVs, from the first
    carried: list[dict[str, Any]] = []
    for csv_path in (c for c in previous.values() if c is not None):
        new = [r for r in read_rows(csv_path) if r["run"] not in seen]
        seen |= {r["run"] for r in new}
        carried += new
    names = sorted({r.spec for r in runs} | {r["spec"] for r in carried})
    by_name = {name: load_spec(name, Path(spec_dir) if spec_dir else None) for name in names}
    labels = {r.task: r.spec for r in runs} | {r["task"]: r["spec"] for r in carried}  # per label (task-dataset)
    specs = {label: by_name[labels[label]] for label in sorted(labels)}
    tokens = export_tokens(list(pretrain))
    out.mkdir(parents=True, exist_ok=True)  # only once the inputs are known good: a refused call writes nothing
    rows = [row for r in runs for row in run_rows(r, specs[r.task], tokens)] + carried
    missing = [r for r in rows if r["status"] == "missing"]
    summary, pairs = summarise(rows), paired(rows)
    write_csv(out / "runs.csv", rows, RUN_COLUMNS)
    write_csv(out / "summary.csv", summary, SUMMARY_COLUMNS)
    write_csv(out / "paired.csv", pairs, ("task", "method", "backbone", "budget", "n", "mean", "std", "ci95_low",
                                          "ci95_high", "beats_twin", "loses_to_twin"))
    (out / "report.md").write_text(markdown(summary, pairs, missing, specs))
    pngs = [plot_task(t, summary, specs[t], "train_size", out / f"{t}.png", "labelled training records (log)")
            for t in specs]
    by_tokens = token_summary(rows)
    if by_tokens:
        write_csv(out / "pretrain_tokens.csv", by_tokens, ("task", "method", "role", "budget", "pretrain_tokens", "n",
                                                            "mean", "std", "ci95_low", "ci95_high"))
    exports: dict[tuple, set[float]] = defaultdict(set)
    for r in by_tokens:
        exports[(r["task"], r["budget"])].add(r["pretrain_tokens"])
    curves = [r for r in by_tokens if len(exports[(r["task"], r["budget"])]) > 1]  # a line needs two exports
    pngs += [plot_task(t, curves, specs[t], "pretrain_tokens", out / f"{t}_pretrain_tokens.png",
                       "pre-training tokens of the backbone (log)") for t in sorted({r["task"] for r in curves})]
    for m in missing:
        print(f"fm-report: {m['run']}: no metric {m['key']} ({m['task']} {m['method']})")
    unfinished = unfinished_runs(run_dirs)
    if unfinished:
        with open(out / "report.md", "a") as fh:
            fh.write(f"\nruns without metrics.json (failed or still running, {len(unfinished)}):\n\n"
                     + "".join(f"- {u}\n" for u in unfinished))
    for u in unfinished:
        print(f"fm-report: {u}: no metrics.json (failed or still running): not in the report")
    n_carried = len({r["run"] for r in carried})
    result = {"report/runs": len(runs) + n_carried, "report/runs_from_csv": n_carried, "report/tasks": len(specs),
              "report/rows": len(rows),
              "report/missing": len(missing), "report/unfinished": len(unfinished), "report/pngs": len(pngs),
              "report/dir": str(out)}
    (out / "metrics.json").write_text(json.dumps(result, indent=2, sort_keys=True))
    print(f"fm-report: {result['report/runs']} runs ({n_carried} from earlier reports' runs.csv), {len(specs)} tasks, "
          f"{len(missing)} missing metrics -> {out}/report.md")
    return result


def run(args: Any) -> int:
    """``fm-report``'s work (``fm_core.report_cli`` parses)."""
    report(args.dirs, args.out, pretrain=args.pretrain or [], spec_dir=args.spec)
    return 0


__all__ = ["ReportError", "find_runs", "interval", "paired", "read_run", "report", "summarise"]
