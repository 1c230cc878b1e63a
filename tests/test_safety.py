"""Safe loading and no network: a checkpoint from a user never runs code, and nothing in the
package reaches the network. Malicious pickles here *would* create a file when unpickled; every
loader must refuse them and the file must not appear."""

from __future__ import annotations

import ast
import pickle
import re
from pathlib import Path

import pytest
import torch

from bio_fm.esm_compat import load_esm2_checkpoint
from fm_core.checkpoint import AtomicCheckpointIO, CheckpointError, atomic_torch_save, safe_torch_load
from fm_core.export import init_from_checkpoint, load_pretrained

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("fm_core", "bio_fm", "code_fm", "tasks", "data_prep", "bench")


class Payload:
    """Unpickling this runs code that writes ``target``."""

    def __init__(self, target: Path):
        self.target = str(target)

    def __reduce__(self):
        return (exec, (f"open({self.target!r}, 'w').write('pwned')",))


def _evil_files(tmp_path: Path) -> dict[str, Path]:
    target = tmp_path / "PWNED"
    weights = {"net.embed_tokens.weight": torch.zeros(33, 8)}
    files = {}
    # our Lightning checkpoint layout, with the payload beside real tensors (and a valid sidecar)
    files["ckpt"] = tmp_path / "evil.ckpt"
    atomic_torch_save({"state_dict": weights, "fm_toolkit": {"model": {}, "tokenizer": None}, "x": Payload(target)},
                      files["ckpt"], {"global_step": 10})
    # a fair-esm ESM-2 .pt layout: the payload as its `args`
    files["esm"] = tmp_path / "esm2_t6_8M_UR50D.pt"
    torch.save({"model": {"encoder.sentence_encoder.embed_tokens.weight": torch.zeros(33, 8)},
                "args": Payload(target), "cfg": {"model": Payload(target)}}, files["esm"])
    # a legacy (non-zip) torch file and a bare pickle
    files["legacy"] = tmp_path / "legacy.pt"
    torch.save({"state_dict": weights, "x": Payload(target)}, files["legacy"], _use_new_zipfile_serialization=False)
    files["pickle"] = tmp_path / "bare.pkl"
    files["pickle"].write_bytes(pickle.dumps({"state_dict": weights, "x": Payload(target)}))
    return files


def test_payload_is_live(tmp_path):
    # the test would catch a loader that unpickles: an unrestricted load does create the file
    files = _evil_files(tmp_path)
    torch.load(files["ckpt"], weights_only=False)
    assert (tmp_path / "PWNED").read_text() == "pwned"


@pytest.mark.parametrize("kind", ["ckpt", "esm", "legacy", "pickle"])
def test_every_loader_refuses_a_malicious_pickle(tmp_path, kind):
    path = _evil_files(tmp_path)[kind]
    loaders = {
        "load_pretrained": lambda: load_pretrained(path),
        "init_from_checkpoint": lambda: init_from_checkpoint(path),
        "safe_torch_load": lambda: safe_torch_load(path),
        "fair-esm import": lambda: load_esm2_checkpoint(path),
        "Lightning CheckpointIO (resume)": lambda: AtomicCheckpointIO().load_checkpoint(path),
    }
    for name, load in loaders.items():
        with pytest.raises(CheckpointError, match=re.escape(str(path))) as err:
            load()
        assert "refuses to unpickle" in str(err.value) or "not a loadable" in str(err.value), (name, err.value)
        assert not (tmp_path / "PWNED").exists(), f"{name} executed code from {kind}"


