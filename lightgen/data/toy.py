"""Toy-world datasets: the first N items of a seeded (spec, caption) stream, rendered by the teacher.

Cache identity: a dataset folder is named by a hash of (world, resolved diversity knobs, resolution,
data seed, storage) — *not* of the scale.  The folder holds a prefix of the stream; a dataset of scale
N reads its first N items, and asking for a larger N extends the same folder.  So 100K ⊂ 200K ⊂ … ⊂ 2M
share one cache and are prefixes of each other by construction.

Stream vs shards (``data.storage``), decided by measurement (``benchmarks/bench_data.py``, recorded in
``benchmarks/RESULTS.md``): the teacher renders ~4,800 64-px images per CPU-second, while reading
stored uint8 images back from memory-mapped safetensors shards costs ~11× less CPU (~54K images per
CPU-second), so storing images wins whenever they fit on disk.  ``auto`` therefore stores image
shards when the images of the requested scale take at most ``data.auto_max_gib`` GiB and otherwise
streams: shards then hold only the records (caption, spec, render seed) and ``get_batch`` renders images on the fly, deterministically.
Storage is part of the cache identity, so under ``auto`` scales on either side of the threshold use two
folders (holding identical items); set ``data.storage`` explicitly to share one folder across a sweep.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from lightgen.redact import redact_obj
from lightgen.errors import UserError
from lightgen.data import store
from lightgen.world.captions import CaptionGenerator, Knobs
from lightgen.world.toy import ToyWorld

# 2: the GenEval-phrased share states no density attributes (colourless captions at every density), and the
# world's held-out draw is rule 2 (balanced, inverse-closed relations, scenes that never show a held-out one)
FORMAT_VERSION = 2
WORLD_KEYS = ("kind", "seed", "n_classes", "n_colors", "max_objects", "n_relations", "n_backgrounds",
              "heldout_fraction")


def world_identity(world_cfg: Any) -> dict:
    """What a toy world's renders depend on; the layout and pose only when they are not the defaults (so
    caches of worlds made before those knobs keep their identity), the held-out rule only when something is
    held out (with nothing held out the renders do not depend on it)."""
    from lightgen.world.toy import HELDOUT_RULE

    ident = {k: getattr(world_cfg, k) for k in WORLD_KEYS}
    if float(world_cfg.heldout_fraction) > 0:
        ident["heldout_rule"] = HELDOUT_RULE
    if getattr(world_cfg, "layout", "free") != "free":
        ident.update(layout=world_cfg.layout, grid_cells=world_cfg.grid_cells)
    if getattr(world_cfg, "pose", "varied") != "varied":
        ident["pose"] = world_cfg.pose
    return ident


def resolve_storage(cfg: Any) -> str:
    """'shards' or 'stream' for a config (see the module docstring for the rule)."""
    if cfg.data.storage != "auto":
        return cfg.data.storage
    gib = cfg.data.actual_size * cfg.data.resolution**2 * 3 / 2**30
    return "shards" if gib <= cfg.data.auto_max_gib else "stream"


def stream_identity(cfg: Any, storage: str) -> dict:
    """What a cached stream depends on (and nothing else: not the scale)."""
    knobs = Knobs.from_config(cfg.data)
    return {
        "format": FORMAT_VERSION,
        "world": world_identity(cfg.world),
        "knobs": {"coverage": knobs.coverage, "variety": knobs.variety, "density": knobs.density},
        "resolution": cfg.data.resolution,
        "seed": cfg.data.seed,
        "storage": storage,
        "shard_size": cfg.data.shard_size,
    }


def stream_key(identity: dict) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def dataset_key(cfg: Any) -> str:
    """What ``get_toy_dataset(cfg)`` builds, as one key: the cached stream (``stream_key``) and the prefix of it
    the dataset is (``data.actual_size``). Two configs with the same key share one dataset."""
    return f"{stream_key(stream_identity(cfg, resolve_storage(cfg)))}:{cfg.data.actual_size}"


def cache_root(cfg: Any) -> Path:
    from lightgen.layout import datasets_dir

    return datasets_dir(cfg)


class ToyDataset(store.ShardedDataset):
    """A toy-world dataset of ``len(ds)`` items (a prefix of the cached stream)."""

    def __init__(self, cfg: Any, world: ToyWorld, gen: CaptionGenerator, folder: Path, manifest: dict, size: int):
        super().__init__(folder, manifest, size)
        self.cfg, self.world, self.gen = cfg, world, gen
        self.resolution = cfg.data.resolution
        self.storage = manifest["identity"]["storage"]

    # ---- access ------------------------------------------------------------------------------
    def records(self, indices: Any) -> list[dict]:
        idx = self._check_indices(indices)
        recs: list[Any] = [None] * len(idx)
        for entry, pos, rows in self._locate(idx):
            shard = self._reader.records(entry)
            for p, r in zip(pos, rows):
                recs[p] = shard[r]
        return recs

    def get_batch(self, indices: Any) -> dict:
        """``{"captions": [...], "images": uint8 [B, H, W, 3], "specs": [...]}`` for stream items ``indices``."""
        idx = self._check_indices(indices)
        recs = self.records(idx)
        if self.storage == "shards":
            images = np.empty((len(idx), self.resolution, self.resolution, 3), dtype=np.uint8)
            for entry, pos, rows in self._locate(idx):
                images[pos] = self._reader.tensor(entry, "images", rows)
        else:
            images = self.world.render([r["spec"] for r in recs], self.resolution, [r["seed"] for r in recs])
        return {"captions": [r["caption"] for r in recs], "images": images, "specs": [r["spec"] for r in recs]}

    # ---- diversity ---------------------------------------------------------------------------
    @property
    def diversity(self) -> dict[str, float]:
        """Measured diversity (see :mod:`lightgen.data.diversity`), cached in the manifest per size."""
        if self._diversity is None:
            cached = self.manifest.get("diversity", {}).get(str(self.size))
            sub = self.cfg.data.diversity_subsample
            if cached and cached.get("_subsample") == sub:
                from lightgen.data.diversity import METRICS

                self._diversity = {k: cached[k] for k in METRICS if k in cached}
            else:
                self._diversity = self._measure(sub)
                self._save_diversity(sub)
        return dict(self._diversity)

    def _measure(self, sub: int) -> dict[str, float]:
        from lightgen.data import diversity as D

        idx = D.subsample_indices(self.size, sub)
        batch = self.get_batch(idx)
        comps = [self.world.compositions(s) for s in batch["specs"]]
        out = D.subsample_metrics(batch["captions"], comps, self.gen.n_trainable, batch["images"])
        seen: set = set()
        structures: set = set()
        caps: set = set()
        for entry in self.manifest["shards"]:
            if entry["start"] >= self.size:
                break
            recs = self._reader.records(entry)
            k = min(len(recs), self.size - entry["start"])
            caps.update(recs.raw("caption")[:k])
            for raw in recs.raw("spec")[:k]:
                spec = json.loads(raw)
                seen.update(map(tuple, self.world.compositions(spec)))
                structures.add(D.spec_signature(spec))
        out["realised_coverage"] = len(seen) / self.gen.n_trainable if self.gen.n_trainable else 0.0
        out["unique_compositions"] = float(len(structures))
        out["unique_captions"] = float(len(caps))
        return out

    def _save_diversity(self, sub: int) -> None:
        if self.path is None:
            return
        latest = store.read_manifest(self.path) or self.manifest
        latest.setdefault("diversity", {})[str(self.size)] = {**self._diversity, "_subsample": sub}
        try:
            store.write_manifest(self.path, latest)
        except OSError:  # a read-only cache still works; the numbers are just recomputed next time
            pass
        self.manifest = latest

    def metrics(self) -> dict[str, float]:
        """``data/…`` metrics for MLflow: the measured diversity and the composition numbers."""
        return {f"data/{k}": float(v) for k, v in {**self.diversity, **self.composition_metrics()}.items()}

    # ---- the run's own compositions (lightgen.data.compositions) -----------------------------
    def _compositions(self) -> dict[str, Any]:
        if getattr(self, "_comps", None) is None:
            from lightgen.data import compositions as C

            file = self.path / f"compositions-{self.size}.json" if self.path is not None else None
            result = C.load(file, self.size) if file is not None else None
            if result is None:
                result = C.measure(self.world, self._iter_items(), self.resolution)
                if file is not None:
                    try:
                        C.save(file, self.size, result)
                    except OSError:  # a read-only cache still works; the set is recomputed next time
                        pass
            self._comps = result
        return self._comps

    def _iter_items(self) -> Any:
        for entry in self.manifest["shards"]:
            if entry["start"] >= self.size:
                break
            recs = self._reader.records(entry)
            for r in range(min(len(recs), self.size - entry["start"])):
                rec = recs[r]
                yield rec["spec"], rec["caption"], rec["seed"]

    def train_compositions(self) -> frozenset:
        """Compositions (and ``("class", c)`` atoms) that some item's caption states and its scene shows."""
        return frozenset(self._compositions()["counts"])

    def composition_counts(self) -> dict[tuple, int]:
        """Items realising each composition of :meth:`train_compositions`."""
        return dict(self._compositions()["counts"])

    def composition_metrics(self) -> dict[str, float]:
        """Realised coverage, repetition, colourless share, colours per caption, held-out leaks."""
        return dict(self._compositions()["metrics"])


