"""Scoring images against GenEval metadata, the official folder layout, and the sweep entry point.

Official layout (what ``lightgen geneval sample`` writes and ``evaluate`` reads)::

    <out>/00000/metadata.jsonl      # one JSON object: the prompt's metadata
    <out>/00000/samples/0000.png    # images_per_prompt images (default 4)
    <out>/00001/...

A *detector* is any object with ``detect(image: uint8 [H,W,3]) -> Detections`` (raw, unfiltered; see
:mod:`lightgen.geneval.rules` for the format) and optionally
``classify_colors(image, class_name, objects) -> list[str]`` for detections whose colour is ``None``.
"""

from __future__ import annotations

import io
import json
import re
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from lightgen.geneval.rules import check_image, filter_detections
from lightgen.utils import write_atomic

Sampler = Callable[[list[str], list[int]], np.ndarray]


def evaluate_image(image: np.ndarray, metadata: dict[str, Any], detector: Any, filename: str = "",
                   raw: dict[str, list[dict[str, Any]]] | None = None) -> dict[str, Any]:
    """One results.jsonl row in the official format for one image (``raw``: precomputed detections)."""
    if raw is None:
        raw = detector.detect(np.asarray(image))
    dets = filter_detections(raw, metadata["tag"])
    color_fn = None
    if hasattr(detector, "classify_colors"):
        def color_fn(cls: str, objs: list[dict[str, Any]]) -> list[str]:
            return detector.classify_colors(image, cls, objs)
    correct, reason = check_image(metadata, dets, color_fn)
    details = {cls: [[float(v) for v in o["box"][:4]] + [float(o["score"])] for o in objs] for cls, objs in dets.items()}
    return {
        "filename": filename,
        "tag": metadata["tag"],
        "prompt": metadata["prompt"],
        "correct": bool(correct),
        "reason": reason,
        "metadata": json.dumps(metadata),
        "details": json.dumps(details),
    }


def evaluate_images(
    images_per_prompt: Sequence[Any],
    metadata: Sequence[dict[str, Any]],
    detector: Any,
    filenames: Sequence[Sequence[str]] | None = None,
    batch_size: int = 256,
) -> list[dict[str, Any]]:
    """Score ``images_per_prompt[i]`` (uint8 [n_i,H,W,3] or a list of images) against ``metadata[i]``.

    One row per image. Default filenames follow the official layout (``00000/samples/0000.png``) so
    rows from in-memory evaluation and from a folder look alike. Detectors with ``detect_batch`` get
    ``batch_size`` images per call.
    """
    if len(images_per_prompt) != len(metadata):
        raise ValueError(f"{len(images_per_prompt)} image groups for {len(metadata)} prompts")
    jobs = []
    for i, (imgs, meta) in enumerate(zip(images_per_prompt, metadata)):
        for j, img in enumerate(imgs):
            name = filenames[i][j] if filenames is not None else f"{i:05d}/samples/{j:04d}.png"
            jobs.append((np.asarray(img), meta, name))
    rows = []
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start:start + batch_size]
        if hasattr(detector, "detect_batch"):
            raws = detector.detect_batch([img for img, _, _ in chunk])
        else:
            raws = [None] * len(chunk)
        rows.extend(evaluate_image(img, meta, detector, name, raw) for (img, meta, name), raw in zip(chunk, raws))
    return rows


# --------------------------------------------------------------------------------------------------
# Official folder layout
# --------------------------------------------------------------------------------------------------
def _png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def write_prompt_folder(out_dir: str | Path, index: int, metadata: dict[str, Any], images: np.ndarray) -> Path:
    """Write one prompt's ``metadata.jsonl`` and ``samples/NNNN.png`` (each file atomically)."""
    folder = Path(out_dir) / f"{index:05d}"
    for j, img in enumerate(np.asarray(images)):
        write_atomic(folder / "samples" / f"{j:04d}.png", _png_bytes(img))
    write_atomic(folder / "metadata.jsonl", json.dumps(metadata) + "\n")
    return folder