def test_a_saved_file_never_names_code_to_import(tmp_path, monkeypatch, alphabet):
    """An export whose config names an unregistered tokenizer or head kind, and beside it a module
    that would run code if imported: refused by kind, the module never imported."""
    import json
    import sys

    from fm_core.config import EncoderConfig
    from fm_core.export import save_pretrained
    from fm_core.model import MaskedLM

    (tmp_path / "evil_plugin.py").write_text(f"open({str(tmp_path / 'PWNED')!r}, 'w').write('pwned')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    net = MaskedLM(EncoderConfig.from_name("tiny", vocab_size=33, pad_id=1, mask_id=32))
    out = save_pretrained(tmp_path / "export", net, alphabet)
    spec = json.loads((out / "config.json").read_text())
    evil = {"kind": "evil_plugin", "module": "evil_plugin", "args": {}}
    for what, change in (("tokenizer", {"tokenizer": evil}), ("head", {"heads": {"x": evil}})):
        (out / "config.json").write_text(json.dumps({**spec, **change}))
        with pytest.raises(CheckpointError, match=f"unknown {what} kind 'evil_plugin'"):
            load_pretrained(out)
        assert "evil_plugin" not in sys.modules and not (tmp_path / "PWNED").exists()


def test_resuming_from_a_malicious_checkpoint_is_refused(compose, tmp_path):
    from fm_core.train import train

    evil = _evil_files(tmp_path)["ckpt"]
    ckpt_dir = tmp_path / "run" / "checkpoints"
    ckpt_dir.mkdir(parents=True)
    for f in (evil, evil.with_name(evil.name + ".sha256.json")):
        f.rename(ckpt_dir / f.name)  # a valid sidecar: the hash says nothing about safety
    cfg = compose(["logger=csv", "trainer.max_steps=2", "trainer.enable_progress_bar=false",
                   f"paths.run_dir={tmp_path / 'run'}", "+data.train.max_records=50", "+data.val.max_records=10"])
    with pytest.raises(CheckpointError, match="refuses to unpickle"):
        train(cfg)
    assert not (tmp_path / "PWNED").exists()


def _python_files():
    for package in PACKAGES:
        yield from sorted((ROOT / package).rglob("*.py"))


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node, ast.unparse(node.func)


def test_every_torch_load_is_weights_only():
    """CI check: each torch.load in the package passes weights_only=True literally; no pickle.load,
    no numpy allow_pickle=True, no weights_only=False anywhere."""
    found = 0
    for path in _python_files():
        tree = ast.parse(path.read_text(), str(path))
        for call, name in _calls(tree):
            where = f"{path.relative_to(ROOT)}:{call.lineno}"
            kw = {k.arg: k.value for k in call.keywords}
            if name == "torch.load":
                found += 1
                assert isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True, where
            assert name not in ("pickle.load", "pickle.loads", "cPickle.load", "dill.load", "joblib.load"), where
            if "allow_pickle" in kw:
                assert isinstance(kw["allow_pickle"], ast.Constant) and kw["allow_pickle"].value is False, where
            if "weights_only" in kw:
                assert not (isinstance(kw["weights_only"], ast.Constant) and kw["weights_only"].value is False), where
    assert found >= 1  # the check looks at real code (fm_core.checkpoint.safe_torch_load)


HUB_CALLS = re.compile(r"torch\.hub|hf_hub_download|snapshot_download|huggingface_hub|urlretrieve|urlopen|"
                       r"requests\.(get|post|head|Session)|httpx\.|esm\.pretrained\.(?!load_model_and_alphabet_local)"
                       r"|load_model_and_alphabet_hub|load_hub_workaround|from_pretrained\(\s*['\"]https?:|"
                       r"wget |curl ")


def test_no_hub_download_calls_in_the_package():
    """CI check: no code path downloads weights or data (docstrings and comments excepted)."""
    offenders = []
    for path in _python_files():
        source = path.read_text()
        tree = ast.parse(source)
        docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                      if isinstance(n, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
                      and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and id(node) in docstrings:
                continue
            if isinstance(node, ast.Call | ast.Attribute | ast.Import | ast.ImportFrom | ast.Constant):
                text = ast.unparse(node)
                if HUB_CALLS.search(text) or (isinstance(node, ast.Import | ast.ImportFrom)
                                              and re.search(r"\b(requests|urllib\.request|httpx|huggingface_hub)\b", text)):
                    offenders.append(f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', '?')}: {text[:80]}")
    assert not offenders, offenders
    # the check itself finds a planted call
    planted = ast.unparse(ast.parse("import torch\nm = torch.hub.load('facebookresearch/esm', 'esm2_t6_8M_UR50D')"))
    assert HUB_CALLS.search(planted)