def _build(cfg: Any, world: ToyWorld, gen: CaptionGenerator, folder: Path, identity: dict, key: str,
           size: int, progress: bool, on_shard: Any = None) -> dict:
    """Extend the cached stream in ``folder`` to at least ``size`` items; returns the manifest."""
    folder.mkdir(parents=True, exist_ok=True)
    store.cleanup_temp(folder)
    manifest = store.read_manifest(folder)
    if manifest is not None and manifest.get("identity") != identity:
        raise UserError(f"dataset cache {folder} belongs to a different configuration; delete it to rebuild")
    if manifest is None:
        manifest = {"key": key, "identity": identity, "config": redact_obj(cfg.model_dump(mode="json")),
                    "count": 0, "shards": [], "counts": {}}
    ss = identity["shard_size"]
    # A partial last shard is rebuilt whole: items are deterministic, so the prefix is identical.
    if manifest["shards"] and manifest["shards"][-1]["count"] < ss and manifest["count"] < size:
        last = manifest["shards"].pop()
        manifest["count"] = last["start"]
    if manifest["count"] >= size:
        return manifest
    ss = identity["shard_size"]
    starts = list(range(manifest["count"], size, ss))
    jobs = [(start, min(ss, size - start)) for start in starts]
    bar = _progress(progress, size, manifest["count"], key)
    workers = min(int(cfg.data.num_workers), len(jobs))
    pool = None
    try:
        if workers > 1:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            # spawn, not fork: the parent may hold torch/BLAS threads that fork would copy mid-flight
            pool = ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_worker_init,
                                       initargs=(cfg.world.model_dump(), gen.knobs, gen.seed))
            results = pool.map(_worker_shard, [(str(folder), identity, st, n) for st, n in jobs])
        else:
            results = (_make_shard(world, gen, folder, identity, st, n) for st, n in jobs)
        for entry, tags in results:  # in stream order: the manifest always lists a contiguous prefix
            manifest["shards"].append(entry)
            manifest["count"] = entry["start"] + entry["count"]
            tag_counts = manifest.setdefault("counts", {})
            for t, c in tags.items():
                tag_counts[t] = tag_counts.get(t, 0) + c
            store.shard_done(folder, manifest, bar, on_shard)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        if bar is not None:
            bar[0].stop()
    return manifest


