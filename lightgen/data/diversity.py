"""Measured dataset diversity: what the study's curves are drawn against.

Every subsample metric is computed on a fixed-size seeded subsample (``data.diversity_subsample``
items, the same seed for every dataset), so a metric does not grow with volume alone:

* ``distinct_1..4`` — distinct word n-grams / all word n-grams over the subsample's captions;
* ``unique_caption_ratio`` — distinct captions / captions in the subsample;
* ``coverage`` — distinct atomic compositions in the subsample / trainable compositions of the world;
* ``attributes_per_caption`` — mean number of stated attributes (colours, counts ≥ 2, relations): density;
* ``vendi_caption`` — Vendi score (exp of the entropy of the normalised similarity kernel's
  eigenvalues) of TF-IDF word 1–2-gram caption vectors with a cosine kernel;
* ``vendi_image`` — Vendi score of cheap image features (8×8 average-pooled RGB, centred, cosine kernel).

Whole-dataset counts (they *do* grow with volume, which is what makes saturation visible):
``realised_coverage`` (distinct compositions used / trainable), ``unique_compositions`` (distinct scene
structures) and ``unique_captions``.
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Sequence

import numpy as np

METRICS = ("distinct_1", "distinct_2", "distinct_3", "distinct_4", "unique_caption_ratio", "coverage",
           "attributes_per_caption", "vendi_caption", "vendi_image", "realised_coverage", "unique_compositions", "unique_captions")
SUBSAMPLE_SEED = 20250311  # fixed: every dataset is measured on the same kind of subsample


def subsample_indices(n: int, k: int, seed: int = SUBSAMPLE_SEED) -> np.ndarray:
    """A sorted seeded subsample of ``min(n, k)`` indices of ``range(n)``."""
    if n <= k:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False))


def distinct_n(captions: Sequence[str], n: int) -> float:
    grams: list[tuple[str, ...]] = []
    for c in captions:
        w = c.split()
        grams.extend(tuple(w[i : i + n]) for i in range(len(w) - n + 1))
    return len(set(grams)) / len(grams) if grams else 0.0


def vendi_from_features(x: Any) -> float:
    """Vendi score of row-normalised features with a cosine kernel.

    The kernel ``K = X Xᵀ / n`` has the same non-zero eigenvalues as ``Xᵀ X / n``; we take whichever is
    smaller, so the cost is bounded by the feature dimension, not only by the subsample size.
    """
    import scipy.sparse as sp

    n = x.shape[0]
    if n == 0:
        return 0.0
    if sp.issparse(x):
        norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=1))).ravel()
        norms[norms == 0] = 1.0
        x = sp.diags(1.0 / norms) @ x
        small = (x.T @ x).toarray() if x.shape[1] < n else (x @ x.T).toarray()
    else:
        x = np.asarray(x, dtype=np.float64)
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        norms[norms == 0] = 1.0
        x = x / norms
        small = x.T @ x if x.shape[1] < n else x @ x.T
    ev = np.linalg.eigvalsh(small / n)
    ev = ev[ev > 1e-12]
    ev = ev / ev.sum()
    return float(np.exp(-(ev * np.log(ev)).sum()))


def tfidf(captions: Sequence[str]) -> Any:
    """TF-IDF of word 1–2-grams, identical to scikit-learn's ``TfidfVectorizer(ngram_range=(1, 2),
    token_pattern=r"[^ ]+")`` (smooth idf, l2 rows) — written out with scipy because importing
    scikit-learn costs seconds per process, more than the whole smoke dataset build."""
    import scipy.sparse as sp

    vocab: dict[tuple[str, ...], int] = {}
    rows, cols = [], []
    for r, c in enumerate(captions):
        w = c.split()
        for g in [(t,) for t in w] + list(zip(w, w[1:])):
            rows.append(r)
            cols.append(vocab.setdefault(g, len(vocab)))
    n = len(captions)
    tf = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, len(vocab)))
    tf.sum_duplicates()
    df = np.bincount(tf.indices, minlength=len(vocab))
    idf = np.log((1 + n) / (1 + df)) + 1.0
    x = tf @ sp.diags(idf)
    norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=1))).ravel()
    norms[norms == 0] = 1.0
    return sp.csr_matrix(sp.diags(1.0 / norms) @ x)


def vendi_captions(captions: Sequence[str]) -> float:
    if not captions:
        return 0.0
    return vendi_from_features(tfidf(captions))


def image_features(images: np.ndarray, grid: int = 8) -> np.ndarray:
    """8×8 average-pooled RGB (values in [0, 1]) per image: a cheap, layout- and colour-aware feature."""
    imgs = np.asarray(images, dtype=np.float32) / 255.0
    n, h, w, c = imgs.shape
    g = min(grid, h, w)
    hh, ww = h // g * g, w // g * g
    pooled = imgs[:, :hh, :ww].reshape(n, g, hh // g, g, ww // g, c).mean(axis=(2, 4))
    return pooled.reshape(n, -1)


def vendi_images(images: np.ndarray) -> float:
    if len(images) == 0:
        return 0.0
    f = image_features(images)
    return vendi_from_features(f - f.mean(axis=0, keepdims=True))


def spec_signature(spec: dict) -> str:
    """A canonical string of a spec's structure (clauses; no prompt/tag): a scene "composition"."""
    inc = [{k: cl[k] for k in ("class", "count", "color", "position") if cl.get(k) is not None}
           for cl in spec.get("include", [])]
    return json.dumps(inc, sort_keys=True)


def subsample_metrics(captions: Sequence[str], comps: Iterable[Iterable[tuple]], n_trainable: int,
                      images: np.ndarray | None = None) -> dict[str, float]:
    """The subsample metrics (see module docstring). ``comps`` are each item's atomic compositions."""
    out = {f"distinct_{n}": distinct_n(captions, n) for n in (1, 2, 3, 4)}
    out["unique_caption_ratio"] = len(set(captions)) / max(1, len(captions))
    comps = [list(cs) for cs in comps]
    seen = {tuple(c) for cs in comps for c in cs}
    out["coverage"] = len(seen) / n_trainable if n_trainable else 0.0
    out["attributes_per_caption"] = float(np.mean([len(cs) for cs in comps])) if comps else 0.0
    out["vendi_caption"] = vendi_captions(captions)
    if images is not None:
        out["vendi_image"] = vendi_images(images)
    return out
