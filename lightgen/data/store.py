"""Shard storage shared by the toy and real datasets: safetensors shards + a JSON manifest.

A dataset folder holds ``manifest.json`` and ``shard-00000.safetensors``, …  Each shard covers a
contiguous range of stream items and stores its tensors plus, in the safetensors metadata, the items'
JSON records (caption, spec, seeds).  Shards are written to a temp name and renamed; the manifest is
rewritten (atomically) after every finished shard and lists each shard's range, byte size and sha256,
so an interrupted build resumes after the last *listed* shard and nothing half-written is ever read.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from lightgen.errors import UserError
from lightgen.utils import sha256_file, write_atomic

MANIFEST = "manifest.json"


def write_shard(path: Path, tensors: dict[str, Any], records: list[dict]) -> dict[str, Any]:
    """Write one shard atomically; returns its manifest entry (file, count, bytes, sha256).

    ``tensors`` are numpy arrays, or torch tensors (needed for bf16, which numpy lacks).
    """
    meta = {"columns": json.dumps(_to_columns(records), separators=(",", ":"))}
    if any(type(v).__module__.startswith("torch") for v in tensors.values()):
        import torch
        from safetensors.torch import save as save_pt

        blob = save_pt({k: (v if isinstance(v, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(v))).contiguous()
                        for k, v in tensors.items()}, metadata=meta)
    else:
        from safetensors.numpy import save

        blob = save({k: np.ascontiguousarray(v) for k, v in tensors.items()}, metadata=meta)
    write_atomic(path, blob)
    return {"file": path.name, "count": len(records), "bytes": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}


def _to_columns(records: list[dict]) -> dict:
    """Records as columns; dict/list values are kept as JSON strings (``"json:<key>"`` columns).

    Why: a 2M-item dataset's records stay in memory while training; a list of strings per column
    costs a fraction of a list of nested dicts, and specs are only parsed for the items a batch asks for.
    """
    cols: dict[str, list] = {}
    keys = list(records[0]) if records else []
    for k in keys:
        vals = [r.get(k) for r in records]
        if any(isinstance(v, (dict, list)) for v in vals):
            cols[f"json:{k}"] = [json.dumps(v, separators=(",", ":")) for v in vals]
        else:
            cols[k] = vals
    return {"n": len(records), "columns": cols}


class Records:
    """Read-only, column-stored records of one shard; ``records[i]`` gives the i-th as a dict."""

    def __init__(self, data: dict):
        self.n = int(data["n"])
        self.columns = data["columns"]

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self.n))]
        i = int(i)
        out = {}
        for k, col in self.columns.items():
            if k.startswith("json:"):
                out[k[5:]] = json.loads(col[i])
            else:
                out[k] = col[i]
        return out

    def column(self, key: str) -> list:
        """One column as stored (JSON columns come back parsed)."""
        if key in self.columns:
            return self.columns[key]
        return [json.loads(v) for v in self.columns[f"json:{key}"]]

    def raw(self, key: str) -> list:
        """A column as stored (JSON strings for dict/list columns)."""
        return self.columns.get(key, self.columns.get(f"json:{key}"))


def shard_path(folder: Path, name: Any) -> Path:
    """A manifest's shard entry as a path inside the dataset folder; anything else is refused.

    A manifest is data from disk (maybe from another machine): a name like ``../../etc/x`` or an absolute
    path must never make the reader open a file outside its folder.
    """
    if not isinstance(name, str) or not name or Path(name).is_absolute() or Path(name).name != name:
        raise UserError(f"dataset manifest {folder / MANIFEST}: shard entry {name!r} is not a plain file name "
                        f"inside the dataset folder; refusing it")
    path = folder / name
    if not path.resolve().is_relative_to(folder.resolve()):
        raise UserError(f"dataset manifest {folder / MANIFEST}: shard {name!r} points outside {folder}; refusing it")
    return path


class ShardReader:
    """Reads shards listed in a manifest, verifying size and checksum once per shard and process."""

    def __init__(self, folder: Path, entries: list[dict]):
        self.folder = folder
        self.entries = entries
        self._verified: set[str] = set()
        self._records: dict[str, Records] = {}
        self._handles: dict[str, Any] = {}
        self._maps: dict[tuple[str, str], np.ndarray] = {}

    def _check(self, entry: dict) -> Path:
        name = entry["file"]
        if name in self._verified:
            return self.folder / name
        path = shard_path(self.folder, name)
        if not path.is_file():
            raise UserError(f"dataset shard {path} is missing (listed in {self.folder / MANIFEST}); delete the "
                            f"folder or rebuild with `lightgen data build`")
        size = path.stat().st_size
        if size != entry["bytes"]:
            raise UserError(f"dataset shard {path} is truncated or corrupt: {size} bytes, manifest says "
                            f"{entry['bytes']}; delete it and rebuild")
        if sha256_file(path) != entry["sha256"]:
            raise UserError(f"dataset shard {path} is corrupt: checksum mismatch with {self.folder / MANIFEST}; "
                            f"delete it and rebuild")
        self._verified.add(name)
        return path

    def _open(self, entry: dict) -> Any:
        from safetensors import safe_open

        name = entry["file"]
        if name not in self._handles:
            path = self._check(entry)
            try:
                self._handles[name] = safe_open(str(path), framework="np")
            except Exception as e:  # safetensors raises its own error types for bad headers
                raise UserError(f"dataset shard {path} cannot be read: {e}") from None
        return self._handles[name]

    def records(self, entry: dict) -> "Records":
        name = entry["file"]
        if name not in self._records:
            h = self._open(entry)
            try:
                self._records[name] = Records(json.loads((h.metadata() or {})["columns"]))
            except (KeyError, TypeError, json.JSONDecodeError) as e:
                raise UserError(f"dataset shard {self.folder / name} has no valid records: {e}") from None
        return self._records[name]

    def tensor(self, entry: dict, key: str, rows: np.ndarray) -> np.ndarray:
        """Rows of a tensor, read through a memory map (random access without loading the shard)."""
        name = entry["file"]
        mk = (name, key)
        if mk not in self._maps:
            self._open(entry)  # checks the shard (manifest, size, header) before it is memory-mapped
            try:
                self._maps[mk] = _memmap_tensor(self.folder / name, key)
            except (KeyError, ValueError) as e:
                raise UserError(f"dataset shard {self.folder / name}: cannot read '{key}': {e}") from None
        return self._maps[mk][rows]

    def tensor_torch(self, entry: dict, key: str, rows: np.ndarray) -> Any:
        """Rows as a float32 torch tensor (bf16/fp16 shards are widened on read)."""
        import torch

        arr = np.ascontiguousarray(self.tensor(entry, key, rows))
        dtype = self.dtype(entry, key)
        t = torch.from_numpy(arr.view(np.int16)).view(torch.bfloat16) if dtype == "BF16" else torch.from_numpy(arr)
        return t.float() if t.is_floating_point() else t

    def dtype(self, entry: dict, key: str) -> str:
        with open(self._check(entry), "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            return json.loads(f.read(n))[key]["dtype"]

    def keys(self, entry: dict) -> list[str]:
        return list(self._open(entry).keys())


_DTYPES = {"U8": np.uint8, "I8": np.int8, "I64": np.int64, "I32": np.int32, "F32": np.float32,
           "F16": np.float16, "BOOL": np.bool_, "BF16": np.uint16}  # bf16: raw bits, viewed in torch


class ShardedDataset:
    """Index → shard bookkeeping shared by the toy and real datasets (a prefix of ``size`` items)."""

    def __init__(self, folder: Path, manifest: dict, size: int):
        self.path: Path | None = folder
        self.manifest, self.size = manifest, size
        self._reader = ShardReader(folder, manifest["shards"])
        self._starts = np.array([e["start"] for e in manifest["shards"]])
        self.manifest_hash = hashlib.sha256(f"{manifest['key']}:{size}".encode()).hexdigest()[:16]
        self._diversity: dict[str, float] | None = None

    def __len__(self) -> int:
        return self.size

    def _check_indices(self, indices: Any) -> np.ndarray:
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(idx) and (idx.min() < 0 or idx.max() >= self.size):
            raise IndexError(f"dataset index out of range 0..{self.size - 1}: {idx.min()}..{idx.max()}")
        return idx

    def _locate(self, indices: np.ndarray) -> list[tuple[dict, np.ndarray, np.ndarray]]:
        """Group indices by shard: (entry, positions in the batch, rows in the shard)."""
        shard_ids = np.searchsorted(self._starts, indices, side="right") - 1
        out = []
        for s in np.unique(shard_ids):
            pos = np.nonzero(shard_ids == s)[0]
            entry = self.manifest["shards"][int(s)]
            out.append((entry, pos, indices[pos] - entry["start"]))
        return out


def _memmap_tensor(path: Path, key: str) -> np.ndarray:
    """A read-only memory map of one tensor of a safetensors file (its header is 8 bytes of length +
    JSON with dtype/shape/data_offsets, per the safetensors format)."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    info = header[key]
    dtype = _DTYPES[info["dtype"]]
    start, end = info["data_offsets"]
    shape = tuple(info["shape"])
    if end - start != int(np.prod(shape)) * np.dtype(dtype).itemsize:
        raise ValueError(f"tensor '{key}' has inconsistent offsets")
    return np.memmap(path, dtype=dtype, mode="r", offset=8 + n + start, shape=shape)


