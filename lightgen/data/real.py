"""The real world: captions from a file, a diffusers teacher, and VAE / text-encoder caches.

Pipeline (``get_real_dataset``), for a config with ``world.kind: real``:

1. **Caption source** — ``world.caption_file``: ``.txt`` (one caption a line), ``.csv`` (a ``caption``,
   ``prompt`` or ``text`` column, else the first column) or ``.jsonl`` (objects with ``caption``/
   ``prompt``/``text`` and optionally GenEval ``include`` clauses, whose class and colour names are
   checked).  Errors name the file and line.
2. **Diversity-controlled selection** — captions are embedded (TF-IDF word 1–2-grams, reduced by
   scikit-learn's TruncatedSVD) and clustered with scikit-learn k-means (``data.n_clusters``, default
   √M).  ``caption_diversity`` d picks how many clusters feed the dataset: the first ⌈d·k⌉ clusters of a
   seeded cluster order, read round-robin (so every used cluster is equally represented), then the rest
   only if the scale needs them.  The order does not depend on the scale: a dataset of N captions is
   the first N of it (nested prefixes), and asking for more captions than the file has is an error.
3. **Teacher** — any diffusers text-to-image pipeline (``DiffusionPipeline.from_pretrained(world.teacher)``),
   batched (``world.teacher_batch_size``) on ``world.teacher_device``, one seeded generator per item.
4. **Caches** — with ``model.vae`` set, images (and their horizontal flips) are encoded by a diffusers
   AutoencoderKL and stored as posterior moments (mean ‖ logvar, ``[2C, h, w]``); with
   ``model.text_encoder`` a path, captions are encoded by a transformers T5EncoderModel (its tokenizer
   from the same path, ``model.max_text_len`` tokens).  Both are stored in ``data.cache_dtype``.
   Teacher images are kept too when ``data.keep_images`` (default: only when there is no VAE).

Everything lands in safetensors shards with a manifest (see :mod:`lightgen.data.store`): written
atomically, resumed after the last finished shard, reused when the same configuration asks again.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from lightgen.redact import redact_obj
from lightgen.errors import UserError
from lightgen.data import store
from lightgen.data.diversity import tfidf
from lightgen.world.captions import _item_seed

FORMAT_VERSION = 1
GENEVAL_COLORS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
# COCO's 80 object names (GenEval's classes), plus GenEval's spellings of a few of them.
COCO_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase",
    "scissors", "teddy bear", "hair drier", "toothbrush", "computer mouse", "tv remote", "computer keyboard",
)


# --------------------------------------------------------------------------------------------------
# Caption source
# --------------------------------------------------------------------------------------------------
def read_captions(path: str | Path, classes: Any = None, colors: Any = None, vocabulary: Any = None) -> list[dict]:
    """Read ``[{"caption": str, "spec": dict | None, "line": int}]`` from a .txt/.csv/.jsonl file.

    ``classes``/``colors`` (default: GenEval's) check the names in JSONL ``include`` clauses;
    ``vocabulary`` (e.g. a toy world's) checks every caption word.  Errors give the line number.
    """
    path = Path(path)
    if path.is_dir():
        raise UserError(f"caption file {path} is a folder, expected a .txt/.csv/.jsonl file")
    if not path.is_file():
        raise UserError(f"caption file not found: {path}")
    classes = set(classes or COCO_CLASSES)
    colors = set(colors or GENEVAL_COLORS)
    vocab = set(vocabulary) if vocabulary is not None else None
    suffix = path.suffix.lower()
    out: list[dict] = []
    from lightgen.utils import read_text

    text = read_text(path)  # not UTF-8: a UserError naming the file and line
    if suffix == ".txt":
        rows = [(i + 1, line.strip(), None) for i, line in enumerate(text.splitlines())]
    elif suffix == ".csv":
        reader = csv.reader(text.splitlines())
        header = next(reader, None)
        if header is None:
            raise UserError(f"{path}: empty CSV file")
        lower = [h.strip().lower() for h in header]
        col = next((lower.index(c) for c in ("caption", "prompt", "text") if c in lower), None)
        rows = []
        if col is None:  # no header: the first row is a caption too
            col = 0
            rows.append((1, header[0].strip() if header else "", None))
        for i, rec in enumerate(reader, start=2):
            if col >= len(rec):
                raise UserError(f"{path}:{i}: row has {len(rec)} columns, the caption column is #{col + 1}")
            rows.append((i, rec[col].strip(), None))
    elif suffix == ".jsonl":
        rows = []
        for i, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{i}: malformed JSON ({e.msg})") from None
            if not isinstance(obj, dict):
                raise UserError(f"{path}:{i}: expected a JSON object, got {type(obj).__name__}")
            cap = next((obj[k] for k in ("caption", "prompt", "text") if isinstance(obj.get(k), str)), None)
            if cap is None:
                raise UserError(f"{path}:{i}: no 'caption', 'prompt' or 'text' string")
            spec = None
            if "include" in obj:
                spec = {k: obj[k] for k in ("tag", "include", "exclude") if k in obj}
                if not isinstance(obj["include"], list):
                    raise UserError(f"{path}:{i}: 'include' must be a list of objects, got "
                                    f"{type(obj['include']).__name__}")
                for j, cl in enumerate(obj["include"]):
                    if not isinstance(cl, dict):
                        raise UserError(f"{path}:{i}: include[{j}] must be an object")
                    for key in ("class", "color"):
                        if cl.get(key) is not None and not isinstance(cl[key], str):
                            raise UserError(f"{path}:{i}: include[{j}].{key} must be a string, got "
                                            f"{type(cl[key]).__name__}")
                    if cl.get("class") not in classes:
                        raise UserError(f"{path}:{i}: unknown class {cl.get('class')!r} in include[{j}]")
                    if cl.get("color") is not None and cl["color"] not in colors:
                        raise UserError(f"{path}:{i}: unknown colour {cl['color']!r} in include[{j}]; "
                                        f"allowed: {', '.join(sorted(colors))}")
            rows.append((i, cap.strip(), spec))
    else:
        raise UserError(f"caption file {path}: unsupported type '{suffix}' (use .txt, .csv or .jsonl)")
    for line, cap, spec in rows:
        if not cap:
            continue
        if vocab is not None:
            bad = [w for w in cap.split() if w not in vocab]
            if bad:
                raise UserError(f"{path}:{line}: unknown word {bad[0]!r} (not a class, colour or caption word "
                                f"of this world)")
        out.append({"caption": cap, "spec": spec, "line": line})
    if not out:
        raise UserError(f"caption file {path} contains no captions")
    return out


# --------------------------------------------------------------------------------------------------
# Diversity-controlled selection
# --------------------------------------------------------------------------------------------------
def cluster_captions(captions: list[str], n_clusters: int | None, seed: int) -> np.ndarray:
    """k-means cluster labels of the captions (TF-IDF → TruncatedSVD → l2 → KMeans, scikit-learn)."""
    from sklearn.cluster import KMeans, MiniBatchKMeans
    from sklearn.decomposition import TruncatedSVD
    from sklearn.preprocessing import normalize

    m = len(captions)
    k = n_clusters or max(1, int(round(math.sqrt(m))))
    k = min(k, m)
    x = tfidf(captions)
    if x.shape[1] > 64 and m > 64:
        x = TruncatedSVD(n_components=64, random_state=seed).fit_transform(x)
        x = normalize(x)
    else:
        x = x.toarray()
    km = (MiniBatchKMeans(n_clusters=k, random_state=seed, n_init=3, batch_size=4096) if m > 20_000
          else KMeans(n_clusters=k, random_state=seed, n_init=3))
    return km.fit_predict(x).astype(np.int64)


def selection_order(labels: np.ndarray, diversity: float, seed: int) -> np.ndarray:
    """An order of all caption indices: round-robin over the first ⌈d·k⌉ clusters of a seeded cluster
    order, then round-robin over the rest.  A dataset of N captions takes the first N."""
    rng = np.random.default_rng([seed, 0xC1])
    clusters = np.unique(labels)
    order_c = clusters[rng.permutation(len(clusters))]
    used = max(1, math.ceil(diversity * len(clusters)))
    members = {int(c): list(rng.permutation(np.nonzero(labels == c)[0])) for c in order_c}

    def round_robin(cs: np.ndarray) -> list[int]:
        out, queues = [], [members[int(c)] for c in cs]
        depth = max((len(q) for q in queues), default=0)
        for i in range(depth):
            out.extend(int(q[i]) for q in queues if i < len(q))
        return out

    return np.asarray(round_robin(order_c[:used]) + round_robin(order_c[used:]), dtype=np.int64)


# --------------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------------
def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


class DiffusersTeacher:
    """A diffusers text-to-image pipeline as the teacher: ``teacher(captions, seeds) -> uint8 [B,H,W,3]``."""

    def __init__(self, path: str, device: str = "auto", steps: int = 25, guidance: float = 7.5,
                 resolution: int = 256, batch_size: int = 8):
        import torch
        from diffusers import DiffusionPipeline

        self.device = _device(device)
        dtype = torch.float16 if self.device.startswith("cuda") else torch.float32
        try:
            self.pipe = DiffusionPipeline.from_pretrained(path, torch_dtype=dtype, use_safetensors=True)
        except (OSError, ValueError) as e:
            raise UserError(f"world.teacher: cannot load a diffusers pipeline from {path!r}: {e}") from None
        self.pipe.to(self.device)
        self.pipe.set_progress_bar_config(disable=True)
        self.steps, self.guidance, self.resolution, self.batch_size = steps, guidance, resolution, batch_size

    def __call__(self, captions: list[str], seeds: list[int]) -> np.ndarray:
        import torch

        out = []
        for i in range(0, len(captions), self.batch_size):
            caps, sds = captions[i : i + self.batch_size], seeds[i : i + self.batch_size]
            gens = [torch.Generator(device=self.device).manual_seed(int(s)) for s in sds]
            with torch.inference_mode():
                res = self.pipe(prompt=caps, num_inference_steps=self.steps, guidance_scale=self.guidance,
                                height=self.resolution, width=self.resolution, generator=gens, output_type="np")
            imgs = np.asarray(res.images, dtype=np.float32)
            out.append(np.clip(imgs * 255.0 + 0.5, 0, 255).astype(np.uint8))
        return np.concatenate(out, axis=0)


class VaeCache:
    """AutoencoderKL posterior moments (mean ‖ logvar) of images and of their horizontal flips."""

    def __init__(self, path: str, device: str = "auto", batch_size: int = 16):
        import torch
        from diffusers import AutoencoderKL

        self.device = _device(device)
        try:
            self.vae = AutoencoderKL.from_pretrained(path, use_safetensors=True, low_cpu_mem_usage=False).to(self.device).eval()
        except (OSError, ValueError) as e:
            raise UserError(f"model.vae: cannot load an AutoencoderKL from {path!r}: {e}") from None
        self.batch_size = batch_size
        self._torch = torch

    def __call__(self, images: np.ndarray) -> tuple[Any, Any]:
        torch = self._torch
        moms, flips = [], []
        for i in range(0, len(images), self.batch_size):
            x = torch.from_numpy(np.ascontiguousarray(images[i : i + self.batch_size])).to(self.device)
            x = x.permute(0, 3, 1, 2).float() / 127.5 - 1.0
            with torch.inference_mode():
                for src, dst in ((x, moms), (torch.flip(x, dims=[3]), flips)):
                    d = self.vae.encode(src).latent_dist
                    dst.append(torch.cat([d.mean, d.logvar], dim=1).cpu())
        return torch.cat(moms), torch.cat(flips)


class TextCache:
    """T5 encoder embeddings of captions (``[B, L, D]``) and their attention masks (``[B, L]`` uint8)."""

    def __init__(self, path: str, max_len: int, device: str = "auto", batch_size: int = 32):
        import torch
        from transformers import AutoTokenizer, T5EncoderModel

        self.device = _device(device)
        try:
            self.tok = AutoTokenizer.from_pretrained(path)
            self.enc = T5EncoderModel.from_pretrained(path, use_safetensors=True).to(self.device).eval()
        except (OSError, ValueError) as e:
            raise UserError(f"model.text_encoder: cannot load a T5EncoderModel and tokenizer from {path!r}: {e}") from None
        self.max_len, self.batch_size, self._torch = max_len, batch_size, torch

    def __call__(self, captions: list[str]) -> tuple[Any, Any]:
        torch = self._torch
        embs, masks = [], []
        for i in range(0, len(captions), self.batch_size):
            t = self.tok(captions[i : i + self.batch_size], padding="max_length", max_length=self.max_len,
                         truncation=True, return_tensors="pt")
            with torch.inference_mode():
                h = self.enc(input_ids=t.input_ids.to(self.device),
                             attention_mask=t.attention_mask.to(self.device)).last_hidden_state
            embs.append(h.cpu())
            masks.append(t.attention_mask.to(torch.uint8))
        return torch.cat(embs), torch.cat(masks)


# --------------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------------
def _file_digest(path: Path) -> str:
    return store.sha256_file(path)[:16]


def _cluster_fraction(cfg: Any) -> float:
    """Share of caption clusters used: ``data.coverage`` when set, else ``data.caption_diversity``."""
    return float(cfg.data.coverage if cfg.data.coverage is not None else cfg.data.caption_diversity)


def real_identity(cfg: Any) -> dict:
    if not cfg.world.caption_file:
        raise UserError("world.caption_file must be set for world.kind=real (a .txt/.csv/.jsonl of captions)")
    if not cfg.world.teacher:
        raise UserError("world.teacher must be set for world.kind=real (a diffusers pipeline path or hub id)")
    cap = Path(cfg.world.caption_file)
    if cap.is_dir():
        raise UserError(f"world.caption_file: {cap} is a folder, expected a .txt/.csv/.jsonl file")
    if not cap.is_file():
        raise UserError(f"world.caption_file: file not found: {cap}")
    text_encoder = cfg.model.text_encoder if cfg.model.text_encoder != "toy" else None
    keep = cfg.data.keep_images if cfg.data.keep_images is not None else cfg.model.vae is None
    return {
        "format": FORMAT_VERSION, "captions": _file_digest(cap), "teacher": cfg.world.teacher,
        "steps": cfg.world.teacher_steps, "guidance": cfg.world.teacher_guidance,
        "resolution": cfg.data.resolution, "seed": cfg.data.seed,
        "diversity": _cluster_fraction(cfg), "n_clusters": cfg.data.n_clusters,
        "vae": cfg.model.vae, "text_encoder": text_encoder, "max_text_len": cfg.model.max_text_len,
        "cache_dtype": cfg.data.cache_dtype, "keep_images": bool(keep), "shard_size": cfg.data.shard_size,
    }


class RealDataset(store.ShardedDataset):
    """A real-world dataset: captions + cached latents / text embeddings (and images if kept)."""

    def __init__(self, cfg: Any, folder: Path, manifest: dict, size: int, labels: np.ndarray):
        super().__init__(folder, manifest, size)
        self.cfg = cfg
        self.labels = labels  # cluster label of each stream item (selection order)

    def get_batch(self, indices: Any, flip: Any = None) -> dict:
        """Captions, ``latent_moments`` float32 ``[B, 2C, h, w]`` (per-item flipped version where ``flip``
        is True), ``text_emb``/``text_mask`` when cached, ``images`` uint8 when kept."""
        import torch

        idx = self._check_indices(indices)
        flip = np.zeros(len(idx), bool) if flip is None else np.asarray(flip, bool).reshape(-1)
        recs: list[Any] = [None] * len(idx)
        parts: dict[str, list] = {}
        for e, pos, rows in self._locate(idx):
            shard = self._reader.records(e)
            for p, r in zip(pos, rows):
                recs[p] = shard[r]
            keys = self._reader.keys(e)
            for key in keys:
                if key == "latent_moments_flip":
                    continue
                if key == "images":
                    parts.setdefault(key, []).append((pos, torch.from_numpy(np.asarray(self._reader.tensor(e, key, rows)))))
                elif key == "latent_moments":
                    m = self._reader.tensor_torch(e, key, rows)
                    if flip[pos].any():
                        mf = self._reader.tensor_torch(e, "latent_moments_flip", rows)
                        m[torch.from_numpy(flip[pos])] = mf[torch.from_numpy(flip[pos])]
                    parts.setdefault(key, []).append((pos, m))
                else:
                    parts.setdefault(key, []).append((pos, self._reader.tensor_torch(e, key, rows)))
        batch: dict[str, Any] = {"captions": [r["caption"] for r in recs], "specs": [r.get("spec") for r in recs]}
        for key, chunks in parts.items():
            first = chunks[0][1]
            full = torch.empty((len(idx), *first.shape[1:]), dtype=first.dtype)
            for pos, t in chunks:
                full[torch.from_numpy(pos)] = t
            batch[key] = full.numpy() if key == "images" else full
        return batch

    @property
    def diversity(self) -> dict[str, float]:
        """Caption metrics on the fixed subsample; coverage = share of k-means clusters present."""
        if self._diversity is None:
            from lightgen.data import diversity as D

            idx = D.subsample_indices(self.size, self.cfg.data.diversity_subsample)
            b = self.get_batch(idx)
            k = int(self.labels.max()) + 1 if len(self.labels) else 1
            comps = [[("cluster", int(self.labels[i]))] for i in idx]
            out = D.subsample_metrics(b["captions"], comps, k, b.get("images"))
            if "images" not in b and "latent_moments" in b:  # cheap image features: pooled latent means
                import torch.nn.functional as F

                lat = b["latent_moments"]
                f = F.adaptive_avg_pool2d(lat[:, : lat.shape[1] // 2], 4).flatten(1).numpy()
                out["vendi_image"] = D.vendi_from_features(f - f.mean(0, keepdims=True))
            all_recs = []
            for e in self.manifest["shards"]:
                if e["start"] >= self.size:
                    break
                recs = self._reader.records(e)
                all_recs.extend(recs[: min(len(recs), self.size - e["start"])])
            out["realised_coverage"] = len(set(self.labels[: self.size].tolist())) / k
            sigs = {D.spec_signature(r["spec"]) for r in all_recs if r.get("spec")}
            out["unique_compositions"] = float(len(sigs) or len(set(self.labels[: self.size].tolist())))
            out["unique_captions"] = float(len({r["caption"] for r in all_recs}))
            self._diversity = {m: out[m] for m in D.METRICS if m in out}
        return dict(self._diversity)

    def metrics(self) -> dict[str, float]:
        return {f"data/{k}": float(v) for k, v in self.diversity.items()}


def get_real_dataset(cfg: Any, progress: bool = False, on_shard: Any = None, teacher: Any = None) -> RealDataset:
    """Build (or reuse / resume) the real-world dataset of ``cfg``; see the module docstring."""
    from lightgen.data.toy import cache_root

    identity = real_identity(cfg)
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    folder = cache_root(cfg) / f"real-{key}"
    folder.mkdir(parents=True, exist_ok=True)
    with store.build_lock(folder):
        return _get_real_locked(cfg, folder, identity, key, progress, on_shard, teacher)


def _get_real_locked(cfg: Any, folder: Path, identity: dict, key: str, progress: bool, on_shard: Any,
                     teacher: Any) -> RealDataset:
    import torch

    from lightgen.data.toy import _progress

    store.cleanup_temp(folder)
    size = cfg.data.actual_size

    # caption selection: computed once per folder, stored as its own small shard
    sel_path = folder / "selection.safetensors"
    captions = read_captions(cfg.world.caption_file)
    if size > len(captions):
        raise UserError(f"data scale {size} (data.scale={cfg.data.scale}, divisor {cfg.data.scale_divisor}) is "
                        f"larger than the caption source {cfg.world.caption_file}: {len(captions)} captions")
    manifest = store.read_manifest(folder)
    if manifest is not None and manifest.get("identity") != identity:
        raise UserError(f"dataset cache {folder} belongs to a different configuration; delete it to rebuild")
    if manifest is None or "selection" not in manifest:
        labels = cluster_captions([c["caption"] for c in captions], cfg.data.n_clusters, cfg.data.seed)
        order = selection_order(labels, _cluster_fraction(cfg), cfg.data.seed)
        entry = store.write_shard(sel_path, {"order": order, "labels": labels[order]}, [])
        manifest = {"key": key, "identity": identity, "config": redact_obj(cfg.model_dump(mode="json")), "count": 0,
                    "shards": [], "selection": entry}
        store.write_manifest(folder, manifest)
    sel = store.ShardReader(folder, [manifest["selection"]])
    order = np.asarray(sel.tensor(manifest["selection"], "order", np.arange(len(captions))))
    labels = np.asarray(sel.tensor(manifest["selection"], "labels", np.arange(len(captions))))

    ss = identity["shard_size"]
    if manifest["shards"] and manifest["shards"][-1]["count"] < ss and manifest["count"] < size:
        manifest["count"] = manifest["shards"].pop()["start"]
    if manifest["count"] < size:
        dev = cfg.world.teacher_device
        teacher = teacher or DiffusersTeacher(cfg.world.teacher, dev, cfg.world.teacher_steps,
                                              cfg.world.teacher_guidance, cfg.data.resolution,
                                              cfg.world.teacher_batch_size)
        vae = VaeCache(cfg.model.vae, dev) if cfg.model.vae else None
        text = TextCache(identity["text_encoder"], cfg.model.max_text_len, dev) if identity["text_encoder"] else None
        dtype = torch.bfloat16 if cfg.data.cache_dtype == "bf16" else torch.float16
        bar = _progress(progress, size, manifest["count"], key)
        try:
            while manifest["count"] < size:
                start = manifest["count"]
                n = min(ss, size - start)
                src = order[start : start + n]
                caps = [captions[int(j)]["caption"] for j in src]
                seeds = [_item_seed(cfg.data.seed, i, 0xA11CE) for i in range(start, start + n)]
                images = teacher(caps, seeds)
                tensors: dict[str, Any] = {}
                if identity["keep_images"]:
                    tensors["images"] = torch.from_numpy(images)
                if vae is not None:
                    m, mf = vae(images)
                    tensors["latent_moments"], tensors["latent_moments_flip"] = m.to(dtype), mf.to(dtype)
                if text is not None:
                    emb, mask = text(caps)
                    tensors["text_emb"], tensors["text_mask"] = emb.to(dtype), mask
                if not tensors:
                    tensors["index"] = torch.arange(start, start + n)
                recs = [{"caption": c, "seed": s, "source_line": captions[int(j)]["line"],
                         "spec": captions[int(j)]["spec"]} for c, s, j in zip(caps, seeds, src)]
                entry = store.write_shard(folder / f"shard-{start // ss:05d}.safetensors", tensors, recs)
                entry["start"] = start
                manifest["shards"].append(entry)
                manifest["count"] = start + n
                store.shard_done(folder, manifest, bar, on_shard)
        finally:
            if bar is not None:
                bar[0].stop()
    return RealDataset(cfg, folder, manifest, size, labels)
