"""Every CLI, run as a real subprocess through its console script, against a table of hostile
or mistaken inputs: a user's mistake ends with exit code 2, one or two lines on stderr naming the
file, record or key, and no traceback; `--help` answers with the app's own keys and examples; the
output directory is left untouched. The cases that must import torch (a checkpoint or an input
read by the work itself) are `slow`; the argument and config cases answer without it."""

from __future__ import annotations

import gzip
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
CLIS = ("fm-pretrain", "fm-embed", "fm-finetune", "fm-protein-score", "fm-prep", "fm-predict-structure",
        "fm-complete", "fm-score", "fm-report")
ENV = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "FM_DEBUG": ""}


def run(tool: str, *args: str, cwd: Path | None = None, env: dict | None = None,
        timeout: float = 300) -> subprocess.CompletedProcess:
    exe = BIN / tool
    if not exe.exists():
        pytest.skip(f"{exe} not installed (pip install -e .)")
    return subprocess.run([str(exe), *args], capture_output=True, text=True, cwd=cwd, env=env or ENV,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def assert_user_error(proc: subprocess.CompletedProcess, *named: str) -> None:
    err = proc.stderr
    assert proc.returncode == 2, (proc.returncode, err[-2000:])
    assert "Traceback" not in err, err[-2000:]
    for text in named:
        assert text in err, (text, err[-2000:])
    assert "weights_only=False" not in err and "weights_only` set to `False" not in err


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("hostile")
    out = {"dir": d, "empty": d / "empty.fa", "binary": d / "binary.fa", "cut": d / "cut.fa.gz",
           "badrec": d / "badrec.fa", "good": d / "good.fa", "afile": d / "afile.txt", "csv": d / "empty.csv"}
    out["empty"].write_bytes(b"")
    out["binary"].write_bytes(bytes(range(256)) * 8)
    blob = gzip.compress(b">a\nMKVLA\n" * 2000)
    out["cut"].write_bytes(blob[: len(blob) // 2])
    out["badrec"].write_bytes(b">ok\nMKVLA\n>bad_one\nMK\x00VLA\n")
    out["good"].write_text(">p1\nMKTAYIAKQRQISFVKSHFSRQ\n>p2\nMSKGEELFTGVVPILVELDGDV\n")
    out["afile"].write_text("not a directory\n")
    out["csv"].write_text("")
    return out


def _readonly_dir(base: Path) -> Path:
    """A directory nobody may create files in (as root: a path on sysfs, which refuses)."""
    if os.geteuid() == 0:
        return Path("/sys/fm_cli_errors_test")
    ro = base / "readonly"
    ro.mkdir(exist_ok=True)
    ro.chmod(0o555)
    return ro / "out"


# ---- --help: purpose, own keys with their comments, examples; fast ---------------------------------
HELP_EXPECT = {
    "fm-pretrain": ["masked-language-model pre-training", "resume: auto", "# auto: continue", "experiment",
                    "fm-pretrain experiment=protein_quick"],
    "fm-embed": ["per-sequence mean embeddings", "on_invalid: error", "# error | skip", "fm-embed input="],
    "fm-finetune": ["adapt a backbone", "task (required)", "contacts", "fm-finetune task=contacts"],
    "fm-protein-score": ["pseudo-perplexity", "mutant_column: mutant", "fm-protein-score input="],
    "fm-prep": ["protein", "structures", "molecules", "fm-prep protein --input"],
    "fm-predict-structure": ["--checkpoint", "--fasta", "examples:"],
    "fm-complete": ["--checkpoint", "--line", "examples:"],
    "fm-score": ["scorer", "--smiles-column", "examples:"],
    "fm-report": ["Label-efficiency curves", "--pretrain", "examples:"],
}


@pytest.mark.parametrize("tool", CLIS)
def test_help_is_fast_and_helps(tool):
    # fast by construction, not by a stopwatch (timings live in bench/cli_startup.py): --help imports
    # neither torch nor Lightning nor Hydra, read off Python's own import log
    proc = run(tool, "--help", env={**ENV, "PYTHONPROFILEIMPORTTIME": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    for text in HELP_EXPECT[tool]:
        assert text in proc.stdout, (text, proc.stdout[:3000])
    assert "Traceback" not in proc.stderr
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert imported and not imported & {"torch", "lightning", "hydra", "wandb"}, sorted(imported & {"torch", "lightning"})


PREP_KIND_HELP = {"protein": "--cluster-mode", "structures": "--slice", "molecules": "--source",
                  "code": "--exclude", "go": "--relations"}


@pytest.mark.parametrize("kind", PREP_KIND_HELP)
def test_prep_kind_help_imports_no_torch(kind):
    proc = run("fm-prep", kind, "--help", env={**ENV, "PYTHONPROFILEIMPORTTIME": "1"})
    assert proc.returncode == 0 and PREP_KIND_HELP[kind] in proc.stdout, proc.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert imported and not imported & {"torch", "lightning", "hydra", "wandb", "rdkit"}, sorted(
        imported & {"torch", "lightning", "rdkit"})


def test_finetune_help_shows_only_its_groups_and_a_picked_task():
    out = run("fm-finetune", "task=contacts", "--help").stdout
    assert "Keys of task=contacts" in out and "l1_C: 0.15" in out and "# inverse L1 strength" in out
    assert "experiment" not in out and "module:" not in out  # fm-pretrain's groups are not listed
    pretrain = run("fm-pretrain", "--help").stdout
    assert "task (required)" not in pretrain and "dataset" not in pretrain


# ---- argument and config mistakes: answered before any model is built (no torch) --------------------
def fast_cases(f: dict[str, Path]) -> list[tuple[str, list[str], list[str]]]:
    d = f["dir"]
    return [
        ("fm-pretrain", ["seedd=1"], ["fm-pretrain: error:", "'seedd'", "did you mean seed"]),
        ("fm-pretrain", ["trainer.max_stepz=3"], ["'trainer.max_stepz'", "trainer.max_steps", "+trainer.max_stepz"]),
        ("fm-pretrain", ["model=tinyy"], ["model/tinyy", "available:", "tiny"]),
        ("fm-pretrain", ["trainer.max_steps=[1"], ["cannot parse an override", "[1"]),
        ("fm-pretrain", [f"hydra.run.dir={f['afile']}/run"], [str(f["afile"]), "is a file"]),
        ("fm-pretrain", [f"hydra.run.dir={_readonly_dir(d)}/run"], ["hydra.run.dir", "cannot write"]),
        ("fm-finetune", [], ["usage: fm-finetune task=", "missing required task"]),
        ("fm-finetune", ["task=contactz"], ["task/contactz", "contacts"]),
        ("fm-finetune", ["task=contacts", "task.l1_c=1"], ["'task.l1_c'", "task.l1_C"]),
        ("fm-embed", [], ["usage: fm-embed input=", "missing required input, checkpoint, out"]),
        ("fm-embed", [f"input={f['good']}", "checkpoint=x.pt"], ["missing required value", "out=..."]),
        ("fm-embed", [f"input={f['good']}", "checkpoint=x.pt", f"out={f['afile']}"], ["out=", "is a file"]),
        ("fm-embed", [f"input={f['good']}", "checkpoint=x.pt", f"out={_readonly_dir(d)}"], ["out=", "cannot write"]),
        ("fm-embed", [f"input={f['good']}", "checkpoint=x.pt", f"out={d}/e", "layerz=[1]"], ["'layerz'", "layers"]),
        ("fm-protein-score", [], ["usage: fm-protein-score", "missing required input"]),
        ("fm-protein-score", ["input=a.fa", "checkpoint=b", f"out={d}/s", "mutant_colum=x"], ["mutant_column"]),
        ("fm-prep", ["bogus"], ["invalid choice: 'bogus'"]),
        ("fm-prep", [], ["fm-prep: error:", "kind"]),
        ("fm-predict-structure", [], ["--checkpoint", "required"]),
        ("fm-predict-structure", ["--checkpoint", "c", "--fasta", "f", "--on-invalid", "maybe"], ["--on-invalid"]),
        ("fm-complete", ["--checkpoint", "c", "--line", "x"], ["--line", "invalid int value: 'x'"]),
        ("fm-score", [], ["fm-score: error:", "required"]),
        ("fm-report", [str(d / "no_runs_here"), "-o", str(d / "report")], ["no_runs_here", "no such directory"]),
    ]


FAST_IDS = [f"{i:02d}-{tool}" for i, (tool, *_rest) in enumerate(fast_cases({k: Path("x") for k in (
    "dir", "afile", "good")}))]


@pytest.mark.parametrize("case", range(len(FAST_IDS)), ids=FAST_IDS)
def test_argument_mistakes(files, case):
    tool, args, named = fast_cases(files)[case]
    before = sorted(p.name for p in files["dir"].iterdir())
    proc = run(tool, *args, cwd=files["dir"])
    assert_user_error(proc, *named)
    assert len([line for line in proc.stderr.splitlines() if "error:" in line]) == 1, proc.stderr
    assert sorted(p.name for p in files["dir"].iterdir()) == before  # nothing written


def test_debug_shows_the_traceback(files):
    proc = run("fm-pretrain", "seedd=1", env={**ENV, "FM_DEBUG": "1"})
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "seedd" in proc.stderr


# ---- inputs read by the work: bad files, wrong checkpoints (these import torch) ---------------------
@pytest.fixture(scope="module")
def checkpoints(files) -> dict[str, Path]:
    import torch

    from bio_fm.alphabet import ProteinAlphabet
    from fm_core.export import save_pretrained
    from fm_core.model import build_model

    d = files["dir"]
    alphabet = ProteinAlphabet()
    export = save_pretrained(d / "export", build_model("tiny", alphabet), alphabet)

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {d / 'pwned'}",))

    (d / "evil.pt").write_bytes(pickle.dumps({"model": Evil()}))
    torch.save({"x": torch.zeros(3)}, d / "cut.pt")
    (d / "cut.pt").write_bytes((d / "cut.pt").read_bytes()[:100])
    return {"export": Path(export), "evil": d / "evil.pt", "cut": d / "cut.pt"}


def slow_cases(f: dict[str, Path], c: dict[str, Path]) -> list[tuple[str, list[str], list[str]]]:
    d = f["dir"]

    def embed(inp: Path, ckpt: Path, *more: str) -> list[str]:
        return [f"input={inp}", f"checkpoint={ckpt}", f"out={d}/emb_{inp.stem}_{ckpt.stem}", *more]

    return [
        ("fm-embed", embed(f["good"], d / "missing.pt"), ["missing.pt"]),
        ("fm-embed", embed(f["good"], c["evil"]), ["evil.pt", "nothing in it was run"]),
        ("fm-embed", embed(f["good"], c["cut"]), ["cut.pt", "truncated or corrupt"]),
        ("fm-embed", embed(f["binary"], c["export"]), ["binary.fa"]),
        ("fm-embed", embed(f["cut"], c["export"]), ["cut.fa.gz"]),
        ("fm-embed", embed(f["badrec"], c["export"]), ["badrec.fa", "bad_one"]),
        ("fm-protein-score", ["input=" + str(f["badrec"]), f"checkpoint={c['export']}", f"out={d}/ps"],
         ["badrec.fa", "bad_one"]),
        ("fm-finetune", ["task=contacts", f"model.init_from={d / 'nowhere'}", "logger=csv",
                         f"hydra.run.dir={d}/ft"], ["data/structure_slice", "fm-prep structures"]),  # data first
        ("fm-predict-structure", ["--checkpoint", str(c["evil"]), "--fasta", str(f["good"]), "--out", str(d / "p")],
         ["evil.pt", "nothing in it was run"]),
        ("fm-predict-structure", ["--checkpoint", str(c["export"]), "--fasta", str(f["badrec"]), "--out", str(d / "p2")],
         ["badrec.fa", "bad_one"]),
        ("fm-complete", ["--checkpoint", str(c["export"]), "--file", str(f["good"])], ["export"]),
        ("fm-complete", ["--checkpoint", str(d / "nope"), "--file", str(f["good"])], ["nope"]),
        ("fm-score", [str(d / "noscorer"), str(f["csv"]), "-o", str(d / "o.csv")], ["noscorer"]),
        ("fm-prep", ["protein", "--input", str(d / "missing.fa"), "--out", str(d / "prep")], ["missing.fa"]),
        ("fm-prep", ["protein", "--input", str(f["binary"]), "--out", str(d / "prep2")], ["binary.fa"]),
    ]


SLOW_IDS = [f"{i:02d}-{tool}" for i, (tool, *_rest) in enumerate(slow_cases(
    {k: Path(k) for k in ("dir", "good", "binary", "cut", "badrec", "csv")},
    {k: Path(k) for k in ("export", "evil", "cut")}))]


@pytest.mark.slow
@pytest.mark.parametrize("case", range(len(SLOW_IDS)), ids=SLOW_IDS)
def test_bad_inputs_and_checkpoints(files, checkpoints, case):
    tool, args, named = slow_cases(files, checkpoints)[case]
    proc = run(tool, *args, cwd=files["dir"])
    assert_user_error(proc, *named)
    assert not (files["dir"] / "pwned").exists()