def read_manifest(folder: Path) -> dict | None:
    path = folder / MANIFEST
    if path.is_symlink() and not path.resolve().is_relative_to(Path(folder).resolve()):
        # like shards: what the dataset is must be inside its folder, not borrowed from elsewhere
        raise UserError(f"refusing dataset manifest {path}: it is a symlink to {path.resolve()}, outside its "
                        "folder; delete the folder to rebuild")
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, ValueError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise UserError(f"dataset manifest {path} is unreadable ({e}); delete the folder to rebuild") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("shards", []), list):
        raise UserError(f"dataset manifest {path} is not a manifest (expected an object with a 'shards' list); "
                        "delete the folder to rebuild")
    return manifest


def write_manifest(folder: Path, manifest: dict) -> None:
    write_atomic(folder / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True))


def cleanup_temp(folder: Path) -> None:
    """Remove temp files left by an interrupted write (they are never listed in a manifest)."""
    if folder.is_dir():
        for p in folder.glob(".*.tmp"):
            try:
                os.unlink(p)
            except OSError:
                pass


@contextlib.contextmanager
def build_lock(folder: Path):
    """Exclusive lock on a dataset folder while building, so parallel sweep workers asking for the same
    dataset build it once (the others wait, then find it complete).  A read-only cache is not locked."""
    import fcntl

    try:
        fd = os.open(folder / ".lock", os.O_CREAT | os.O_RDWR, 0o644)
    except OSError:
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
