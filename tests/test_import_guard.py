"""The engine imports no domain: in a fresh interpreter where importing ``bio_fm``, ``code_fm``,
``chem_fm``, ``tasks`` or ``data_prep`` raises, every ``fm_core`` module imports, and ``fm_core``
builds a model around a tokenizer (and a head) defined here, trains it a few steps with Lightning,
exports it and loads it back with equal logits."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = ("bio_fm", "code_fm", "chem_fm", "tasks", "data_prep")

GUARD = f"""
import importlib.abc, sys

FORBIDDEN = {FORBIDDEN!r}
ATTEMPTS = []


class ForbidDomains(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in FORBIDDEN:
            ATTEMPTS.append(name)
            raise ImportError(f"import guard: the engine imported {{name}}")
        return None


sys.meta_path.insert(0, ForbidDomains())
"""

SCRIPT = """
import importlib, pkgutil, sys, tempfile

import numpy as np
import torch

import fm_core

for mod in pkgutil.walk_packages(fm_core.__path__, "fm_core."):
    importlib.import_module(mod.name)

import lightning as L
from torch import nn

from fm_core.config import EncoderConfig
from fm_core.export import load_pretrained, save_pretrained
from fm_core.model import MaskedLM
from fm_core.module import MLMModule
from fm_core.registry import register_head
from fm_core.tokenizer import TokenizerBase, register_tokenizer


@register_tokenizer("guard_chars")
class CharTokenizer(TokenizerBase):
    specials = ("<pad>", "<bos>", "<eos>", "<mask>")

    def __init__(self, alphabet="abcdefgh"):
        self.alphabet = alphabet
        self.tokens = [*self.specials, *alphabet]
        self.vocab_size = len(self.tokens)
        self.pad_id, self.bos_id, self.eos_id, self.mask_id = range(4)
        self._special = np.arange(4)
        self._random = np.arange(4, self.vocab_size)

    def encode(self, text, *, record=None):
        return np.array([self.tokens.index(c) for c in text], dtype=np.int64)

    def to_dict(self):
        return {"kind": self.kind, "alphabet": self.alphabet}

    @classmethod
    def from_dict(cls, spec):
        return cls(spec["alphabet"])


@register_head("guard_pool")
class PoolHead(nn.Module):
    def __init__(self, dim, classes):
        super().__init__()
        self.dim, self.classes = dim, classes
        self.out = nn.Linear(dim, classes)

    def to_dict(self):
        return {"dim": self.dim, "classes": self.classes}

    def forward(self, hidden):
        return self.out(hidden.mean(1))


class Batches(torch.utils.data.IterableDataset):
    def __init__(self, tok, n):
        self.tok, self.n = tok, n

    def __iter__(self):
        g = torch.Generator().manual_seed(0)
        for _ in range(self.n):
            ids = torch.randint(4, self.tok.vocab_size, (4, 12), generator=g)
            ids[:, 0], ids[:, -1] = self.tok.bos_id, self.tok.eos_id
            masked = torch.rand(ids.shape, generator=g) < 0.3
            masked[:, 0] = masked[:, -1] = False
            masked[:, 1] = True
            labels = torch.where(masked, ids, torch.full_like(ids, -100))
            yield {"input_ids": ids.masked_fill(masked, self.tok.mask_id), "labels": labels}


torch.manual_seed(0)
tok = CharTokenizer()
cfg = EncoderConfig.from_name("tiny", vocab_size=tok.vocab_size, pad_id=tok.pad_id, mask_id=tok.mask_id,
                              max_length=32, token_dropout=False)
net = MaskedLM(cfg)
net.heads["pool"] = PoolHead(cfg.embed_dim, 3)
x = torch.as_tensor(np.stack([tok.add_special_tokens(tok.encode(s)) for s in ("abcabcab", "hgfedcba")]))
with torch.no_grad():
    before = net(x)["logits"].clone()
module = MLMModule(net, optimizer=lambda params: torch.optim.AdamW(params, lr=1e-2), tokenizer=tok)
trainer = L.Trainer(accelerator="cpu", max_steps=3, logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False)
trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(Batches(tok, 3), batch_size=None))
net.eval()
with torch.no_grad():
    logits = net(x)["logits"]
    pooled = net.heads["pool"](net(x)["hidden"])
assert not torch.equal(logits, before), "training changed nothing"
with tempfile.TemporaryDirectory() as tmp:
    save_pretrained(tmp, net, tok)
    again, tok2 = load_pretrained(tmp)
assert isinstance(tok2, CharTokenizer) and tok2.to_dict() == tok.to_dict()
assert isinstance(again.heads["pool"], PoolHead)
with torch.no_grad():
    assert torch.equal(again(x)["logits"], logits)
    assert torch.equal(again.heads["pool"](again(x)["hidden"]), pooled)

loaded = sorted(m for m in sys.modules if m.split(".")[0] in FORBIDDEN)
assert not ATTEMPTS and not loaded, (ATTEMPTS, loaded)
print("GUARD-OK")
"""


def run_guarded(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", GUARD + textwrap.dedent(code)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def test_engine_trains_exports_and_loads_without_any_domain():
    result = run_guarded(SCRIPT)
    assert result.returncode == 0 and "GUARD-OK" in result.stdout, result.stderr[-4000:]


def test_the_guard_catches_a_domain_import():
    """The check has teeth: a domain import in the guarded interpreter fails (even when caught)."""
    result = run_guarded("""
        try:
            import bio_fm  # noqa: F401
        except ImportError:
            pass
        assert not ATTEMPTS, ATTEMPTS
    """)
    assert result.returncode != 0 and "bio_fm" in result.stderr
