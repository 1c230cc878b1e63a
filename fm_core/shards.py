"""Token shards on disk (Arrow IPC files, memory-mapped) and the map-style dataset that reads them.

``fm-prep`` writes each split of a corpus as ``<dir>/<split>/shard-00000.arrow ...`` plus
``<dir>/<split>/split.json`` (rows, tokens, SHA-256 per shard) and the tokenizer beside them
(``<dir>/tokenizer.json``, its ``to_dict()``). A shard has a list column ``tokens`` (regular ids,
no specials) and any per-record columns (``id``, ``cluster``...).

Why Arrow IPC and a map-style dataset: an uncompressed IPC file memory-maps with zero copies, so
the flat ``values`` + ``offsets`` buffers of the ``tokens`` column *are* the layout of
``SequenceDataset``; opening a 165M-token corpus costs milliseconds and no RAM beyond the page
cache, on every rank. Distribution across ranks stays where it already is:
``TokenBudgetBatchSampler`` gives each rank a disjoint share of the length-bucketed batches, so
no sample is duplicated across ranks and every rank sees the same deterministic per-sample seeds.

This module does not import torch (``fm-prep`` writes shards without it); the training side,
``ClusterSampledBatchSampler`` and ``ShardDataModule``, lives in ``fm_core.shard_data``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)

from fm_core.tokenizer import Tokenizer, tokenizer_from_dict

TOKENIZER_FILE = "tokenizer.json"
SPLIT_FILE = "split.json"
# layout version written into split.json; readers refuse others (files without one are version 1)
SHARD_FORMAT_VERSION = 1


def _token_type(vocab_size: int) -> pa.DataType:
    return pa.uint8() if vocab_size <= 256 else pa.uint16() if vocab_size <= 65536 else pa.int32()


def save_tokenizer(directory: str | Path, tokenizer: Tokenizer) -> Path:
    path = Path(directory) / TOKENIZER_FILE
    path.write_text(json.dumps(tokenizer.to_dict(), indent=1, sort_keys=True) + "\n")
    return path


def load_tokenizer(path: str | Path) -> Tokenizer:
    """The tokenizer a prepared dataset was encoded with (``<path>/tokenizer.json``)."""
    path = Path(path)
    file = path / TOKENIZER_FILE if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"no {TOKENIZER_FILE} in {path}: is it an fm-prep output directory?")
    return tokenizer_from_dict(json.loads(file.read_text()))


class ShardWriter:
    """Append records to ``<split_dir>/shard-NNNNN.arrow``, starting a new shard every
    ``shard_tokens`` tokens. ``close()`` writes ``split.json`` and returns it."""

    def __init__(self, split_dir: str | Path, vocab_size: int, extra: dict[str, pa.DataType] | None = None,
                 *, shard_tokens: int = 1 << 26, batch_rows: int = 4096):
        self.dir = Path(split_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        fields = [pa.field("tokens", pa.list_(_token_type(vocab_size)))]
        fields += [pa.field(k, t) for k, t in (extra or {}).items()]
        self.schema = pa.schema(fields)
        self.np_type = self.schema.field("tokens").type.value_type.to_pandas_dtype()
        self.shard_tokens, self.batch_rows = shard_tokens, batch_rows
        self.shards: list[dict[str, Any]] = []
        self._writer: pa.ipc.RecordBatchFileWriter | None = None
        self._rows: list[tuple[np.ndarray, dict[str, Any]]] = []
        self._shard_rows = self._shard_tok = 0
        self.rows = self.tokens = 0

    def add(self, tokens: np.ndarray, **extra: Any) -> None:
        self._rows.append((np.asarray(tokens, dtype=self.np_type), extra))
        self._shard_tok += len(tokens)
        if len(self._rows) >= self.batch_rows:
            self._flush()
        if self._shard_tok >= self.shard_tokens:
            self._close_shard()

    def _flush(self) -> None:
        if not self._rows:
            return
        if self._writer is None:
            path = self.dir / f"shard-{len(self.shards):05d}.arrow"
            self._writer = pa.ipc.new_file(str(path), self.schema)
            self.shards.append({"file": path.name})
        arrays = [np.concatenate([t for t, _ in self._rows]) if self._rows else np.zeros(0, self.np_type)]
        lengths = np.fromiter((len(t) for t, _ in self._rows), dtype=np.int64, count=len(self._rows))
        offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
        np.cumsum(lengths, out=offsets[1:])
        cols = [pa.ListArray.from_arrays(pa.array(offsets), pa.array(arrays[0]))]
        for f in list(self.schema)[1:]:
            cols.append(pa.array([e[f.name] for _, e in self._rows], type=f.type))
        self._writer.write_batch(pa.record_batch(cols, schema=self.schema))
        self._shard_rows += len(self._rows)
        self.rows += len(self._rows)
        self.tokens += int(lengths.sum())
        self._rows = []

    def add_table(self, table: pa.Table) -> None:
        """Append whole columns at once: ``table`` has a ``tokens`` list column and the extra
        fields. Cut into shards of about ``shard_tokens`` tokens like ``add``."""
        self._flush()
        table = table.select(self.schema.names).cast(self.schema)
        lengths = pa.compute.list_value_length(table.column("tokens")).to_numpy(zero_copy_only=False)
        start = 0
        while start < table.num_rows:
            cum = np.cumsum(lengths[start:])
            take = max(1, int(np.searchsorted(cum, self.shard_tokens - self._shard_tok, side="right")))
            part = table.slice(start, take)
            if self._writer is None:
                path = self.dir / f"shard-{len(self.shards):05d}.arrow"
                self._writer = pa.ipc.new_file(str(path), self.schema)
                self.shards.append({"file": path.name})
            self._writer.write_table(part, max_chunksize=self.batch_rows)
            n_tok = int(cum[take - 1])
            self._shard_rows += take
            self._shard_tok += n_tok
            self.rows += take
            self.tokens += n_tok
            start += take
            if self._shard_tok >= self.shard_tokens:
                self._close_shard()

    def _close_shard(self) -> None:
        self._flush()
        if self._writer is not None:
            self._writer.close()
            self._writer = None
            info = self.shards[-1]
            info.update(rows=self._shard_rows, tokens=self._shard_tok,
                        sha256=_sha256(self.dir / info["file"]))
        self._shard_rows = self._shard_tok = 0

    def close(self, **metadata: Any) -> dict[str, Any]:
        self._close_shard()
        summary = {"format_version": SHARD_FORMAT_VERSION, "rows": self.rows, "tokens": self.tokens,
                   "shards": self.shards, **metadata}
        (self.dir / SPLIT_FILE).write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
        return summary


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


class ShardDataset:
    """A prepared split, memory-mapped: ``len``, ``lengths``, ``ds[(i, seed)] -> {"ids", "seed",
    "index"}``, ``token_counts``, ``stats`` (the interface of ``SequenceDataset``), plus
    ``column(name)`` for per-record fields such as ``cluster``.

    ``tokenizer``, when given, must be the one the shards were written with (checked).
    """

    def __init__(self, path: str | Path, tokenizer: Tokenizer | None = None, *, verify: bool = False):
        self.path = Path(path)
        meta_file = self.path / SPLIT_FILE
        if not meta_file.is_file():
            raise FileNotFoundError(f"no {SPLIT_FILE} in {self.path}: not a prepared split (run fm-prep)")
        try:
            self.meta = json.loads(meta_file.read_text())
            version = self.meta.get("format_version", 1)
            shards = [(str(sh["file"]), int(sh["rows"]), sh.get("sha256")) for sh in self.meta["shards"]]
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise ValueError(f"{meta_file}: unreadable split description ({type(err).__name__}: {err}); "
                             "re-run fm-prep") from err
        if version != SHARD_FORMAT_VERSION:
            raise ValueError(f"{meta_file}: shard format version {version!r}; this fm-toolkit reads version "
                             f"{SHARD_FORMAT_VERSION}: re-run fm-prep with this version")
        if tokenizer is not None:
            saved = self.path.parent / TOKENIZER_FILE
            if saved.is_file() and json.loads(saved.read_text()) != tokenizer.to_dict():
                raise ValueError(f"{self.path}: shards were encoded with the tokenizer in {saved}, "
                                 f"not with {type(tokenizer).__name__}; use data.tokenizer from that file")
        self._tables: list[pa.Table] = []
        self._values: list[np.ndarray] = []
        self._offsets: list[np.ndarray] = []
        starts = [0]
        for name, rows, sha256 in shards:
            file = self.path / name
            if verify and _sha256(file) != sha256:
                raise ValueError(f"{file}: SHA-256 differs from {meta_file} (corrupt or partial copy)")
            try:
                table = pa.ipc.open_file(pa.memory_map(str(file), "r")).read_all()
            except (OSError, pa.ArrowException) as err:
                raise ValueError(f"{file}: missing, truncated or not an Arrow IPC shard "
                                 f"({type(err).__name__}: {err}); re-run fm-prep") from err
            if table.num_rows != rows:
                raise ValueError(f"{file}: {table.num_rows} rows, {meta_file} says {rows}")
            tokens_type = table.schema.field("tokens").type if "tokens" in table.column_names else None
            if tokens_type is None or not pa.types.is_list(tokens_type) or not pa.types.is_integer(tokens_type.value_type):
                raise ValueError(f"{file}: no integer list column 'tokens' (has {table.schema}); not an fm-prep shard")
            self._tables.append(table)
            for chunk in table.column("tokens").chunks:
                if len(chunk) == 0:
                    continue
                self._offsets.append(chunk.offsets.to_numpy(zero_copy_only=False).astype(np.int64))
                self._values.append(chunk.values.to_numpy(zero_copy_only=True))
                starts.append(starts[-1] + len(chunk))
        self._starts = np.asarray(starts, dtype=np.int64)
        self._lengths = (np.concatenate([np.diff(o) for o in self._offsets]) if self._offsets
                         else np.zeros(0, dtype=np.int64))
        from fm_core.data import ReadStats  # the training-side counters (imports torch lazily)

        self.stats = ReadStats(str(self.path))
        self.stats.read = self.stats.kept = len(self._lengths)

    def __len__(self) -> int:
        return len(self._lengths)

    def __getstate__(self) -> dict[str, Any]:
        # DataLoader workers started by spawn re-open the memory maps instead of copying the data
        return {"path": self.path}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"])

    @property
    def lengths(self) -> np.ndarray:
        return self._lengths

    def array(self, i: int) -> np.ndarray:
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} records in {self.path}")
        c = int(np.searchsorted(self._starts, i, side="right")) - 1
        j = i - self._starts[c]
        off = self._offsets[c]
        return self._values[c][off[j] : off[j + 1]]

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        i, seed = key if isinstance(key, tuple) else (key, key)
        return {"ids": self.array(int(i)), "seed": seed, "index": int(i)}

    def token_counts(self, vocab_size: int) -> np.ndarray:
        counts = np.zeros(vocab_size, dtype=np.int64)
        for off, values in zip(self._offsets, self._values, strict=True):
            found = np.bincount(values[off[0] : off[-1]], minlength=vocab_size)
            if len(found) > vocab_size:
                raise ValueError(f"{self.path}: token id {len(found) - 1} outside the tokenizer's {vocab_size} "
                                 "ids (shards written with another tokenizer?)")
            counts += found
        return counts

    def column(self, name: str) -> np.ndarray:
        """A per-record column of all shards, as one numpy array (strings as an object array)."""
        parts = [t.column(name).to_numpy() for t in self._tables]
        return np.concatenate(parts) if parts else np.zeros(0)

    def rows(self, columns: list[str] | None = None) -> Iterator[dict[str, Any]]:
        """Records as dicts (list columns as Python lists), in order: for inspection and evaluation."""
        for t in self._tables:
            yield from t.select(columns or t.column_names).to_pylist()
