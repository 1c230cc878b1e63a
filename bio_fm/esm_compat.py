"""fair-esm ESM-2 interoperability: import ``.pt`` checkpoints (or an in-memory ``esm`` ``ESM2``)
into ``fm_core.model.MaskedLM``, and export ours back to files ``esm.pretrained`` loads.

File layout (read off ``esm.pretrained.load_model_and_alphabet_local`` / ``_core_v2``): a fairseq
checkpoint ``{"model": state dict, "cfg": {"model": <fields>, ...}, ...}`` whose keys carry the
prefixes ``encoder.sentence_encoder.`` (body) and ``encoder.`` (LM head); the contact regression
lives in a co-located ``<stem>-contact-regression.pt`` (``{"model": {"contact_head.regression.*"}}``);
ours is the ESM contact head ``heads.contact`` (``bio_fm.contact``), which every import carries.
fair-esm selects its ESM-2 loader by the file name (it must start with ``esm2``) and reads the
shape from ``cfg["model"].encoder_layers / encoder_embed_dim / encoder_attention_heads /
token_dropout``. In the released files ``cfg["model"]`` is an ``argparse.Namespace``, which
torch >= 2.6 refuses under ``weights_only=True``: we allow exactly that class and nothing else.

The name mapping between the two parameterisations is written once, in ``esm2_names``.
"""

from __future__ import annotations

import argparse
import logging
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from bio_fm.alphabet import ProteinAlphabet
from bio_fm.contact import HEAD_NAME, ContactHead, attach_contact_head
from fm_core.checkpoint import CheckpointError, safe_torch_load
from fm_core.config import SIZES, EncoderConfig
from fm_core.export import Checkpoint, ForeignFormat, build, register_format
from fm_core.model import MaskedLM, RotaryEmbedding
from fm_core.tokenizer import Tokenizer

log = logging.getLogger(__name__)

# The only non-tensor class found in fairseq-written ESM-2 files (cfg["model"]).
SAFE_GLOBALS: tuple[type, ...] = (argparse.Namespace,)
FAIRSEQ_PREFIXES = ("encoder.sentence_encoder.", "encoder.")  # stripped in this order, as fair-esm does
_PREFIX_RE = re.compile("^(" + "|".join(re.escape(p) for p in FAIRSEQ_PREFIXES) + ")")
CONFIG_KEY = "fm_toolkit_config"  # our EncoderConfig + tokenizer, kept beside the weights on export
ESM2_MAX_LENGTH = 1024  # ESM-2 was trained on crops of 1022 residues + <cls> + <eos>
# fair-esm's ESM2 hard-codes these; a config that differs cannot be expressed as an ESM-2 file
_ESM2_FIXED = {"layer_norm_eps": 1e-5, "rotary_base": 10000.0, "mask_ratio_train": 0.15 * 0.8}


def regression_path(model_path: str | Path) -> Path:
    """Where fair-esm looks for the contact regression of ``model_path``."""
    model_path = Path(model_path)
    return Path(str(model_path.with_suffix("")) + "-contact-regression.pt")


# --- the mapping, written once --------------------------------------------------------------------
_LAYER_PAIRS = (  # ours (under encoder.layers.{i}.) -> fair-esm (under layers.{i}.)
    ("attn_norm", "self_attn_layer_norm"),
    ("attn.out_proj", "self_attn.out_proj"),
    ("mlp_norm", "final_layer_norm"),
    ("fc1", "fc1"),
    ("fc2", "fc2"),
)
_TOP_PAIRS = (
    ("encoder.embed_tokens.weight", "embed_tokens.weight"),
    ("encoder.final_norm.weight", "emb_layer_norm_after.weight"),
    ("encoder.final_norm.bias", "emb_layer_norm_after.bias"),
    ("lm_head.dense.weight", "lm_head.dense.weight"),
    ("lm_head.dense.bias", "lm_head.dense.bias"),
    ("lm_head.norm.weight", "lm_head.layer_norm.weight"),
    ("lm_head.norm.bias", "lm_head.layer_norm.bias"),
    ("lm_head.bias", "lm_head.bias"),
    (f"heads.{HEAD_NAME}.regression.weight", "contact_head.regression.weight"),
    (f"heads.{HEAD_NAME}.regression.bias", "contact_head.regression.bias"),
)
QKV = ("q_proj", "k_proj", "v_proj")  # fused in this order into attn.qkv
TIED = "lm_head.weight"  # fair-esm's tied projection: the token embedding again
CONTACT = ("contact_head.regression.weight", "contact_head.regression.bias")  # fair-esm's names
OUR_CONTACT = tuple(ours for ours, theirs in _TOP_PAIRS if theirs in CONTACT)