def sample_to_folder(
    sampler: Sampler,
    metadata: Sequence[dict[str, Any]],
    out_dir: str | Path | None,
    images_per_prompt: int = 4,
    seed: int = 0,
    batch_size: int = 64,
) -> list[np.ndarray]:
    """Sample ``images_per_prompt`` images per prompt in batches; write the official layout if out_dir.

    Image j of prompt i uses seed ``seed * 1_000_003 + i * images_per_prompt + j``, so a prompt's images
    are the same whatever the batch size, and two runs with the same seed are paired image by image.
    """
    jobs = [(i, j) for i in range(len(metadata)) for j in range(images_per_prompt)]
    out: list[list[np.ndarray]] = [[] for _ in metadata]
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start:start + batch_size]
        prompts = [metadata[i]["prompt"] for i, _ in chunk]
        seeds = [seed * 1_000_003 + i * images_per_prompt + j for i, j in chunk]
        imgs = np.asarray(sampler(prompts, seeds))
        if imgs.dtype != np.uint8 or imgs.ndim != 4 or len(imgs) != len(chunk):
            raise ValueError(f"sampler must return uint8 [{len(chunk)},H,W,3], got {imgs.dtype} {imgs.shape}")
        for (i, _), img in zip(chunk, imgs):
            out[i].append(img)
    groups = [np.stack(g) for g in out]
    if out_dir is not None:
        for i, (meta, imgs) in enumerate(zip(metadata, groups)):
            write_prompt_folder(out_dir, i, meta, imgs)
    return groups


def read_folder(folder: str | Path) -> tuple[list[dict[str, Any]], list[list[str]]]:
    """The official layout's metadata per prompt folder and its image paths (sorted), as the official
    evaluator reads it: numeric sub-folders only, ``NNNN.png`` files only."""
    from lightgen.errors import UserError

    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"GenEval folder not found: {folder}")
    metas, paths = [], []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and p.name.isdigit()):
        mfile = sub / "metadata.jsonl"
        if not mfile.is_file():
            raise UserError(f"{sub}: missing metadata.jsonl")
        from lightgen.utils import read_text

        try:
            meta = json.loads(read_text(mfile))  # not UTF-8: a UserError naming the file and line
        except json.JSONDecodeError as e:
            raise UserError(f"{mfile}: not valid JSON ({e.msg})") from None
        from lightgen.geneval.prompts import validate_spec

        validate_spec(meta, where=str(mfile))
        imgs = sorted(p for p in (sub / "samples").glob("*.png") if re.fullmatch(r"\d+\.png", p.name))
        if not imgs:
            raise UserError(f"{sub / 'samples'}: no NNNN.png images")
        metas.append(meta)
        paths.append([str(p) for p in imgs])
    if not metas:
        raise UserError(f"{folder}: no prompt folders (00000/metadata.jsonl + samples/0000.png …)")
    return metas, paths


def load_image(path: str | Path) -> np.ndarray:
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))


def evaluate_folder(folder: str | Path, detector: Any) -> list[dict[str, Any]]:
    """Score every image of an official-layout folder; filenames are the image paths."""
    metas, paths = read_folder(folder)
    groups = [[load_image(p) for p in group] for group in paths]
    return evaluate_images(groups, metas, detector, filenames=paths)


# --------------------------------------------------------------------------------------------------
# Sweep entry point
# --------------------------------------------------------------------------------------------------
def prompt_set(cfg: Any, world: Any = None, train: Any = None) -> list[dict[str, Any]]:
    """The configured prompt set: official (553) or toy (``cfg.eval.n_prompts`` per task, fixed by the
    world seed so every trial in one world is scored on the same prompts).

    The toy set is the standard set (trainable compositions only) followed by the held-out set
    (:func:`~lightgen.geneval.prompts.toy_heldout_prompts`); every prompt carries its ``split``
    (:mod:`lightgen.data.compositions`): ``heldout`` always, ``intrain``/``novel`` when ``train`` (the run's
    own composition set, ``ToyDataset.train_compositions()``) is given."""
    from lightgen.data.compositions import with_splits
    from lightgen.errors import UserError
    from lightgen.geneval.prompts import official_prompts, toy_heldout_prompts, toy_prompts

    if cfg.eval.prompt_set == "official":
        prompts = official_prompts()
        if cfg.eval.n_prompts:  # the first n of each task: a quick, clearly partial pass (CI, rehearsals)
            per_task: dict[str, list[dict[str, Any]]] = {}
            for p in prompts:
                per_task.setdefault(p["tag"], []).append(p)
            prompts = [p for group in per_task.values() for p in group[: cfg.eval.n_prompts]]
        return prompts
    if world is None:
        raise UserError("eval.prompt_set=toy needs the toy world (world.kind=toy)")
    n = cfg.eval.n_prompts or None
    specs = toy_prompts(world, n, seed=cfg.world.seed) + toy_heldout_prompts(world, n, seed=cfg.world.seed)
    return with_splits(world, specs, train)


