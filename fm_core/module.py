"""LightningModules: masked-language-model pre-training (``MLMModule``) and next-token training of a
causal encoder (``CausalLMModule``: the masked-LM head is re-used as is, so pre-trained weights carry
over). The backbone is injected (``net``)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.classification import MulticlassAccuracy
from torchmetrics.text import Perplexity

from fm_core.export import describe
from fm_core.masking import IGNORE
from fm_core.model import MaskedLM


def param_groups(net: torch.nn.Module) -> list[dict[str, Any]]:
    """Weight decay on the weights of linear and embedding layers only; biases, LayerNorm gains and
    such get none. Chosen by module type, not by ``p.ndim``: under FSDP parameters are flat shards."""
    decay, no_decay = [], []
    for module in net.modules():
        for name, p in module.named_parameters(recurse=False):
            if p.requires_grad:
                matrix = name == "weight" and isinstance(module, (torch.nn.Linear, torch.nn.Embedding))
                (decay if matrix else no_decay).append(p)
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]


def optimizers(net: torch.nn.Module, optimizer: Callable[..., torch.optim.Optimizer],
               scheduler: Callable[..., Any] | None) -> Any:
    """Lightning's ``configure_optimizers`` answer: the optimizer over ``param_groups``, and the
    scheduler stepped every step when there is one."""
    opt = optimizer(param_groups(net))
    if scheduler is None:
        return opt
    return {"optimizer": opt, "lr_scheduler": {"scheduler": scheduler(opt), "interval": "step"}}


class RunClock:
    """Wall and CPU seconds of a run's training loop (its validation included; not fit's start-up:
    strategy set-up, checkpoint restore, sanity check, which every leg of a resumed run pays again),
    summed over the legs of a resumed run: the earlier legs' totals travel in the checkpoint a leg
    resumes from, so work redone after a crash counts once. CPU seconds are the process's (every
    thread), what a busy machine inflates far less than the wall time."""

    def __init__(self) -> None:
        self.before = {"wall": 0.0, "cpu": 0.0}
        self.legs_before = 0
        self._started: tuple[float, float] | None = None
        self._leg = {"wall": 0.0, "cpu": 0.0}

    def start(self) -> None:
        self._started = (time.perf_counter(), time.process_time())

    def stop(self) -> None:
        self._leg, self._started = self._this_leg(), None

    def _this_leg(self) -> dict[str, float]:
        if self._started is None:
            return self._leg
        return {"wall": time.perf_counter() - self._started[0], "cpu": time.process_time() - self._started[1]}

    @property
    def seconds(self) -> float:
        return self.before["wall"] + self._this_leg()["wall"]

    @property
    def cpu_seconds(self) -> float:
        return self.before["cpu"] + self._this_leg()["cpu"]

    @property
    def legs(self) -> int:
        return self.legs_before + 1

    def state(self) -> dict[str, float | int]:
        return {"train_seconds": self.seconds, "train_cpu_seconds": self.cpu_seconds, "legs": self.legs}

    def restore(self, saved: dict[str, Any]) -> None:
        self.before = {"wall": float(saved.get("train_seconds", 0.0)), "cpu": float(saved.get("train_cpu_seconds", 0.0))}
        self.legs_before = int(saved.get("legs", 0))


class MLMModule(L.LightningModule):
    def __init__(self, net: MaskedLM, optimizer: Callable[..., torch.optim.Optimizer],
                 scheduler: Callable[..., Any] | None = None, tokenizer: Any = None,
                 unigram_log_probs: Tensor | None = None):
        super().__init__()
        self.net = net
        self.tokenizer = tokenizer
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.register_buffer("unigram_log_probs", unigram_log_probs, persistent=False)
        v = net.config.vocab_size
        self.val_ppl = Perplexity(ignore_index=IGNORE)
        self.val_unigram_ppl = Perplexity(ignore_index=IGNORE)
        self.val_acc = MulticlassAccuracy(num_classes=v, average="micro", ignore_index=IGNORE)
        self.tokens_seen = 0  # real (non-padding) tokens trained on, over every leg of the run
        self.clock = RunClock()  # wall and CPU seconds of the training loop, over every leg of the run
        self.resumed_step: int | None = None  # the global step of the checkpoint this leg resumed from

    def masked_logits(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Logits and labels at the selected positions only: the LM head never runs elsewhere."""
        hidden = self.net.encoder(batch["input_ids"], seq_lens=batch.get("seq_lens"))["hidden"]  # (B, L, D)
        selected = batch["labels"] != IGNORE  # (B, L)
        return self.net.mlm_logits(hidden[selected]), batch["labels"][selected]  # (N, V), (N,)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        logits, labels = self.masked_logits(batch)
        loss = F.cross_entropy(logits.float(), labels)
        real = batch["input_ids"].ne(self.net.config.pad_id)
        n_real = int(real.sum())
        self.tokens_seen += n_real
        self.log("train/loss", loss, prog_bar=True, batch_size=labels.numel())
        self.log("train/padding_fraction", 1.0 - n_real / real.numel(), batch_size=real.shape[0])
        self.log("train/batch_tokens", float(n_real), batch_size=1, reduce_fx="sum", on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        logits, labels = self.masked_logits(batch)
        self.val_ppl.update(logits.float()[None], labels[None])
        self.val_acc.update(logits, labels)
        if self.unigram_log_probs is not None:
            uni = self.unigram_log_probs.expand(labels.numel(), -1)  # (N, V): the same guess everywhere
            self.val_unigram_ppl.update(uni[None], labels[None])

    def on_validation_epoch_end(self) -> None:
        ppl = self.val_ppl.compute()
        self.log_dict({"val/perplexity": ppl, "val/loss": ppl.log(), "val/accuracy": self.val_acc.compute()},
                      prog_bar=True)
        if self.unigram_log_probs is not None:
            self.log("val/unigram_perplexity", self.val_unigram_ppl.compute())
        for metric in (self.val_ppl, self.val_acc, self.val_unigram_ppl):
            metric.reset()

    def configure_optimizers(self) -> Any:
        return optimizers(self.net, self.optimizer_factory, self.scheduler_factory)

    def on_train_start(self) -> None:
        self.clock.start()

    def on_train_end(self) -> None:
        self.clock.stop()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # self-describing Lightning checkpoints: enough to rebuild net and tokenizer without Hydra;
        # plus the run's totals so far, so that a resumed run reports all of its legs
        checkpoint["fm_toolkit"] = {**describe(self.net, self.tokenizer), "tokens_seen": self.tokens_seen,
                                    **self.clock.state()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("fm_toolkit", {})
        self.tokens_seen = int(saved.get("tokens_seen", 0))
        self.clock.restore(saved)
        self.resumed_step = int(checkpoint.get("global_step", 0))


class CausalLMModule(L.LightningModule):
    """Next-token cross-entropy on ``labels`` (already aligned with ``input_ids``; IGNORE = no loss)."""

    def __init__(self, net: MaskedLM, optimizer: Callable[..., torch.optim.Optimizer],
                 scheduler: Callable[..., Any] | None = None, log_prefix: str = ""):
        super().__init__()
        if not net.config.causal:
            raise ValueError("CausalLMModule needs a causal encoder (EncoderConfig.causal=True)")
        self.net, self.optimizer_factory, self.scheduler_factory = net, optimizer, scheduler
        self.prefix = log_prefix
        self.val_losses: list[tuple[float, int]] = []

    def loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, int]:
        hidden = self.net.encoder(batch["input_ids"])["hidden"]  # (B, L, D)
        selected = batch["labels"] != IGNORE
        logits = self.net.mlm_logits(hidden[selected])  # (N, V): the head only where there is a loss
        return F.cross_entropy(logits.float(), batch["labels"][selected]), int(selected.sum())

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss, n = self.loss(batch)
        self.log(f"{self.prefix}train/loss", loss, prog_bar=True, batch_size=n)
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        loss, n = self.loss(batch)
        self.log(f"{self.prefix}val/loss", loss, prog_bar=True, batch_size=n)

    def configure_optimizers(self) -> Any:
        return optimizers(self.net, self.optimizer_factory, self.scheduler_factory)