def esm2_names(num_layers: int) -> Iterator[tuple[str, str | tuple[str, ...]]]:
    """(our name, fair-esm ESM2 name) for every tensor; q/k/v map to one fused tensor of ours."""
    for ours, theirs in _TOP_PAIRS:
        yield ours, theirs
    for i in range(num_layers):
        for ours, theirs in _LAYER_PAIRS:
            for kind in ("weight", "bias"):
                yield f"encoder.layers.{i}.{ours}.{kind}", f"layers.{i}.{theirs}.{kind}"
        for kind in ("weight", "bias"):
            yield (f"encoder.layers.{i}.attn.qkv.{kind}",
                   tuple(f"layers.{i}.self_attn.{p}.{kind}" for p in QKV))


def _inv_freq_name(i: int) -> str:
    return f"layers.{i}.self_attn.rot_emb.inv_freq"


def esm2_to_ours(state: dict[str, Tensor], num_layers: int, num_heads: int, source: str = "state dict",
                 require_contact: bool = False, rotary_base: float = _ESM2_FIXED["rotary_base"]
                 ) -> dict[str, Tensor]:
    """fair-esm ESM2 state dict (prefixes already stripped) -> ours. Checks every key, the tied
    LM projection and the rotary frequencies (of ``rotary_base``); tensors become float32."""
    used: set[str] = set()
    out: dict[str, Tensor] = {}
    missing: list[str] = []
    for ours, theirs in esm2_names(num_layers):
        names = theirs if isinstance(theirs, tuple) else (theirs,)
        absent = [n for n in names if n not in state]
        if absent:
            if ours in OUR_CONTACT and not require_contact:
                continue
            missing.extend(absent)
            continue
        used.update(names)
        parts = [state[n].float() for n in names]
        out[ours] = torch.cat(parts, dim=0) if len(parts) > 1 else parts[0]
    if missing:
        raise CheckpointError(f"{source}: not an ESM-2 state dict of {num_layers} layers "
                              f"(missing {missing[:4]}{' ...' if len(missing) > 4 else ''})")
    if TIED in state:
        used.add(TIED)
        if not torch.equal(state[TIED].float(), out["encoder.embed_tokens.weight"]):
            raise CheckpointError(f"{source}: lm_head.weight differs from embed_tokens.weight; ESM-2 ties "
                                  "them and so does this toolkit (untied LM heads are not supported)")
    head_dim = out["encoder.embed_tokens.weight"].shape[1] // num_heads
    expected = RotaryEmbedding(head_dim, rotary_base).inv_freq
    for i in range(num_layers):
        name = _inv_freq_name(i)
        if name in state:
            used.add(name)
            if state[name].shape != expected.shape or not torch.allclose(state[name].float(), expected):
                raise CheckpointError(f"{source}: {name} is not ESM-2's rotary frequencies for head_dim "
                                      f"{head_dim} ({num_heads} heads): wrong head count or another model")
    unexpected = sorted(set(state) - used)
    if unexpected:
        raise CheckpointError(f"{source}: not an ESM-2 checkpoint: unexpected tensors {unexpected[:4]}"
                              f"{' ...' if len(unexpected) > 4 else ''} (ESM-1/ESM-1b/MSA/ESMFold files "
                              "have other architectures; only ESM-2 is supported)")
    return out


def ours_to_esm2(state: dict[str, Tensor], cfg: EncoderConfig) -> dict[str, Tensor]:
    """Ours -> fair-esm ESM2 state dict (module names, with the tied lm_head.weight and rotary buffers).
    A model without a contact head gets fair-esm's with a zero (unfitted) regression."""
    out: dict[str, Tensor] = {}
    d = cfg.embed_dim
    unfitted = {f"heads.{HEAD_NAME}.{k}": v for k, v in ContactHead.for_config(cfg).state_dict().items()}
    state = {**unfitted, **state}
    for ours, theirs in esm2_names(cfg.num_layers):
        tensor = state[ours].detach().cpu()
        if isinstance(theirs, tuple):
            for name, part in zip(theirs, tensor.split(d, dim=0), strict=True):
                out[name] = part.clone()
        else:
            out[theirs] = tensor.clone()
    out[TIED] = out["embed_tokens.weight"]
    inv_freq = RotaryEmbedding(cfg.head_dim, cfg.rotary_base).inv_freq
    for i in range(cfg.num_layers):
        out[_inv_freq_name(i)] = inv_freq.clone()
    return out