def make_detector(cfg: Any, world: Any = None) -> Any:
    """ToyDetector (cached classifier under <tracking.root>/geneval/) or RealDetector from paths."""
    from lightgen.errors import UserError

    if cfg.eval.detector == "toy":
        if world is None:
            raise UserError("eval.detector=toy needs the toy world (world.kind=toy)")
        from lightgen.geneval.toy_detector import ToyDetector
        from lightgen.layout import detector_cache

        return ToyDetector(world, cache_dir=detector_cache(cfg),
                           n_train=cfg.eval.detector_train_images, augment=cfg.eval.detector_augment)
    from lightgen.geneval.real_detector import RealDetector

    if not cfg.eval.segmenter or not cfg.eval.clip:
        raise UserError("eval.detector=real needs eval.segmenter and eval.clip (paths or hub ids)")
    return RealDetector.from_pretrained(cfg.eval.segmenter, cfg.eval.clip)


def run_geneval(
    cfg: Any,
    world: Any,
    sampler: Sampler,
    out_dir: str | Path | None,
    *,
    detector: Any = None,
    tracker: Any = None,
    step: int = 0,
    save_images: bool = True,
    train: Any = None,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Sample the configured prompt set, score it, write results.jsonl + summary.json to ``out_dir``.

    ``train``: the run's own composition set, which decides each toy prompt's ``intrain``/``novel`` split.

    With a ``tracker`` the summary is logged as metrics at ``step`` and results.jsonl as artifact
    ``geneval/results.jsonl`` (the per-prompt record paired tests are built on).
    """
    metas = prompt_set(cfg, world, train)
    detector = detector if detector is not None else make_detector(cfg, world)
    t0 = time.perf_counter()
    groups = sample_to_folder(sampler, metas, out_dir if save_images else None,
                              cfg.eval.images_per_prompt, cfg.seed, cfg.eval.batch_size)
    t1 = time.perf_counter()
    results = evaluate_images(groups, metas, detector)
    t2 = time.perf_counter()
    summary = summarize_results(results, cfg.eval.bootstrap, cfg.seed)
    if out_dir is not None:
        from lightgen.geneval.summary import write_results

        out = Path(out_dir)
        write_results(results, out / "results.jsonl")
        write_atomic(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    if tracker is not None:
        timing = {"compute/geneval_sample_s": t1 - t0, "compute/geneval_score_s": t2 - t1}
        tracker.log_metrics({**summary, **timing}, step=step)
        log_results_artifact(tracker, results)
    return summary, results


def summarize_results(results: list[dict[str, Any]], bootstrap: int, seed: int) -> dict[str, float]:
    from lightgen.geneval.summary import summarize

    return summarize(results, bootstrap=bootstrap, seed=seed)


def log_results_artifact(tracker: Any, results: list[dict[str, Any]] | str | Path) -> None:
    """Log results as ``geneval/results.jsonl`` whatever the source file was called."""
    import tempfile

    from lightgen.geneval.summary import write_results

    with tempfile.TemporaryDirectory() as tmp:
        dest = Path(tmp) / "results.jsonl"
        if isinstance(results, (str, Path)):
            dest.write_bytes(Path(results).read_bytes())
        else:
            write_results(results, dest)
        tracker.log_artifact(dest, "geneval")
