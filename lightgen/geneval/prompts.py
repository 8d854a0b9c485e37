"""GenEval prompt sets: the 553 official prompts (regenerated, byte-exact) and the toy-world set.

The official GenEval suite is produced by a seeded recipe rather than shipped as a file; we follow the
recipe (issue #6) draw for draw so that ``evaluation_metadata.jsonl`` and ``generation_prompts.txt``
match the official files byte-for-byte (a test pins their sha256). Every metadata dict is also a scene
*spec* (docs/ARCHITECTURE.md), so the toy set uses the very same templates and clause structure.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from lightgen.geneval.tasks import TASKS  # noqa: F401 - the task registry (read here as prompts.TASKS too)
from lightgen.utils import iter_jsonl, write_atomic

#: The 80 COCO classes in COCO order, with GenEval's names.
COCO_CLASSES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "computer mouse", "tv remote",
    "computer keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator",
    "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)
COLORS: tuple[str, ...] = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
NUMBERS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")

OFFICIAL_SEED = 43
OFFICIAL_PER_TASK = 100
METADATA_FILE = "evaluation_metadata.jsonl"
PROMPTS_FILE = "generation_prompts.txt"


def with_article(word: str) -> str:
    """'a bench', 'an apple': GenEval looks only at the first letter."""
    return f"an {word}" if word[0] in "aeiou" else f"a {word}"


def plural(word: str) -> str:
    """'buses', 'cars': GenEval adds 'es' after a final 's', else 's'."""
    return f"{word}es" if word.endswith("s") else f"{word}s"


# --------------------------------------------------------------------------------------------------
# Spec builders shared by the official and toy sets (clause key order matters for byte-exactness)
# --------------------------------------------------------------------------------------------------
def spec_single(cls: str) -> dict[str, Any]:
    return {"tag": "single_object", "include": [{"class": cls, "count": 1}], "prompt": f"a photo of {with_article(cls)}"}


def spec_two(a: str, b: str) -> dict[str, Any]:
    return {
        "tag": "two_object",
        "include": [{"class": a, "count": 1}, {"class": b, "count": 1}],
        "prompt": f"a photo of {with_article(a)} and {with_article(b)}",
    }


def spec_counting(cls: str, n: int) -> dict[str, Any]:
    return {
        "tag": "counting",
        "include": [{"class": cls, "count": n}],
        "exclude": [{"class": cls, "count": n + 1}],
        "prompt": f"a photo of {NUMBERS[n]} {plural(cls)}",
    }


def spec_color(cls: str, color: str) -> dict[str, Any]:
    return {
        "tag": "colors",
        "include": [{"class": cls, "count": 1, "color": color}],
        "prompt": f"a photo of {with_article(color)} {cls}",
    }


def spec_position(a: str, b: str, rel: str) -> dict[str, Any]:
    """A <rel> B: clause 0 is the target B, clause 1 is A with ``position: [rel, 0]``."""
    return {
        "tag": "position",
        "include": [{"class": b, "count": 1}, {"class": a, "count": 1, "position": [rel, 0]}],
        "prompt": f"a photo of {with_article(a)} {rel} {with_article(b)}",
    }


def spec_color_attr(a: str, color_a: str, b: str, color_b: str) -> dict[str, Any]:
    return {
        "tag": "color_attr",
        "include": [{"class": a, "count": 1, "color": color_a}, {"class": b, "count": 1, "color": color_b}],
        "prompt": f"a photo of {with_article(color_a)} {a} and {with_article(color_b)} {b}",
    }


def _dedup(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Drop samples equal to an earlier one, keeping the first (order preserved)."""
    seen: set[str] = set()
    out = []
    for s in samples:
        key = json.dumps(s, sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append(s)
    return out


def official_prompts(seed: int = OFFICIAL_SEED, n_per_task: int = OFFICIAL_PER_TASK) -> list[dict[str, Any]]:
    """GenEval's official metadata (553 dicts for the defaults), drawn exactly as the official recipe.

    One ``numpy.random.default_rng(seed)`` drives every draw, task after task, in a fixed order; the
    "colour" tasks skip ``person`` by drawing from 79 classes and offsetting by one (person is index 0).
    """
    rng = np.random.default_rng(seed)
    C, K = list(COCO_CLASSES), len(COCO_CLASSES)
    person = C.index("person")
    samples: list[dict[str, Any]] = [spec_single(C[i]) for i in rng.choice(K, size=K, replace=False)]
    for _ in range(n_per_task):
        a, b = rng.choice(K, size=2, replace=False)
        samples.append(spec_two(C[a], C[b]))
    for _ in range(n_per_task):
        i = rng.choice(K)
        n = int(rng.integers(2, 4, endpoint=True))
        samples.append(spec_counting(C[i], n))
    for _ in range(n_per_task):
        i = (int(rng.choice(K - 1)) + 1 + person) % K
        color = COLORS[rng.choice(len(COLORS))]
        samples.append(spec_color(C[i], color))
    for _ in range(n_per_task):
        a, b = rng.choice(K, size=2, replace=False)
        rel = RELATIONS[rng.choice(len(RELATIONS))]
        samples.append(spec_position(C[a], C[b], rel))
    for _ in range(n_per_task):
        ia, ib = (rng.choice(K - 1, size=2, replace=False) + 1 + person) % K
        ca, cb = rng.choice(len(COLORS), size=2, replace=False)
        samples.append(spec_color_attr(C[ia], COLORS[ca], C[ib], COLORS[cb]))
    return _dedup(samples)


def metadata_line(spec: dict[str, Any]) -> str:
    """One JSON line as GenEval writes it (default separators, key order as built)."""
    return json.dumps(spec)


def write_prompt_files(specs: list[dict[str, Any]], out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``evaluation_metadata.jsonl`` and ``generation_prompts.txt`` atomically into ``out_dir``."""
    out = Path(out_dir)
    meta = write_atomic(out / METADATA_FILE, "".join(metadata_line(s) + "\n" for s in specs))
    prompts = write_atomic(out / PROMPTS_FILE, "".join(s["prompt"] + "\n" for s in specs))
    return meta, prompts


def read_metadata(path: str | Path) -> list[dict[str, Any]]:
    """Read an ``evaluation_metadata.jsonl`` (one spec per line), validating each line."""
    from lightgen.errors import UserError

    path = Path(path)
    specs = []
    for where, spec in iter_jsonl(path):
        validate_spec(spec, where=where)
        specs.append(spec)
    if not specs:
        raise UserError(f"{path}: no prompts found")
    return specs


def validate_spec(spec: Any, where: str = "metadata") -> None:
    """Raise a UserError naming the field when a spec is not a GenEval metadata dict."""
    from lightgen.errors import UserError

    if not isinstance(spec, dict):
        raise UserError(f"{where}: expected a JSON object, got {type(spec).__name__}")
    for key in ("tag", "prompt", "include"):
        if key not in spec:
            raise UserError(f"{where}: missing field '{key}'")
    for key in ("tag", "prompt"):
        if not isinstance(spec[key], str):
            raise UserError(f"{where}: field '{key}' must be a string, got {type(spec[key]).__name__}")
    if "exclude" in spec and not isinstance(spec["exclude"], list):
        raise UserError(f"{where}: field 'exclude' must be a list, got {type(spec['exclude']).__name__}")
    if not isinstance(spec["include"], list) or not spec["include"]:
        raise UserError(f"{where}: field 'include' must be a non-empty list")
    for part in ("include", "exclude"):
        for j, clause in enumerate(spec.get(part, [])):
            if not isinstance(clause, dict) or "class" not in clause or "count" not in clause:
                raise UserError(f"{where}: {part}[{j}] needs 'class' and 'count'")
            for key in ("class", "color"):
                if key in clause and clause[key] is not None and not isinstance(clause[key], str):
                    raise UserError(f"{where}: {part}[{j}].{key} must be a string, got {type(clause[key]).__name__}")
            if not isinstance(clause["count"], int) or clause["count"] < 0:
                raise UserError(f"{where}: {part}[{j}].count must be a non-negative integer")
            if "position" in clause:
                pos = clause["position"]
                if not (isinstance(pos, (list, tuple)) and len(pos) == 2 and pos[0] in RELATIONS
                        and isinstance(pos[1], int) and 0 <= pos[1] < j):
                    raise UserError(
                        f"{where}: {part}[{j}].position must be [relation, earlier clause index], got {pos!r}"
                    )


# --------------------------------------------------------------------------------------------------
# Toy prompt set
# --------------------------------------------------------------------------------------------------
def paired_prompts_needed(delta: float = 0.05, discordance: float = 0.30, alpha: float = 0.05,
                          power: float = 0.8) -> int:
    """Independent paired observations for McNemar's test to detect an accuracy difference ``delta``.

    Two runs are scored on the same prompts, so the comparison is paired: only observations where the
    runs disagree carry information. With a discordant share ``psi`` (two runs at 50-80 % accuracy that
    disagree on ~30 % of images), Connor's (1987) sample size for McNemar's test is
    ``n = (z_{1-a/2} sqrt(psi) + z_{power} sqrt(psi - delta^2))^2 / delta^2`` (940 for the defaults).
    """
    from scipy.stats import norm

    za, zb = norm.ppf(1 - alpha / 2), norm.ppf(power)
    n = (za * math.sqrt(discordance) + zb * math.sqrt(discordance - delta**2)) ** 2 / delta**2
    return int(math.ceil(n))


def toy_prompts_per_task_needed(delta: float = 0.05, discordance: float = 0.30, icc: float = 0.30,
                                images_per_prompt: int = 4, alpha: float = 0.05, power: float = 0.8) -> int:
    """Prompts per task so that a ``delta`` difference in Overall is detected (paired, two-sided).

    Overall is the unweighted mean of six equally sized tasks, i.e. the mean over all scored images,
    so the McNemar count applies to images. Images of one prompt are correlated (intra-prompt
    correlation ``icc``), which inflates the count by the design effect ``1 + (m - 1) icc``; dividing
    by ``m`` images per prompt and 6 tasks gives prompts per task: 75 for the defaults.
    """
    images = paired_prompts_needed(delta, discordance, alpha, power) * (1 + (images_per_prompt - 1) * icc)
    return int(math.ceil(images / images_per_prompt / len(TASKS)))


#: Default toy prompts per task (= ``toy_prompts_per_task_needed()``, kept literal so the set is stable):
#: 75 x 6 = 450 prompts x 4 images detect a 5-point Overall difference at alpha=0.05 with 80 % power.
TOY_DEFAULT_PER_TASK = 75


def toy_prompts(world: Any, n_per_task: int | None = None, seed: int = 0) -> list[dict[str, Any]]:
    """The standard toy set: the six GenEval tasks over the toy vocabulary, seeded, drawn from the world's
    *trainable* compositions only (a draw that uses a globally held-out composition is redrawn; those are
    the held-out set's, :func:`toy_heldout_prompts`).

    Duplicates are redrawn (up to a limit) so each task has ``n_per_task`` distinct prompts whenever the
    vocabulary allows it, else the distinct ones are repeated up to ``n_per_task``. Which prompts a run has
    seen is the run's (``split``, :mod:`lightgen.data.compositions`), not the set's.
    """
    n = TOY_DEFAULT_PER_TASK if not n_per_task else int(n_per_task)
    rng = np.random.default_rng([seed, 6])  # own stream: independent of data/model seeds using `seed`
    classes, colors = list(world.classes), list(world.colors)
    relations = list(getattr(world, "relations", RELATIONS)) or list(RELATIONS)
    max_count = min(4, int(getattr(world, "max_objects", 4)))  # GenEval counts 2..4
    K, M = len(classes), len(colors)
    heldout = getattr(world, "is_heldout", lambda spec: False)

    def draw(task: str) -> dict[str, Any]:
        if task == "single_object":
            return spec_single(classes[rng.integers(K)])
        if task == "two_object":
            a, b = rng.choice(K, size=2, replace=False)
            return spec_two(classes[a], classes[b])
        if task == "counting":
            return spec_counting(classes[rng.integers(K)], int(rng.integers(2, max_count, endpoint=True)))
        if task == "colors":
            return spec_color(classes[rng.integers(K)], colors[rng.integers(M)])
        if task == "position":
            a, b = rng.choice(K, size=2, replace=False)
            return spec_position(classes[a], classes[b], relations[rng.integers(len(relations))])
        a, b = rng.choice(K, size=2, replace=False)
        ca, cb = rng.choice(M, size=2, replace=False)
        return spec_color_attr(classes[a], colors[ca], classes[b], colors[cb])

    out: list[dict[str, Any]] = []
    for task in TASKS:
        if task == "counting" and max_count < 2 or task in ("position", "two_object", "color_attr") and K < 2:
            continue  # the world cannot express this task
        keys: set[str] = set()
        distinct: list[dict[str, Any]] = []
        tries = 0
        while len(distinct) < n and tries < 50 * n:
            tries += 1
            spec = draw(task)
            key = json.dumps(spec, sort_keys=True)
            if key in keys or heldout(spec):
                continue
            keys.add(key)
            distinct.append(spec)
        if not distinct:
            continue  # every composition of this task is held out
        # A small vocabulary has fewer distinct prompts than n (12 classes: 12 single-object prompts):
        # repeat them in order so every task still gets n x images_per_prompt images (the power
        # calculation counts images); repeats share their metadata, so summaries group them as one prompt.
        out.extend(json.loads(json.dumps(distinct[k % len(distinct)])) for k in range(n))
    return out


HELDOUT_TASKS = ("counting", "colors", "position", "color_attr")


def toy_heldout_prompts(world: Any, n_per_task: int | None = None, seed: int = 0) -> list[dict[str, Any]]:
    """The held-out set: per compositional task, distinct prompts that use a globally held-out composition,
    each flagged ``"split": "heldout"``.

    Every held-out composition of the world is enumerated (counting: every held-out (class, count ≤ 4);
    colors: every held-out (colour, class); position: every held-out triple, i.e. both directions of each
    held-out unit; color_attr: every pair of (colour, class) pairs of distinct classes and colours with at
    least one held out), then at most ``n_per_task`` of them are taken round-robin over the first clause's
    class (seeded order within a class), so the class mix is as even as the standard set's. The world's
    balanced held-out draw (``ToyWorld._make_heldout``) gives every class the same number of held-out colours
    and counts, so the two sets are matched by class (and, for counting, by count). No prompt is repeated:
    where the world has fewer than ``n_per_task`` held-out compositions (the cpu world's colors: 18, counting:
    6) the task has that many.
    """
    n = TOY_DEFAULT_PER_TASK if not n_per_task else int(n_per_task)
    rng = np.random.default_rng([seed, 61])
    classes, colors = list(world.classes), list(world.colors)
    relations = list(getattr(world, "relations", RELATIONS))
    max_count = min(4, int(getattr(world, "max_objects", 4)))
    held_cc = set(getattr(world, "heldout_color_class", ()))
    pools: dict[str, list[dict[str, Any]]] = {
        "counting": [spec_counting(k, c) for k, c in sorted(getattr(world, "heldout_class_count", ())) if c <= max_count],
        "colors": [spec_color(k, c) for c, k in sorted(held_cc)],
        "position": [spec_position(a, b, r) for a, r, b in sorted(getattr(world, "heldout_relation", ()))
                     if r in relations],
        "color_attr": [spec_color_attr(a, ca, b, cb) for a in classes for b in classes if a != b
                       for ca in colors for cb in colors if ca != cb and ((ca, a) in held_cc or (cb, b) in held_cc)],
    }
    out: list[dict[str, Any]] = []
    for task in HELDOUT_TASKS:
        by_class: dict[str, list[dict[str, Any]]] = {}
        for spec in pools[task]:
            by_class.setdefault(spec["include"][-1 if task == "position" else 0]["class"], []).append(spec)
        groups = [[g[i] for i in rng.permutation(len(g))] for _, g in sorted(by_class.items())]
        groups = [groups[i] for i in rng.permutation(len(groups))] if groups else []
        picked: list[dict[str, Any]] = []
        depth = 0
        while len(picked) < n and any(depth < len(g) for g in groups):
            picked.extend(g[depth] for g in groups if depth < len(g))
            depth += 1
        out.extend({**s, "split": "heldout"} for s in picked[:n])
    return out