# --- configuration ---------------------------------------------------------------------------------
def _size_name(num_layers: int, embed_dim: int, num_heads: int, fallback: str) -> str:
    for name, shape in SIZES.items():
        if (shape["num_layers"], shape["embed_dim"], shape["num_heads"]) == (num_layers, embed_dim, num_heads):
            return name
    return fallback


def esm2_config(num_layers: int, embed_dim: int, num_heads: int, token_dropout: bool = True,
                name: str | None = None, **extra: Any) -> EncoderConfig:
    alphabet = ProteinAlphabet()
    return EncoderConfig(
        name=name or _size_name(num_layers, embed_dim, num_heads, "esm2_custom"),
        num_layers=num_layers, embed_dim=embed_dim, num_heads=num_heads, ffn_dim=4 * embed_dim,
        vocab_size=alphabet.vocab_size, pad_id=alphabet.pad_id, mask_id=alphabet.mask_id,
        max_length=ESM2_MAX_LENGTH, token_dropout=bool(token_dropout), extra=dict(extra),
        **_ESM2_FIXED,
    )


def _field(obj: Any, name: str, source: str) -> Any:
    value = obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)
    if value is None:
        raise CheckpointError(f"{source}: cfg['model'] has no {name!r}: not an ESM-2 configuration")
    return value


def check_exportable(cfg: EncoderConfig, tokenizer: Tokenizer | None = None) -> None:
    """Raise ``ValueError`` naming the field when ``cfg`` cannot be written as an ESM-2 file."""
    alphabet = ProteinAlphabet()
    problems = []
    if cfg.ffn_dim != 4 * cfg.embed_dim:
        problems.append(f"ffn_dim={cfg.ffn_dim} (ESM-2 uses 4 x embed_dim = {4 * cfg.embed_dim})")
    for key, value in _ESM2_FIXED.items():
        if not math.isclose(getattr(cfg, key), value, rel_tol=1e-9):
            problems.append(f"{key}={getattr(cfg, key)} (ESM-2: {value})")
    for key in ("vocab_size", "pad_id", "mask_id"):
        if getattr(cfg, key) != getattr(alphabet, key):
            problems.append(f"{key}={getattr(cfg, key)} (ESM-1b alphabet: {getattr(alphabet, key)})")
    if tokenizer is not None and tokenizer.to_dict() != alphabet.to_dict():
        problems.append(f"tokenizer {tokenizer.to_dict().get('kind')!r} is not the ESM-1b protein alphabet")
    if problems:
        raise ValueError(f"model {cfg.name!r} cannot be written as a fair-esm ESM-2 checkpoint: "
                         + "; ".join(problems))


def check_heads(net: MaskedLM, target: str = "a fair-esm ESM-2 checkpoint") -> None:
    """An ESM-2 file holds the contact head and no other: refuse to drop a head silently."""
    others = sorted(set(net.heads) - {HEAD_NAME})
    if others:
        raise ValueError(f"heads {others} cannot be written into {target} (it holds "
                         f"only the contact regression, heads[{HEAD_NAME!r}]); save_pretrained keeps them")


# --- in-memory fair-esm modules ---------------------------------------------------------------------
def from_esm2_module(model: Any) -> MaskedLM:
    """A fair-esm ``esm.model.esm2.ESM2`` (in memory) -> ``MaskedLM`` with the same weights."""
    cls_name = type(model).__name__
    if cls_name != "ESM2":
        raise ValueError(f"expected a fair-esm ESM2 module, got {cls_name} (only ESM-2 is supported)")
    cfg = esm2_config(model.num_layers, model.embed_dim, model.attention_heads, model.token_dropout,
                      source="fair-esm ESM2 module")
    net = MaskedLM(cfg)
    attach_contact_head(net)
    state = esm2_to_ours(model.state_dict(), cfg.num_layers, cfg.num_heads,
                         source=f"fair-esm {cls_name} module", require_contact=True)
    net.load_state_dict(state)
    return net.eval()


