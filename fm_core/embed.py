"""Bulk embeddings (``fm-embed``): a stream of records -> per-sequence mean and, optionally,
per-residue representations of chosen layers, written as resumable safetensors shards.

Pipeline, with memory bounded by one chunk whatever the input size:

1. records are read in chunks (``chunk_records`` / ``chunk_residues``), validated against the
   bad-input policy (invalid residues, empty records, duplicate ids: error, or skip and count);
2. a record longer than the model's context is cut into overlapping windows (``plan_windows``);
3. the windows of a chunk are sorted by length and cut into batches under a token budget
   (``TokenBudgetBatchSampler``, the sampler pre-training uses), so padding is a few percent;
4. the encoder runs without the LM head, under ``torch.inference_mode`` (SDPA attention);
5. each residue takes its representation from the window where it is most central (overlaps are
   split at their midpoint), so every residue away from the true ends sees at least half the
   overlap of context on both sides; the mean embedding averages those residues (specials excluded);
6. a shard per chunk is written atomically, then ``index.tsv`` (id -> shard, row) and
   ``progress.json`` are updated: a rerun of the same job resumes after the last committed shard.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import os
import resource
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.numpy import load_file, save_file

from fm_core.batching import ReadStats, TokenBudgetBatchSampler
from fm_core.locks import DirectoryLock
from fm_core.model import MaskedLM
from fm_core.padding import pad_batch
from fm_core.summary import REJECTED_FILE, REJECTED_HEADER, print_summary, rejected_counts, rejected_rows
from fm_core.tokenizer import InvalidRecordError, Tokenizer

log = logging.getLogger(__name__)
FORMAT = "fm-embed/1"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# precision -> compute dtype of everything that is not a quantised linear layer
PRECISIONS = {**DTYPES, "int8": torch.float32}


def resolve_precision(precision: str, device: str | torch.device = "cpu") -> str:
    """``auto`` -> ``bfloat16`` on a CPU with AVX512-BF16 instructions, with or without AMX tiles
    (bench/embed_peers.json, a Xeon with AMX: 1.98x transformers SDPA in CPU-s against float32's
    1.23x; bench/embed_peers_zen4.json, an AMD EPYC with AVX512-BF16 and no AMX: 1.82x against
    1.44x; min cosine 0.99997 of the float32 embeddings on both), else ``float32`` (on AVX-512
    without BF16, bf16 matrix products ran 4x slower than float32 on this project's other CPU;
    GPUs are not measured yet). Any other value is returned as it is."""
    if precision != "auto":
        return precision
    if torch.device(device).type == "cpu" and torch.cpu._is_avx512_bf16_supported():
        return "bfloat16"
    return "float32"


def plan_windows(n: int, width: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """Windows ``(start, end, own_start, own_end)`` covering ``n`` residues with at most ``width``
    each; consecutive windows share at least ``overlap`` residues; the residues a window *owns*
    (whose representation it provides) end at the midpoint of its overlap with the next one."""
    if n <= width:
        return [(0, n, 0, n)]
    if not 0 <= overlap < width:
        raise ValueError(f"window overlap {overlap} must be in [0, {width}) (the window width)")
    stride = width - overlap
    starts = list(range(0, n - width, stride)) + [n - width]
    cuts = [0] + [(starts[k + 1] + starts[k] + width) // 2 for k in range(len(starts) - 1)] + [n]
    return [(s, s + width, cuts[k], cuts[k + 1]) for k, s in enumerate(starts)]


@dataclass
class Embedded:
    id: str
    length: int
    windows: int
    mean: dict[int, np.ndarray]  # layer -> (D,)
    residues: dict[int, np.ndarray] | None  # layer -> (length, D)


class Embedder:
    """Token-budget, length-bucketed, windowed inference of chosen layers of a ``MaskedLM``.

    The caller's ``net`` is left as it was (training mode, dtype, device): where the precision or
    device asks for a cast, or the net is in training mode, the Embedder works on its own copy.
    ``inplace=True`` casts and switches the given module itself (no copy: what a CLI that loaded
    the model for this job alone wants)."""

    def __init__(self, net: MaskedLM, tokenizer: Tokenizer, layers: Sequence[int] = (-1,), *,
                 per_residue: bool = False, max_tokens: int = 16384, max_length: int | None = None,
                 window_overlap: int | None = None, precision: str = "float32",
                 max_batch_size: int | None = None, device: str | torch.device = "cpu", inplace: bool = False):
        cfg = net.config
        self.layers = sorted({int(x) if int(x) >= 0 else cfg.num_layers + 1 + int(x) for x in layers})
        bad = [x for x in self.layers if not 0 <= x <= cfg.num_layers]
        if bad or not self.layers:
            raise ValueError(f"layers {list(layers)}: the model has layers 0..{cfg.num_layers} (-1 = last)")
        precision = resolve_precision(precision, device)
        if precision not in PRECISIONS:
            raise ValueError(f"precision {precision!r}: choose auto or one of {sorted(PRECISIONS)}")
        self.precision = precision
        self.tok = tokenizer
        probe_id = int(tokenizer.random_ids[0])
        probe = tokenizer.add_special_tokens(np.array([probe_id], dtype=np.int64))
        self.prefix = int(np.flatnonzero(probe == probe_id)[0])  # specials before the first residue
        self.n_special = tokenizer.num_special_added
        self.max_length = int(max_length or cfg.max_length)
        self.width = self.max_length - self.n_special
        if self.width < 2:
            raise ValueError(f"max_length {self.max_length} leaves no room for residues")
        self.overlap = self.width // 4 if window_overlap is None else int(window_overlap)
        if not 0 <= self.overlap < self.width:
            raise ValueError(f"window_overlap {self.overlap} must be in [0, {self.width})")
        if max_tokens < self.max_length:
            raise ValueError(f"max_tokens {max_tokens} is below max_length {self.max_length}")
        self.max_tokens, self.max_batch_size = max_tokens, max_batch_size
        self.per_residue = per_residue
        self.device = torch.device(device)
        self.dtype = PRECISIONS[precision]
        if not inplace and _needs_change(net, self.device, self.dtype):
            import copy

            net = copy.deepcopy(net)
        self.net = net.eval().to(self.device, self.dtype)
        self.encoder = self.net.encoder
        if precision == "int8":  # linear layers in int8 (a quantised copy; fm_core.quant)
            if self.device.type != "cpu":
                raise ValueError(f"precision int8 runs on the CPU only, not on {self.device}")
            from fm_core.quant import quantize_encoder_int8

            self.encoder = quantize_encoder_int8(self.net.encoder)
        self.dim = cfg.embed_dim

    def _tokens(self, arrays: list[np.ndarray]) -> torch.Tensor:
        return pad_batch([self.tok.add_special_tokens(a) for a in arrays], self.tok.pad_id).to(self.device)

    @torch.inference_mode()
    def embed(self, records: Sequence[tuple[str, np.ndarray]],
              on_batch: Callable[[int], None] | None = None) -> list[Embedded]:
        """Embed one chunk of (id, token ids without specials); results in input order."""
        samples = [(r, *w) for r, (_, ids) in enumerate(records)
                   for w in plan_windows(len(ids), self.width, self.overlap)]
        if not samples:
            return []
        lengths = np.array([e - s + self.n_special for _, s, e, _, _ in samples], dtype=np.int64)
        sampler = TokenBudgetBatchSampler(lengths, self.max_tokens, shuffle=False,
                                          max_batch_size=self.max_batch_size)
        n_rec = len(records)
        sums = {layer: torch.zeros(n_rec, self.dim, dtype=torch.float64) for layer in self.layers}
        residues = ({layer: [np.empty((len(ids), self.dim), dtype=np.float32) for _, ids in records]
                     for layer in self.layers} if self.per_residue else None)
        windows = np.zeros(n_rec, dtype=np.int64)
        for batch in sampler:
            idx = [i for i, _ in batch]
            tokens = self._tokens([records[samples[i][0]][1][samples[i][1] : samples[i][2]] for i in idx])
            reps = self.encoder(tokens, repr_layers=self.layers)["representations"]
            for layer in self.layers:
                rep = reps[layer].float().cpu()  # (B, L, D)
                for row, i in enumerate(idx):
                    r, start, _, own_start, own_end = samples[i]
                    a, b = self.prefix + own_start - start, self.prefix + own_end - start
                    sums[layer][r] += rep[row, a:b].sum(0, dtype=torch.float64)
                    if residues is not None:
                        residues[layer][r][own_start:own_end] = rep[row, a:b].numpy()
            for i in idx:
                windows[samples[i][0]] += 1
            if on_batch is not None:
                on_batch(int(sum(samples[i][4] - samples[i][3] for i in idx)))
        out = []
        for r, (rid, ids) in enumerate(records):
            mean = {layer: (sums[layer][r] / len(ids)).float().numpy() for layer in self.layers}
            per_res = {layer: residues[layer][r] for layer in self.layers} if residues is not None else None
            out.append(Embedded(rid, len(ids), int(windows[r]), mean, per_res))
        return out


class HashedIdSet:
    """Record ids seen so far, as 64-bit hashes in sorted numpy runs (8 bytes per id, not a Python
    object each): duplicate detection over millions of records in bounded, small memory."""

    def __init__(self, flush_every: int = 65536):
        self.pending: set[int] = set()
        self.runs: list[np.ndarray] = []
        self.flush_every = flush_every

    @staticmethod
    def _hash(rid: str) -> int:
        return int.from_bytes(hashlib.blake2b(rid.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")

    def add(self, rid: str) -> bool:
        """Add ``rid``; False when it was already there."""
        h = self._hash(rid)
        if h in self.pending:
            return False
        key = np.uint64(h)
        for run in self.runs:
            j = np.searchsorted(run, key)
            if j < len(run) and run[j] == key:
                return False
        self.pending.add(h)
        if len(self.pending) >= self.flush_every:
            self._flush()
        return True

    def _flush(self) -> None:
        self.runs.append(np.sort(np.fromiter(self.pending, dtype=np.uint64, count=len(self.pending))))
        self.pending.clear()
        while len(self.runs) > 1 and len(self.runs[-2]) <= 2 * len(self.runs[-1]):  # merge like a binary counter
            b, a = self.runs.pop(), self.runs.pop()
            self.runs.append(np.sort(np.concatenate([a, b])))

    def __len__(self) -> int:
        return len(self.pending) + sum(len(r) for r in self.runs)


def validated_chunks(stream: Iterable[tuple[str, str]], tokenizer: Tokenizer, source: str, stats: ReadStats,
                     seen: HashedIdSet, *, on_invalid: str = "error", skip: int = 0,
                     chunk_records: int = 4096, chunk_residues: int = 1_000_000,
                     rejections: list[tuple[str, str, str]] | None = None,
                     ) -> Iterator[tuple[list[tuple[str, np.ndarray]], int]]:
    """Chunks of valid (id, token ids) and the number of input records consumed so far.

    The first ``skip`` records (already committed by an earlier run) are only re-registered as
    seen ids. A record is rejected for an unknown residue (``invalid``), no residue (``empty``),
    no id (``no_id``) or an id seen before (``duplicate_id``): an error naming the file, record
    and reason (``on_invalid="error"``), or skipped and counted in ``stats`` (``"skip"``; then
    (record, reason, message) is appended to ``rejections`` when given).
    """
    if on_invalid not in ("error", "skip"):
        raise ValueError(f"on_invalid must be 'error' or 'skip', got {on_invalid!r}")
    chunk: list[tuple[str, np.ndarray]] = []
    residues, consumed = 0, 0

    def reject(reason: str, err: InvalidRecordError) -> None:
        if on_invalid == "error":
            raise err
        stats.reject(reason, str(err))
        if rejections is not None:
            rejections.append((err.record or "", reason, err.reason))

    for rid, text in stream:
        consumed += 1
        fresh = seen.add(rid)
        if consumed <= skip:
            continue
        stats.read += 1
        if not rid:
            reject("no_id", InvalidRecordError("record without an id", source=source, record=f"#{consumed}"))
            continue
        if not fresh:
            reject("duplicate_id", InvalidRecordError("duplicate id (seen earlier in the input)",
                                                      source=source, record=rid))
            continue
        try:
            ids = tokenizer.encode(text, record=rid, source=source)
        except InvalidRecordError as err:
            reject("invalid", err)
            continue
        if len(ids) == 0:
            reject("empty", InvalidRecordError("empty record (no residues)", source=source, record=rid))
            continue
        stats.kept += 1
        chunk.append((rid, ids))
        residues += len(ids)
        if len(chunk) >= chunk_records or residues >= chunk_residues:
            yield chunk, consumed
            chunk, residues = [], 0
    if chunk or consumed > skip:
        yield chunk, consumed


class ShardStore:
    """``out_dir``: ``shards/shard-NNNNN.safetensors``, ``index.tsv``, ``rejected.tsv``, ``progress.json``,
    ``manifest.json``.

    A shard holds ``mean.layer{L}`` (N, D), ``lengths`` (N,), and with per-residue output
    ``residues.layer{L}`` (sum of lengths, D) with ``offsets`` (N+1,): rows of record i are
    ``offsets[i]:offsets[i+1]``. ``index.tsv`` maps id -> shard, row. Commit order: shard file
    (atomic rename), index and rejected rows (fsync), then ``progress.json`` (atomic): whatever a crash leaves
    beyond the last ``progress.json`` is discarded on resume.
    """

    def __init__(self, out_dir: str | Path, signature: dict[str, Any], *, overwrite: bool = False):
        self.dir = Path(out_dir)
        self.shard_dir = self.dir / "shards"
        self.index_path = self.dir / "index.tsv"
        self.progress_path = self.dir / "progress.json"
        self.rejected_path = self.dir / REJECTED_FILE
        self.signature = signature
        self.shard_dir.mkdir(parents=True, exist_ok=True)
        state = None
        if self.progress_path.is_file() and not overwrite:
            state = json.loads(self.progress_path.read_text())
            if state.get("signature") != signature:
                diff = sorted(k for k in set(signature) | set(state.get("signature", {}))
                              if signature.get(k) != state.get("signature", {}).get(k))
                raise ValueError(f"{self.dir} holds another embedding job (differs in {diff}); "
                                 "use a new output directory or overwrite=true")
        if state is None:
            state = {"signature": signature, "shards": 0, "consumed": 0, "index_bytes": 0,
                     "embedded": 0, "residues": 0, "windowed": 0, "read": 0, "rejected": {},
                     "finished": False, "seconds": 0.0}
            for old in self.shard_dir.glob("shard-*.safetensors"):
                old.unlink()
            self.index_path.write_text("id\tshard\trow\tlength\twindows\n")
            state["index_bytes"] = self.index_path.stat().st_size
        if state.get("rejected_bytes") is None or not self.rejected_path.is_file():
            self.rejected_path.write_text(REJECTED_HEADER, encoding="utf-8")
            state["rejected_bytes"] = self.rejected_path.stat().st_size
        self.state = state
        self.resumed = state["shards"] > 0 or state["consumed"] > 0
        # discard what a crash left after the last commit
        for path, size in ((self.index_path, state["index_bytes"]), (self.rejected_path, state["rejected_bytes"])):
            with open(path, "r+b") as fh:
                fh.truncate(size)
        for path in self.shard_dir.glob("shard-*"):
            if path.name.endswith(".tmp") or int(path.name.split("-")[1].split(".")[0]) >= state["shards"]:
                path.unlink()

    def shard_name(self, k: int) -> str:
        return f"shard-{k:05d}.safetensors"

    def commit(self, results: list[Embedded], consumed: int, stats: ReadStats, layers: list[int],
               out_dtype: np.dtype, seconds: float, rejections: list[tuple[str, str, str]] | None = None) -> None:
        k = self.state["shards"]
        if rejections:
            with open(self.rejected_path, "a", encoding="utf-8") as fh:
                fh.write(rejected_rows(rejections))
                fh.flush()
                os.fsync(fh.fileno())
            rejections.clear()
        if results:
            arrays: dict[str, np.ndarray] = {"lengths": np.array([e.length for e in results], dtype=np.int64)}
            for layer in layers:
                arrays[f"mean.layer{layer}"] = np.stack([e.mean[layer] for e in results]).astype(out_dtype)
            if results[0].residues is not None:
                arrays["offsets"] = np.concatenate([[0], np.cumsum(arrays["lengths"])]).astype(np.int64)
                for layer in layers:
                    arrays[f"residues.layer{layer}"] = np.concatenate(
                        [e.residues[layer] for e in results]).astype(out_dtype)
            tmp = self.shard_dir / (self.shard_name(k) + ".tmp")
            save_file(arrays, str(tmp), metadata={"format": FORMAT, "records": str(len(results))})
            os.replace(tmp, self.shard_dir / self.shard_name(k))
            with open(self.index_path, "a", encoding="utf-8") as fh:
                for row, e in enumerate(results):
                    fh.write(f"{e.id}\t{self.shard_name(k)}\t{row}\t{e.length}\t{e.windows}\n")
                fh.flush()
                os.fsync(fh.fileno())
            self.state["shards"] = k + 1
        self.state.update(
            consumed=consumed, index_bytes=self.index_path.stat().st_size,
            rejected_bytes=self.rejected_path.stat().st_size,
            embedded=self.state["embedded"] + len(results),
            residues=self.state["residues"] + sum(e.length for e in results),
            windowed=self.state["windowed"] + sum(e.windows > 1 for e in results),
            read=stats.read, rejected=dict(stats.rejected), seconds=self.state["seconds"] + seconds)
        self._write_progress()

    def finish(self) -> None:
        self.state["finished"] = True
        self._write_progress()

    def _write_progress(self) -> None:
        tmp = self.progress_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.state, indent=2, sort_keys=True))
        os.replace(tmp, self.progress_path)


def read_embeddings(out_dir: str | Path, layer: int | None = None, per_residue: bool = False
                    ) -> tuple[list[str], np.ndarray | list[np.ndarray]]:
    """Convenience reader: (ids, means (N, D)) or (ids, [per-residue (length, D)]) of one layer.
    The files are plain safetensors + TSV; numpy alone reads them (see ``manifest.json``)."""
    out_dir = Path(out_dir)
    manifest = json.loads((out_dir / "manifest.json").read_text())
    layer = manifest["layers"][-1] if layer is None else layer
    rows = [line.split("\t") for line in (out_dir / "index.tsv").read_text().splitlines()[1:]]
    ids, values, cache = [], [], {}
    for rid, shard, row, *_ in rows:
        if shard not in cache:
            cache = {shard: load_file(str(out_dir / "shards" / shard))}
        arrays = cache[shard]
        ids.append(rid)
        i = int(row)
        if per_residue:
            values.append(arrays[f"residues.layer{layer}"][arrays["offsets"][i] : arrays["offsets"][i + 1]])
        else:
            values.append(arrays[f"mean.layer{layer}"][i])
    return ids, (values if per_residue else np.stack(values) if values else np.zeros((0, manifest["dim"])))


_M_MMAP_THRESHOLD = -3  # glibc mallopt parameter


def bound_heap_fragmentation(mmap_threshold: int = 1 << 20) -> None:
    """Tensors of ever-changing shapes fragment glibc's heap: after the first large free, glibc
    raises its mmap threshold (up to 32 MB), so later large blocks come from the heap, where freed
    holes are not reused or returned; RSS then ratchets up with the input size although nothing is
    kept (measured on the 100k input: 891 MB peak at 10k sequences, 1,292 MB at 100k; one 1M-residue
    chunk peaked 240-430 MB above the live data). A fixed threshold makes every block above it an
    mmap that is returned on free (chunk peaks within 50 MB of the live data). glibc only; a no-op
    elsewhere. Also returns what is free now (``malloc_trim``)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold))
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _needs_change(net: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> bool:
    """Whether ``net.eval().to(device, dtype)`` would change the module (mode, a dtype or a device)."""
    if any(m.training for m in net.modules()):
        return True
    for t in (*net.parameters(), *net.buffers()):
        if t.device.type != device.type or (device.index is not None and t.device.index != device.index):
            return True
        if t.is_floating_point() and t.dtype != dtype:
            return True
    return False


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kilobytes


def run_embedding(stream: Any, source: str, net: MaskedLM, tokenizer: Tokenizer, out_dir: str | Path, *,
                  layers: Sequence[int] = (-1,), per_residue: bool = False, on_invalid: str = "error",
                  max_tokens: int = 16384, max_length: int | None = None, window_overlap: int | None = None,
                  precision: str = "float32", out_dtype: str = "float32", max_batch_size: int | None = None,
                  chunk_records: int = 4096, chunk_residues: int = 1_000_000, max_shards: int | None = None,
                  overwrite: bool = False, progress: bool = True, signature: dict[str, Any] | None = None,
                  inplace: bool = False) -> dict[str, Any]:
    """Embed every record of ``stream`` (an iterable of (id, text), optionally with ``position``
    and ``total_bytes`` for the progress bar) into ``out_dir``; resumes a job left unfinished
    there. Stops after ``max_shards`` new shards when given (rerun to continue). ``inplace``: as
    ``Embedder``'s (the caller's ``net`` is cast and put in eval mode, no copy). Returns metrics."""
    from tqdm.auto import tqdm

    embedder = Embedder(net, tokenizer, layers, per_residue=per_residue, max_tokens=max_tokens,
                        max_length=max_length, window_overlap=window_overlap, precision=precision,
                        max_batch_size=max_batch_size, inplace=inplace)
    if out_dtype not in ("float32", "float16"):
        raise ValueError(f"out_dtype {out_dtype!r}: float32 or float16")
    sig = {**(signature or {}), "layers": embedder.layers, "per_residue": per_residue,
           "max_length": embedder.max_length, "window_overlap": embedder.overlap, "precision": embedder.precision,
           "out_dtype": out_dtype, "on_invalid": on_invalid}
    with DirectoryLock(out_dir, what="fm-embed output"):  # one writer: a second run fails at once
        store = ShardStore(out_dir, sig, overwrite=overwrite)
        bound_heap_fragmentation()
        out_dir = Path(out_dir)
        _write_manifest(out_dir, embedder, net, sig, per_residue=per_residue, out_dtype=out_dtype)
        stats = ReadStats(source)
        stats.read = store.state["read"]
        stats.kept = store.state["embedded"]
        stats.rejected.update(store.state["rejected"])
        new_shards, started, finished = 0, time.perf_counter(), store.state["finished"]
        started_cpu = time.process_time()
        total = getattr(stream, "total_bytes", None)
        bar = tqdm(total=total, unit="B", unit_scale=True, disable=not progress or finished,
                   desc=f"fm-embed {Path(source).name}")
        residues_done = [0]

        def on_batch(n: int) -> None:
            residues_done[0] += n
            if total is not None:
                bar.update(max(0, getattr(stream, "position", 0) - bar.n))
            bar.set_postfix(seqs=stats.kept, residues=residues_done[0], refresh=False)

        if not finished:
            if store.resumed:
                log.info("%s: resuming after %d records (%d shards)", out_dir, store.state["consumed"], store.state["shards"])
            seen, rejections = HashedIdSet(), []
            chunks = validated_chunks(stream, tokenizer, source, stats, seen, on_invalid=on_invalid,
                                      skip=store.state["consumed"], chunk_records=chunk_records,
                                      chunk_residues=chunk_residues, rejections=rejections)
            done = True
            for chunk, consumed in chunks:
                t0 = time.perf_counter()
                results = embedder.embed(chunk, on_batch=on_batch)
                store.commit(results, consumed, stats, embedder.layers, np.dtype(out_dtype), time.perf_counter() - t0,
                             rejections)
                new_shards += bool(results)
                del results
                bound_heap_fragmentation()
                if max_shards is not None and new_shards >= max_shards:
                    done = False  # a rerun continues (and finds the end if this was the last chunk)
                    break
            if done:
                store.finish()
        bar.close()
        stats.check()
        return _metrics(store, stats, time.perf_counter() - started, time.process_time() - started_cpu)


def model_fingerprint(net: torch.nn.Module) -> str:
    """A hash of the weights (rounded to bfloat16, so a float32 and a bfloat16 run of one model
    agree): the identity ``fm_core.index`` uses to refuse vectors of another model."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(net.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to(torch.bfloat16).float().cpu().numpy().tobytes())
    return "weights:" + digest.hexdigest()


def _write_manifest(out_dir: Path, embedder: Embedder, net: MaskedLM, sig: dict[str, Any], *,
                    per_residue: bool, out_dtype: str) -> None:
    manifest = {"format": FORMAT, "layers": embedder.layers, "dim": embedder.dim, "per_residue": per_residue,
                "dtype": out_dtype, "window": {"width": embedder.width, "overlap": embedder.overlap,
                                               "merge": "each residue from the window where it is most central"},
                "index": "index.tsv (id, shard, row, length, windows)", "shards": "shards/shard-NNNNN.safetensors",
                "arrays": {"mean.layer{L}": "(N, D)", "lengths": "(N,)",
                           **({"residues.layer{L}": "(sum lengths, D)", "offsets": "(N+1,)"} if per_residue else {})},
                "model": net.config.to_dict(), "model_fingerprint": model_fingerprint(net), "signature": sig}
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))


def _metrics(store: ShardStore, stats: ReadStats, this_run_seconds: float, this_run_cpu_seconds: float
             ) -> dict[str, Any]:
    state = store.state
    metrics: dict[str, Any] = {f"data/{k}": v for k, v in stats.as_dict("records").items()}
    metrics.update({
        "embed/finished": bool(state["finished"]),
        "embed/sequences": state["embedded"],
        "embed/residues": state["residues"],
        "embed/windowed_sequences": state["windowed"],
        "embed/shards": state["shards"],
        "embed/seconds": state["seconds"],
        "embed/sequences_per_second": state["embedded"] / max(state["seconds"], 1e-9),
        "embed/residues_per_second": state["residues"] / max(state["seconds"], 1e-9),
        "embed/this_run_seconds": this_run_seconds,
        "embed/this_run_cpu_seconds": this_run_cpu_seconds,  # all threads of this process (time.process_time)
        "embed/peak_rss_mb": peak_rss_mb(),
        "embed/resumed": store.resumed,
    })
    return metrics


def embed(cfg: Any) -> dict[str, Any]:
    """The ``fm-embed`` job (Hydra config ``embed.yaml``): writes shards, ``manifest.json`` and
    ``metrics.json`` into ``cfg.out``; rerunning the same command resumes an interrupted job."""
    from hydra.utils import instantiate

    from fm_core.export import load_pretrained
    from fm_core.summary import write_metrics

    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    out = Path(cfg.out)
    with DirectoryLock(out, what="fm-embed output"):  # before the model loads: a second run fails at once
        net, tokenizer = load_pretrained(cfg.checkpoint)
        stream = instantiate(cfg.reader)(cfg.input)
        source = Path(cfg.input)
        stat = source.stat()
        signature = {"input": str(source.resolve()), "input_bytes": stat.st_size, "input_mtime": int(stat.st_mtime),
                     "checkpoint": str(Path(cfg.checkpoint).resolve())}
        metrics = run_embedding(
            stream, str(source), net, tokenizer, out, layers=list(cfg.layers), per_residue=cfg.per_residue,
            on_invalid=cfg.on_invalid, max_tokens=cfg.max_tokens, max_length=cfg.max_length,
            window_overlap=cfg.window_overlap, precision=cfg.precision, out_dtype=cfg.out_dtype,
            max_batch_size=cfg.max_batch_size, chunk_records=cfg.chunk_records, chunk_residues=cfg.chunk_residues,
            max_shards=cfg.max_shards, overwrite=cfg.overwrite, progress=cfg.progress, signature=signature,
            inplace=True)  # the model was loaded for this job: cast it, no copy
        metrics["model/name"] = net.config.name
        write_metrics(out, metrics)
        print(f"embeddings: {out / 'manifest.json'} ({metrics['embed/sequences']} sequences, "
              f"{metrics['embed/shards']} shards, finished={metrics['embed/finished']})")
        print_summary("fm-embed", metrics["data/records_read"], metrics["data/records_kept"],
                      rejected_counts(metrics, "data/records_rejected_"), out / REJECTED_FILE)
    return metrics
