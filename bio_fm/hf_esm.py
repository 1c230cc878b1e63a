"""Hugging Face ``transformers`` ESM directories in and out.

Import: a local directory of ``EsmForMaskedLM``, ``EsmModel`` (no LM head) or the bodies of
``EsmForTokenClassification`` / ``EsmForSequenceClassification`` (``config.json`` +
``model.safetensors``, a sharded ``model.safetensors.index.json``, or ``pytorch_model.bin`` read
with ``weights_only``) becomes our ``MaskedLM`` with the ESM contact head. It is recognised by the
content of its ``config.json`` (``model_type`` / ``architectures``) and its weight names, never by
a file name, so every loader of ``fm_core.export`` (``fm-embed checkpoint=DIR``,
``fm-protein-score``, ``fm-predict-structure``, ``model.init_from=DIR``) reads it. Nothing is
downloaded and ``transformers`` is not needed to read one.

The names go through fair-esm's (``bio_fm.esm_compat``), where the mapping onto ours and its checks
(every tensor used, tied LM projection, rotary frequencies) are written once. What ``transformers``
computes and we must match (``models/esm/modeling_esm.py``): rotary q/k with ``rope_theta`` on
the query scaled first (the same rotation), token dropout with a mask ratio hard-coded to
0.15 * 0.8 and the observed ratio over ``attention_mask.sum(-1)`` (our non-padding count),
``layer_norm_eps`` from the config. Absolute position embeddings (ESM-1b), a LayerNorm before
the stem, decoders and ESMFold have no counterpart here and are refused.

Export (``save_hf_esm``): ``config.json``, ``model.safetensors``, the tokenizer (``vocab.txt``,
``tokenizer_config.json``, ``special_tokens_map.json``) and a model card ``README.md``; our exact
config rides along under ``fm_toolkit`` in ``config.json`` so ours -> HF -> ours is exact.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from bio_fm.alphabet import ProteinAlphabet
from bio_fm.esm_compat import (
    OUR_CONTACT,
    TIED,
    _inv_freq_name,
    check_heads,
    esm2_checkpoint,
    esm2_config,
    esm2_to_ours,
    ours_to_esm2,
    restore_config,
)
from fm_core.adapters import merged_state_dict
from fm_core.checkpoint import CheckpointError, atomic_write_bytes, safe_torch_load
from fm_core.config import EncoderConfig
from fm_core.export import Checkpoint, ForeignFormat, build, read_checkpoint, register_format
from fm_core.model import MaskedLM
from fm_core.tokenizer import Tokenizer

log = logging.getLogger(__name__)

CONFIG_NAME, VOCAB_NAME, CARD_NAME = "config.json", "vocab.txt", "README.md"
SAFETENSORS, SHARD_INDEX, TORCH_BIN = "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin"
CONFIG_KEY = "fm_toolkit"  # our config + provenance inside the HF config.json
BODIES = {"EsmForMaskedLM": True, "EsmModel": False, "EsmForTokenClassification": False,
          "EsmForSequenceClassification": False}  # architecture -> has the LM head
HF_MASK_RATIO = 0.15 * 0.8  # hard-coded in transformers' EsmEmbeddings
POSITION_OFFSET = 2  # HF's max_position_embeddings counts padding_idx + 1 positions ahead of the tokens
# transformers' EsmConfig defaults: what a config.json that omits a field means
HF_DEFAULTS = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
               "max_position_embeddings": 1026, "layer_norm_eps": 1e-12, "rope_theta": 10000.0,
               "position_embedding_type": "absolute", "token_dropout": False, "initializer_range": 0.02}

# --- the mapping: HF names -> fair-esm names (esm_compat maps those onto ours) --------------------
_HF_TOP = (
    ("esm.embeddings.word_embeddings.weight", "embed_tokens.weight"),
    ("esm.encoder.emb_layer_norm_after.weight", "emb_layer_norm_after.weight"),
    ("esm.encoder.emb_layer_norm_after.bias", "emb_layer_norm_after.bias"),
    ("esm.contact_head.regression.weight", "contact_head.regression.weight"),
    ("esm.contact_head.regression.bias", "contact_head.regression.bias"),
    ("lm_head.dense.weight", "lm_head.dense.weight"),
    ("lm_head.dense.bias", "lm_head.dense.bias"),
    ("lm_head.layer_norm.weight", "lm_head.layer_norm.weight"),
    ("lm_head.layer_norm.bias", "lm_head.layer_norm.bias"),
    ("lm_head.bias", "lm_head.bias"),
    ("lm_head.decoder.weight", TIED),
)
_HF_LAYER = (  # under esm.encoder.layer.{i}. -> under layers.{i}.
    ("attention.self.query", "self_attn.q_proj"),
    ("attention.self.key", "self_attn.k_proj"),
    ("attention.self.value", "self_attn.v_proj"),
    ("attention.output.dense", "self_attn.out_proj"),
    ("attention.LayerNorm", "self_attn_layer_norm"),
    ("intermediate.dense", "fc1"),
    ("output.dense", "fc2"),
    ("LayerNorm", "final_layer_norm"),
)
LM_HEAD = tuple(hf for hf, _ in _HF_TOP if hf.startswith("lm_head.") and hf != "lm_head.decoder.weight")
OPTIONAL = {"lm_head.decoder.weight", "esm.contact_head.regression.weight", "esm.contact_head.regression.bias"}
# weights of HF modules with no counterpart here, dropped with a note (prefix -> what)
DROPPED = {"esm.pooler.": "EsmModel's pooler", "classifier.": "the classifier"}
# buffers HF writes or ignores itself (absolute-position leftovers of rotary models, position ids)
IGNORED = re.compile(r"^esm\.embeddings\.(position_ids|position_embeddings\.weight)$")
_INV_FREQ = re.compile(r"^esm\.(?:encoder\.layer\.(\d+|\*)\.attention\.self\.)?rotary_embeddings\.inv_freq$")
_LEGACY_NORM = re.compile(r"(LayerNorm|layer_norm)\.(gamma|beta)$")  # what transformers 5 writes


def hf_names(num_layers: int) -> Iterator[tuple[str, str]]:
    """(HF name, fair-esm ESM2 name) of every tensor."""
    yield from _HF_TOP
    for i in range(num_layers):
        for hf, fair in _HF_LAYER:
            for kind in ("weight", "bias"):
                yield f"esm.encoder.layer.{i}.{hf}.{kind}", f"layers.{i}.{fair}.{kind}"


def canonical_name(name: str) -> str:
    """A key as ``EsmForMaskedLM`` names it: ``esm.`` before the body of an ``EsmModel`` file,
    LayerNorm ``weight``/``bias`` for the ``gamma``/``beta`` transformers 5 writes."""
    if not name.startswith(("esm.", "lm_head.", "classifier.")):
        name = "esm." + name
    return _LEGACY_NORM.sub(lambda m: f"{m[1]}.{'weight' if m[2] == 'gamma' else 'bias'}", name)


# --- configuration -----------------------------------------------------------------------------------
def _refuse_unrepresentable(spec: dict[str, Any], path: Path) -> str:
    """The architecture of an ESM ``config.json``; a clear error for what our encoder cannot be."""
    model_type, archs = spec.get("model_type"), spec.get("architectures") or []
    if model_type != "esm":
        raise CheckpointError(f"{path}: a Hugging Face {model_type!r} model ({', '.join(archs) or 'no architectures'}), "
                              "not ESM: only ESM-2 directories (model_type 'esm') can be imported")
    arch = archs[0] if archs else "EsmModel"
    problems = []
    if arch not in BODIES or len(archs) > 1:
        problems.append(f"architectures {archs} (supported: {', '.join(BODIES)})")
    if spec.get("is_folding_model"):
        problems.append("is_folding_model=true (ESMFold)")
    position = spec.get("position_embedding_type", HF_DEFAULTS["position_embedding_type"])
    if position != "rotary":
        problems.append(f"position_embedding_type={position!r} (ESM-1b style "
                        "learned absolute positions; our encoder is rotary, as ESM-2)")
    if spec.get("emb_layer_norm_before"):
        problems.append("emb_layer_norm_before=true (a LayerNorm before the stem, ESM-1b)")
    if spec.get("is_decoder") or spec.get("add_cross_attention"):
        problems.append("is_decoder/add_cross_attention (a decoder)")
    if problems:
        raise CheckpointError(f"{path}: cannot be represented by this toolkit's encoder: {'; '.join(problems)}")
    return arch


def _int_field(spec: dict[str, Any], key: str, path: Path) -> int:
    value = spec.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise CheckpointError(f"{path}: {key}={value!r}: a positive integer is required")
    return value


def hf_config(spec: dict[str, Any], path: Path, has_lm_head: bool) -> EncoderConfig:
    """Our ``EncoderConfig`` of an ESM ``config.json`` (the ESM-1b alphabet's ids are required)."""
    spec, alphabet = {**HF_DEFAULTS, **spec}, ProteinAlphabet()
    ids = {"vocab_size": alphabet.vocab_size, "pad_token_id": alphabet.pad_id, "mask_token_id": alphabet.mask_id}
    wrong = [f"{k}={spec.get(k)!r} (ESM alphabet: {v})" for k, v in ids.items() if spec.get(k) != v]
    if wrong:
        raise CheckpointError(f"{path}: the vocabulary differs from the ESM alphabet: {', '.join(wrong)}")
    layers, dim, heads = (_int_field(spec, k, path) for k in ("num_hidden_layers", "hidden_size", "num_attention_heads"))
    try:
        base = esm2_config(layers, dim, heads, bool(spec["token_dropout"]), source="Hugging Face ESM",
                           architecture=spec["architectures"][0] if spec.get("architectures") else "EsmModel",
                           **({} if has_lm_head else {"lm_head": "absent: zero head, uniform logits"}))
        return EncoderConfig.from_dict({
            **base.to_dict(), "ffn_dim": _int_field(spec, "intermediate_size", path),
            "layer_norm_eps": float(spec["layer_norm_eps"]), "rotary_base": float(spec["rope_theta"]),
            "max_length": _int_field(spec, "max_position_embeddings", path) - POSITION_OFFSET,
            "init_std": float(spec["initializer_range"]), "mask_ratio_train": HF_MASK_RATIO})
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: impossible ESM shape ({err})") from err


def check_vocab(directory: Path) -> None:
    """``vocab.txt``, when the directory has one, must be the ESM alphabet, token for token."""
    path = directory / VOCAB_NAME
    if not path.is_file():
        log.info("%s: no %s: the ESM alphabet is assumed (config.json's ids agree with it)", directory, VOCAB_NAME)
        return
    tokens = [t.strip() for t in path.read_text(encoding="utf-8", errors="replace").splitlines()]
    tokens = tokens[:-1] if tokens and not tokens[-1] else tokens
    expected = ProteinAlphabet().tokens
    if tokens != expected:
        at = next((i for i, (a, b) in enumerate(zip(tokens, expected, strict=False)) if a != b), min(len(tokens), len(expected)))
        got = tokens[at] if at < len(tokens) else "<end of file>"
        want = expected[at] if at < len(expected) else "<end of file>"
        raise CheckpointError(f"{path}: the tokenizer vocabulary differs from the ESM alphabet ({len(tokens)} tokens, "
                              f"ESM: {len(expected)}; line {at + 1} is {got!r}, ESM has {want!r})")


# --- weights -----------------------------------------------------------------------------------------
def _load_safetensors(path: Path) -> dict[str, Tensor]:
    try:
        return load_file(str(path))
    except (OSError, SafetensorError) as err:
        raise CheckpointError(f"{path}: missing, truncated or corrupt safetensors file ({err})") from err


def read_hf_weights(directory: Path) -> tuple[dict[str, Tensor], Path]:
    """The directory's tensors and the file they came from: ``model.safetensors``, its sharded
    index, or ``pytorch_model.bin`` (``weights_only``)."""
    if (directory / SAFETENSORS).exists():
        return _load_safetensors(directory / SAFETENSORS), directory / SAFETENSORS
    if (directory / SHARD_INDEX).is_file():
        try:
            shards = sorted(set(json.loads((directory / SHARD_INDEX).read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise CheckpointError(f"{directory / SHARD_INDEX}: unreadable shard index ({err})") from err
        state: dict[str, Tensor] = {}
        for shard in shards:
            state.update(_load_safetensors(directory / Path(shard).name))
        return state, directory / SHARD_INDEX
    if (directory / TORCH_BIN).exists():
        state = safe_torch_load(directory / TORCH_BIN)
        if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
            raise CheckpointError(f"{directory / TORCH_BIN}: not a state dict (name -> tensor)")
        return state, directory / TORCH_BIN
    raise CheckpointError(f"{directory}: no weights: none of {SAFETENSORS}, {SHARD_INDEX}, {TORCH_BIN} is there")


def _to_fair(state: dict[str, Tensor], cfg: EncoderConfig, source: Path) -> dict[str, Tensor]:
    """HF tensors -> fair-esm names; pooler/classifier dropped with a note; an absent LM head zero."""
    names = dict(hf_names(cfg.num_layers))
    fair: dict[str, Tensor] = {}
    dropped: set[str] = set()
    for key, tensor in state.items():
        name = canonical_name(key)
        freq = _INV_FREQ.match(name)
        if freq:
            fair[_inv_freq_name(0 if freq[1] in (None, "*") else int(freq[1]))] = tensor
        elif IGNORED.match(name):
            continue
        elif name.startswith(tuple(DROPPED)):
            dropped.add(next(what for prefix, what in DROPPED.items() if name.startswith(prefix)))
        else:
            fair[names.get(name, name)] = tensor
    if dropped:
        log.warning("%s: dropped %s (no counterpart in this toolkit: fit a head with fm-finetune)",
                    source, " and ".join(sorted(dropped)))
    required = [hf for hf, theirs in names.items() if hf not in OPTIONAL and theirs not in fair]
    if cfg.extra.get("lm_head"):
        required = [hf for hf in required if hf not in LM_HEAD]
        d = cfg.embed_dim
        zero = {"lm_head.dense.weight": torch.zeros(d, d), "lm_head.dense.bias": torch.zeros(d),
                "lm_head.layer_norm.weight": torch.ones(d), "lm_head.layer_norm.bias": torch.zeros(d),
                "lm_head.bias": torch.zeros(cfg.vocab_size)}
        fair = {**zero, **fair}
    if required:
        raise CheckpointError(f"{source}: not the weights config.json describes ({cfg.num_layers} layers): missing "
                              f"{required[:4]}{' ...' if len(required) > 4 else ''}")
    return fair


def check_shapes(ours: dict[str, Tensor], cfg: EncoderConfig, source: Path) -> None:
    """Every tensor has the shape the config implies (checked before any model is built)."""
    with torch.device("meta"):
        net = MaskedLM(cfg)
    expected = {**{k: v.shape for k, v in net.state_dict().items()},
                **{k: torch.Size([1, cfg.num_layers * cfg.num_heads] if k.endswith("weight") else [1])
                   for k in OUR_CONTACT}}
    wrong = [f"{k} {tuple(v.shape)} (config: {tuple(expected[k])})" for k, v in ours.items()
             if k in expected and v.shape != expected[k]]
    if wrong:
        raise CheckpointError(f"{source}: the weights disagree with the shapes in config.json: "
                              f"{'; '.join(wrong[:3])}{' ...' if len(wrong) > 3 else ''}")


def looks_like_hf(spec: dict[str, Any]) -> bool:
    """A ``config.json`` written by ``transformers`` (any architecture: others are refused by name)."""
    return "format" not in spec and ("model_type" in spec or "architectures" in spec)


def read_hf_esm(directory: str | Path, spec: dict[str, Any] | None = None) -> Checkpoint:
    """A local Hugging Face ESM directory -> ``Checkpoint`` (our names, float32), no model built."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: no such directory (a Hugging Face ESM directory holds config.json "
                              "and model.safetensors; nothing is downloaded)")
    config_path = directory / CONFIG_NAME
    if spec is None:
        try:
            spec = json.loads(config_path.read_text())
        except (OSError, ValueError) as err:
            raise CheckpointError(f"{config_path}: unreadable config ({err})") from err
    arch = _refuse_unrepresentable(spec, config_path)
    cfg = hf_config(spec, config_path, has_lm_head=BODIES[arch])
    cfg = restore_config(spec.get(CONFIG_KEY), cfg, f"{config_path}: {CONFIG_KEY}")
    check_vocab(directory)
    state, source = read_hf_weights(directory)
    fair = _to_fair(state, cfg, source)
    contact = "esm.contact_head.regression.weight" in {canonical_name(k) for k in state}
    try:
        ours = esm2_to_ours(fair, cfg.num_layers, cfg.num_heads, source=str(source), require_contact=contact,
                            rotary_base=cfg.rotary_base)
    except RuntimeError as err:  # q/k/v of different shapes
        raise CheckpointError(f"{source}: the weights disagree with the shapes in config.json ({err})") from err
    check_shapes(ours, cfg, source)
    if not contact:
        log.warning("%s: no contact head: contact predictions will be meaningless (0.5 everywhere)", source)
    return esm2_checkpoint(cfg, ours, directory)


# --- export ------------------------------------------------------------------------------------------
def check_hf_exportable(net: MaskedLM, tokenizer: Tokenizer) -> None:
    """Raise ``ValueError`` naming what ``transformers``' ESM cannot represent."""
    cfg, alphabet, problems = net.config, ProteinAlphabet(), []
    if tokenizer.to_dict() != alphabet.to_dict():
        problems.append(f"tokenizer {tokenizer.to_dict().get('kind')!r} is not the ESM alphabet")
    if (cfg.vocab_size, cfg.pad_id, cfg.mask_id) != (alphabet.vocab_size, alphabet.pad_id, alphabet.mask_id):
        problems.append(f"vocab_size/pad_id/mask_id {cfg.vocab_size}/{cfg.pad_id}/{cfg.mask_id} are not the ESM alphabet's")
    if cfg.token_dropout and not math.isclose(cfg.mask_ratio_train, HF_MASK_RATIO, rel_tol=1e-9):
        problems.append(f"token_dropout with mask_ratio_train={cfg.mask_ratio_train} (transformers hard-codes "
                        f"{HF_MASK_RATIO})")
    if cfg.causal:
        problems.append("causal=true (EsmForMaskedLM attends both ways)")
    if problems:
        raise ValueError(f"model {cfg.name!r} cannot be written as a Hugging Face EsmForMaskedLM: " + "; ".join(problems))
    check_heads(net, target="a Hugging Face ESM directory")


def hf_state(net: MaskedLM) -> dict[str, Tensor]:
    """Our weights in ``EsmForMaskedLM``'s names (the tied decoder left out, as transformers
    writes it; rotary frequencies per layer, the layout every transformers version reads)."""
    cfg = net.config
    to_hf = {fair: hf for hf, fair in hf_names(cfg.num_layers)}
    out = {}
    for name, tensor in ours_to_esm2(merged_state_dict(net), cfg).items():  # a LoRA adapter folded in
        if name == TIED:
            continue
        if name.endswith("rot_emb.inv_freq"):
            layer = name.split(".")[1]
            out[f"esm.encoder.layer.{layer}.attention.self.rotary_embeddings.inv_freq"] = tensor
        else:
            out[to_hf[name]] = tensor
    return {k: v.contiguous() for k, v in out.items()}


def hf_config_dict(cfg: EncoderConfig, card: dict[str, Any]) -> dict[str, Any]:
    return {
        "architectures": ["EsmForMaskedLM"], "model_type": "esm", "vocab_size": cfg.vocab_size,
        "pad_token_id": cfg.pad_id, "mask_token_id": cfg.mask_id, "eos_token_id": ProteinAlphabet().eos_id,
        "hidden_size": cfg.embed_dim, "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_heads,
        "intermediate_size": cfg.ffn_dim, "max_position_embeddings": cfg.max_length + POSITION_OFFSET,
        "position_embedding_type": "rotary", "rope_theta": cfg.rotary_base, "layer_norm_eps": cfg.layer_norm_eps,
        "token_dropout": cfg.token_dropout, "emb_layer_norm_before": False, "initializer_range": cfg.init_std,
        "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0, "tie_word_embeddings": True,
        "is_folding_model": False, "is_decoder": False, "dtype": "float32",
        CONFIG_KEY: {"model": cfg.to_dict(), "metadata": card},
    }


def _tokenizer_files(cfg: EncoderConfig) -> dict[str, bytes]:
    specials = {"cls_token": "<cls>", "eos_token": "<eos>", "pad_token": "<pad>", "mask_token": "<mask>",
                "unk_token": "<unk>"}
    tok_cfg = {"tokenizer_class": "EsmTokenizer", "model_max_length": cfg.max_length, **specials}
    return {VOCAB_NAME: "\n".join(ProteinAlphabet().tokens).encode(),
            "tokenizer_config.json": json.dumps(tok_cfg, indent=2).encode(),
            "special_tokens_map.json": json.dumps(specials, indent=2).encode()}


def model_card(cfg: EncoderConfig, card: dict[str, Any]) -> str:
    """README.md: what the export's metadata holds (training data, steps, validation perplexity,
    the command), "not recorded" for what it does not."""
    def get(*keys: str) -> str:
        return next((str(card[k]) for k in keys if card.get(k) not in (None, "")), "not recorded")

    rest = {k: v for k, v in card.items() if k not in _CARD_KEYS}
    lines = [
        "---", "library_name: transformers", "tags: [esm, protein, fm-toolkit]", "---", "",
        f"# {cfg.name}", "",
        f"An ESM-2-style protein masked language model ({cfg.num_layers} layers, {cfg.embed_dim} dims, "
        f"{cfg.num_heads} heads, {cfg.num_parameters():,} parameters) exported by fm-toolkit.", "",
        "```python", "from transformers import AutoTokenizer, EsmForMaskedLM",
        "model = EsmForMaskedLM.from_pretrained(path, local_files_only=True)",
        "tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)", "```", "",
        f"- training data: {get('data', 'train/data')}",
        f"- training steps: {get('train/steps', 'steps')}",
        f"- validation perplexity: {get('val/perplexity')}",
        f"- command: `{get('command')}`",
        f"- token dropout: {cfg.token_dropout}; context: {cfg.max_length} tokens",
        *(f"- {k}: {v}" for k, v in sorted(rest.items())), "",
    ]
    return "\n".join(lines)


_CARD_KEYS = ("data", "train/data", "train/steps", "steps", "val/perplexity", "command")


def save_hf_esm(net: MaskedLM, tokenizer: Tokenizer, directory: str | Path, card: dict[str, Any]) -> Path:
    """Write ``directory`` for ``EsmForMaskedLM.from_pretrained`` / ``AutoTokenizer.from_pretrained``
    (``local_files_only=True``); ``card`` (the export's metadata) fills the model card."""
    check_hf_exportable(net, tokenizer)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / (SAFETENSORS + ".tmp")
    save_file(hf_state(net), str(tmp), metadata={"format": "pt"})
    os.replace(tmp, directory / SAFETENSORS)
    files = {**_tokenizer_files(net.config), CARD_NAME: model_card(net.config, card).encode(),
             CONFIG_NAME: json.dumps(hf_config_dict(net.config, card), indent=2, sort_keys=True).encode()}
    for name, data in files.items():
        atomic_write_bytes(directory / name, data)
    return directory


def export_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata an fm-toolkit export records (``{}`` for other checkpoints)."""
    config = Path(path) / CONFIG_NAME if Path(path).is_dir() else None
    try:
        spec = json.loads(config.read_text()) if config is not None and config.is_file() else {}
    except (OSError, ValueError):
        return {}
    return spec.get("metadata") or (spec.get(CONFIG_KEY) or {}).get("metadata") or {}


def export_to_hf(source: str | Path, directory: str | Path) -> Path:
    """Any checkpoint ``fm_core.export`` reads -> a Hugging Face ESM directory, card from its metadata."""
    ckpt = read_checkpoint(source)
    return save_hf_esm(build(ckpt), ckpt.tokenizer, directory, card=export_metadata(source))


register_format(ForeignFormat(
    name="Hugging Face ESM directory",
    accepts=lambda obj: False,  # a directory format: no single file is one
    load=lambda obj, path: read_hf_esm(path),
    accepts_directory=looks_like_hf,
    load_directory=lambda directory, spec: read_hf_esm(directory, spec),
))

__all__ = ["check_hf_exportable", "export_to_hf", "hf_names", "read_hf_esm", "save_hf_esm"]