def to_esm2_module(net: MaskedLM) -> Any:
    """``MaskedLM`` -> fair-esm ``ESM2`` with the same weights (fair-esm imported lazily)."""
    from esm.model.esm2 import ESM2

    cfg = net.config
    check_exportable(cfg)
    check_heads(net)
    model = ESM2(num_layers=cfg.num_layers, embed_dim=cfg.embed_dim, attention_heads=cfg.num_heads,
                 alphabet="ESM-1b", token_dropout=cfg.token_dropout)
    model.load_state_dict(ours_to_esm2(net.state_dict(), cfg), strict=True)
    return model.eval()


# --- files -------------------------------------------------------------------------------------------
def looks_like_fair_esm(obj: Any) -> bool:
    return isinstance(obj, dict) and isinstance(obj.get("model"), dict) and ("cfg" in obj or "args" in obj)


def _strip(state: dict[str, Any]) -> dict[str, Tensor]:
    return {_PREFIX_RE.sub("", k): v for k, v in state.items() if isinstance(v, Tensor)}


def _from_loaded(obj: Any, path: Path, regression: dict[str, Tensor] | None) -> Checkpoint:
    source = str(path)
    if not looks_like_fair_esm(obj):
        raise CheckpointError(f"{source}: not a fair-esm checkpoint (expected a dict with 'model' and 'cfg')")
    if obj.get("cfg") is None:
        arch = getattr(obj.get("args"), "arch", None) if obj.get("args") is not None else None
        raise CheckpointError(f"{source}: a fair-esm checkpoint of architecture {arch!r} (ESM-1, ESM-1b, ESM-1v "
                              "or MSA Transformer), not ESM-2: only ESM-2 checkpoints can be imported")
    model_cfg = obj["cfg"].get("model") if isinstance(obj["cfg"], dict) else None
    if model_cfg is None:
        raise CheckpointError(f"{source}: cfg has no 'model' entry: not an ESM-2 checkpoint")
    num_layers = int(_field(model_cfg, "encoder_layers", source))
    embed_dim = int(_field(model_cfg, "encoder_embed_dim", source))
    num_heads = int(_field(model_cfg, "encoder_attention_heads", source))
    token_dropout = bool(_field(model_cfg, "token_dropout", source))
    state = _strip(obj["model"])
    if regression is not None:
        state.update(_strip(regression))
    try:
        cfg = esm2_config(num_layers, embed_dim, num_heads, token_dropout,
                          name=None, source="fair-esm ESM-2", file=path.name,
                          contact_regression=regression is not None)
    except ValueError as err:
        raise CheckpointError(f"{source}: impossible ESM-2 shape ({err})") from err
    cfg = restore_config(obj.get(CONFIG_KEY), cfg, f"{source}: {CONFIG_KEY}")
    ours = esm2_to_ours(state, num_layers, num_heads, source=source, require_contact=regression is not None)
    if regression is None:
        log.warning("%s: no %s beside it: contact predictions will be meaningless (0.5 everywhere)",
                    source, regression_path(path).name)
    return esm2_checkpoint(cfg, ours, path)


# fields a file states itself: our saved config must agree with them
_STATED = ("num_layers", "embed_dim", "num_heads", "ffn_dim", "vocab_size", "token_dropout")


def restore_config(saved: Any, cfg: EncoderConfig, source: str) -> EncoderConfig:
    """Our exact config (name, max_length, extra...) kept beside the weights on export, when it
    agrees with what the file states (``cfg``); ``cfg`` when nothing was kept."""
    if not (isinstance(saved, dict) and isinstance(saved.get("model"), dict)):
        return cfg
    try:
        mine = EncoderConfig.from_dict(saved["model"])
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{source}: invalid entry ({err})") from err
    differ = [f"{k}={getattr(mine, k)} (file: {getattr(cfg, k)})" for k in _STATED if getattr(mine, k) != getattr(cfg, k)]
    if differ:
        raise CheckpointError(f"{source}: disagrees with the file's own configuration: {', '.join(differ)}")
    return mine


def esm2_checkpoint(cfg: EncoderConfig, ours: dict[str, Tensor], path: Path) -> Checkpoint:
    """The ``Checkpoint`` of ESM-2 weights in our names: the ESM-1b alphabet, the contact head
    (unfitted, zero, when the weights have none)."""
    vocab = ours["encoder.embed_tokens.weight"].shape[0]
    if vocab != cfg.vocab_size:
        raise CheckpointError(f"{path}: vocabulary of {vocab} tokens; ESM-2 uses the 33-token ESM-1b alphabet")
    head = ContactHead.for_config(cfg)
    for name, value in head.state_dict().items():
        ours.setdefault(f"heads.{HEAD_NAME}.{name}", value)
    heads = {HEAD_NAME: {"kind": head.kind, "args": head.to_dict()}}
    return Checkpoint(cfg, ProteinAlphabet(), ours, heads, path)


