"""``fm-report``'s command line: parsed here without importing numpy, matplotlib or torch, so that
``--help`` and argument errors answer at once; the work is ``fm_core.report.run``."""

from __future__ import annotations

import argparse

from fm_core.errors import argparse_main

DESCRIPTION = """Label-efficiency curves from finished fm-finetune runs (and pre-training compute curves).

Reads every metrics.json below the given directories and the Hydra config beside it
(.hydra/config.yaml: task, task.train_size, seed, model.init_from / model.size), and writes into
--out: runs.csv (one row per run and method), summary.csv (mean, std and the 95% interval over
seeds per task, method, backbone and label budget), paired.csv (backbone minus its random-init
twin in the same run), report.md and one PNG per task (metric against the label budget, log x).
What each task draws is fm_conf/report/<task>.yaml (--spec DIR for your own). A metric a spec
names and a run lacks is listed by run in report.md and on stdout. An earlier report (its
runs.csv, or its --out folder) given among the inputs adds its rows: seeds run elsewhere or
earlier are summarised with the runs at hand, without their run directories.

examples:
  fm-finetune -m task=secondary_structure model=mini task.train_size=20,50,100 seed=0,1,2 logger=csv \\
      hydra.sweep.dir=runs/ss_budget
  fm-report runs/ss_budget --out runs/ss_budget/report
  fm-report runs/ss_budget runs/ss_budget_long --pretrain runs/protein_cpu_long --out runs/report
  fm-report bench/sweeps/ss/runs.csv runs/ss_seed2 --out runs/ss_report     # add a seed to a kept report

Errors are one line with exit code 2 (--debug or FM_DEBUG=1 shows the traceback)."""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fm-report", description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dirs", nargs="+", help="run directories, or folders above them (a Hydra multirun folder), "
                   "or an earlier report's runs.csv / --out folder")
    p.add_argument("-o", "--out", required=True, help="output folder for the CSVs, report.md and PNGs")
    p.add_argument("--pretrain", action="append", metavar="RUN",
                   help="an fm-pretrain run directory whose exports the runs started from (repeatable): "
                        "adds <task>_pretrain_tokens.png")
    p.add_argument("--spec", default=None, metavar="DIR", help="folder of <task>.yaml report specs "
                   "(default: fm_conf/report)")
    return p


def main(argv: list[str] | None = None) -> None:
    argparse_main("fm-report", parser(), "fm_core.report:run", argv)


if __name__ == "__main__":
    main()