def _make_shard(world: ToyWorld, gen: CaptionGenerator, folder: Path, identity: dict, start: int,
                n: int) -> tuple[dict, dict]:
    """Generate, render and write the shard of stream items ``start … start+n-1``."""
    recs, specs, seeds = [], [], []
    for i in range(start, start + n):
        spec, cap = gen.item(i)
        seed = gen.render_seed(i)
        recs.append({"caption": cap, "spec": spec, "seed": seed})
        specs.append(spec)
        seeds.append(seed)
    if identity["storage"] == "shards":
        tensors = {"images": world.render(specs, identity["resolution"], seeds)}
    else:
        tensors = {"index": np.arange(start, start + n, dtype=np.int64)}
    entry = store.write_shard(folder / f"shard-{start // identity['shard_size']:05d}.safetensors", tensors, recs)
    entry["start"] = start
    tags: dict[str, int] = {}
    for sp in specs:
        tags[sp["tag"]] = tags.get(sp["tag"], 0) + 1
    return entry, tags


_WORKER: dict[str, Any] = {}


def _worker_init(world_cfg: dict, knobs: Knobs, seed: int) -> None:
    from lightgen.config import WorldConfig

    world = ToyWorld(WorldConfig(**world_cfg))
    _WORKER["world"], _WORKER["gen"] = world, CaptionGenerator(world, knobs, seed)


def _worker_shard(job: tuple[str, dict, int, int]) -> tuple[dict, dict]:
    folder, identity, start, n = job
    return _make_shard(_WORKER["world"], _WORKER["gen"], Path(folder), identity, start, n)


def _progress(enabled: bool, total: int, done: int, key: str) -> Any:
    if not enabled:
        return None
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    p = Progress(TextColumn(f"dataset {key}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                 console=Console(stderr=True))
    p.start()
    task = p.add_task("build", total=total, completed=done)
    return p, task


def get_toy_dataset(cfg: Any, progress: bool = False, on_shard: Any = None) -> ToyDataset:
    world = ToyWorld(cfg.world)
    try:
        gen = CaptionGenerator(world, Knobs.from_config(cfg.data), seed=cfg.data.seed)
    except ValueError as e:
        raise UserError(str(e)) from None
    storage = resolve_storage(cfg)
    identity = stream_identity(cfg, storage)
    key = stream_key(identity)
    folder = cache_root(cfg) / key
    size = cfg.data.actual_size
    folder.mkdir(parents=True, exist_ok=True)
    with store.build_lock(folder):
        manifest = _build(cfg, world, gen, folder, identity, key, size, progress, on_shard)
    return ToyDataset(cfg, world, gen, folder, manifest, size)