def load_esm2_checkpoint(path: str | Path, contact_regression: str | Path | None = None
                         ) -> tuple[MaskedLM, ProteinAlphabet]:
    """A fair-esm ESM-2 ``.pt`` (e.g. ``esm2_t6_8M_UR50D.pt``) -> (MaskedLM, alphabet).

    The contact regression is read from ``contact_regression`` or, as fair-esm does, from
    ``<stem>-contact-regression.pt`` beside the file when it exists.
    """
    path = Path(path)
    obj = safe_torch_load(path, SAFE_GLOBALS)
    return build(_load_with_regression(obj, path, contact_regression)), ProteinAlphabet()


def _load_with_regression(obj: Any, path: Path, contact_regression: str | Path | None = None) -> Checkpoint:
    reg_path = Path(contact_regression) if contact_regression else regression_path(path)
    regression = None
    if contact_regression or reg_path.is_file():
        reg = safe_torch_load(reg_path, SAFE_GLOBALS)
        if not isinstance(reg, dict) or not isinstance(reg.get("model"), dict):
            raise CheckpointError(f"{reg_path}: not a fair-esm contact regression (expected {{'model': ...}})")
        regression = reg["model"]
    return _from_loaded(obj, path, regression)


def _fields_tensor(**fields: Any) -> Tensor:
    """fair-esm reads ``cfg["model"].encoder_layers`` by attribute. ``argparse.Namespace`` (what
    fairseq wrote) is refused by torch >= 2.6's default ``weights_only`` load; a tensor is not, and
    its Python attributes travel with it. So an empty tensor carries the fields: the file loads
    with plain ``esm.pretrained.load_model_and_alphabet_local`` and no allow-list."""
    carrier = torch.empty(0)
    for key, value in fields.items():
        setattr(carrier, key, value)
    return carrier


def save_esm2_checkpoint(net: MaskedLM, path: str | Path, tokenizer: Tokenizer | None = None
                         ) -> tuple[Path, Path]:
    """Write ``path`` (e.g. ``esm2_t6_8M_mine.pt``) and its ``-contact-regression.pt`` in fair-esm's
    layout; ``esm.pretrained.load_model_and_alphabet_local(path)`` loads them. Returns both paths."""
    path = Path(path)
    if path.suffix != ".pt" or not path.stem.startswith("esm2"):
        raise ValueError(f"{path}: fair-esm picks its ESM-2 loader by file name: the name must start with "
                         "'esm2' and end with '.pt' (e.g. esm2_t6_8M_mine.pt)")
    cfg = net.config
    check_exportable(cfg, tokenizer)
    check_heads(net)
    esm_state = ours_to_esm2(net.state_dict(), cfg)
    body = {}
    for name, tensor in esm_state.items():
        if name in CONTACT:
            continue
        prefix = FAIRSEQ_PREFIXES[1] if name.startswith("lm_head.") else FAIRSEQ_PREFIXES[0]
        body[prefix + name] = tensor
    fields = dict(encoder_layers=cfg.num_layers, encoder_embed_dim=cfg.embed_dim,
                  encoder_ffn_embed_dim=cfg.ffn_dim, encoder_attention_heads=cfg.num_heads,
                  token_dropout=cfg.token_dropout, max_positions=cfg.max_length - 2, arch="esm2")
    data = {"model": body, "cfg": {"model": _fields_tensor(**fields)},
            CONFIG_KEY: {"model": cfg.to_dict(), "tokenizer": ProteinAlphabet().to_dict()}}
    path.parent.mkdir(parents=True, exist_ok=True)
    reg_path = regression_path(path)
    for target, payload in ((path, data), (reg_path, {"model": {k: esm_state[k] for k in CONTACT}})):
        tmp = target.with_name(target.name + ".tmp")
        torch.save(payload, tmp)
        tmp.replace(target)
    return path, reg_path


register_format(ForeignFormat(
    name="fair-esm ESM-2 .pt",
    accepts=looks_like_fair_esm,
    load=lambda obj, path: _load_with_regression(obj, Path(path)),
    safe_globals=SAFE_GLOBALS,
))
