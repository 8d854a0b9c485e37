"""GenEval's scoring rules, exactly as the official evaluator applies them (issue #6).

Detections format (what every detector returns and what the rules consume)::

    {class_name: [{"box": [x0, y0, x1, y1], "score": float, "color": str | None}, ...], ...}

Boxes are in pixels, y pointing down. ``color`` may be ``None`` when the detector classifies colours
lazily (the real detector runs CLIP only for the objects a colour clause checks); the rules then call
``color_fn(class_name, objects) -> list[str]``. Extra keys (e.g. ``"mask"``) are carried along.

Rules:
* per class keep detections with score > 0.3 (> 0.9 for ``counting`` prompts), most confident first,
  at most 16 (:func:`filter_detections`);
* every ``include`` clause needs >= ``count`` detections of its class; colour and position are checked
  only on the ``count`` most confident ones; any ``exclude`` clause with >= ``count`` detections fails;
* position compares box centres (A minus B), shrinking each axis offset toward 0 by 0.1 x the sum of
  the two boxes' sizes on that axis (:func:`relative_position`); every checked A must hold the relation
  to every object of its target clause, and a target clause that failed fails the position clause.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

THRESHOLD = 0.3
COUNTING_THRESHOLD = 0.9
MAX_OBJECTS = 16
POSITION_THRESHOLD = 0.1
COLORS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")

Detections = dict[str, list[dict[str, Any]]]
ColorFn = Callable[[str, list[dict[str, Any]]], list[str]]


def filter_detections(
    raw: Detections,
    tag: str,
    threshold: float = THRESHOLD,
    counting_threshold: float = COUNTING_THRESHOLD,
    max_objects: int = MAX_OBJECTS,
) -> Detections:
    """Confidence threshold (stricter for counting), sort by score, cap per class; drop empty classes."""
    thr = counting_threshold if tag == "counting" else threshold
    out: Detections = {}
    for cls, objs in raw.items():
        kept = sorted((o for o in objs if float(o["score"]) > thr), key=lambda o: -float(o["score"]))
        kept = kept[:max_objects]
        if kept:
            out[cls] = kept
    return out


def relative_position(box_a: list[float], box_b: list[float], threshold: float = POSITION_THRESHOLD) -> set[str]:
    """Relations of box A to box B ('left of', 'right of', 'above', 'below'); empty set if too close.

    The centre offset on each axis is shrunk toward 0 by ``threshold`` x (size_a + size_b) on that axis
    and clamped at 0, then divided by the length of the unshrunk offset; |component| > 0.5 gives a
    relation. Overlapping or nearly concentric boxes therefore have no relation at all.
    """
    a = np.asarray(box_a[:4], dtype=np.float64).reshape(2, 2)
    b = np.asarray(box_b[:4], dtype=np.float64).reshape(2, 2)
    offset = a.mean(axis=0) - b.mean(axis=0)
    dims = np.abs(a[1] - a[0]) + np.abs(b[1] - b[0])
    shrunk = np.maximum(np.abs(offset) - threshold * dims, 0.0) * np.sign(offset)
    if np.all(np.abs(shrunk) < 1e-3):
        return set()
    dx, dy = shrunk / np.linalg.norm(offset)
    rels = set()
    if dx < -0.5:
        rels.add("left of")
    if dx > 0.5:
        rels.add("right of")
    if dy < -0.5:
        rels.add("above")
    if dy > 0.5:
        rels.add("below")
    return rels


def _colors_of(cls: str, objs: list[dict[str, Any]], color_fn: ColorFn | None) -> list[str]:
    if all(o.get("color") is not None for o in objs):
        return [o["color"] for o in objs]
    if color_fn is None:
        raise ValueError(f"detections of '{cls}' carry no colour and no color_fn was given")
    return list(color_fn(cls, objs))


def check_image(metadata: dict[str, Any], detections: Detections, color_fn: ColorFn | None = None) -> tuple[bool, str]:
    """Apply GenEval's clauses to *filtered* detections; returns (correct, reason lines joined by \\n).

    Include clauses are AND-ed, exclude clauses OR-ed; colour and position only look at the ``count``
    most confident detections of a clause's class (detections must be sorted, as filter_detections does).
    """
    correct = True
    reasons: list[str] = []
    groups: list[list[dict[str, Any]] | None] = []  # matched objects per include clause (None = failed)
    for clause in metadata.get("include", []):
        cls, count = clause["class"], int(clause["count"])
        found = detections.get(cls, [])[:count]
        ok = True
        if len(found) < count:
            ok = False
            reasons.append(f"expected {cls}>={count}, found {len(found)}")
        else:
            if "color" in clause:
                colors = _colors_of(cls, found, color_fn)
                want = clause["color"]
                if colors.count(want) < count:
                    ok = False
                    reasons.append(
                        f"expected {want} {cls}>={count}, found {colors.count(want)} {want}; and "
                        + ", ".join(f"{colors.count(c)} {c}" for c in COLORS if c in colors)
                    )
            if "position" in clause and ok:
                rel, target = clause["position"][0], int(clause["position"][1])
                targets = groups[target] if 0 <= target < len(groups) else None
                if targets is None:
                    ok = False
                    reasons.append(f"no target for {cls} to be {rel}")
                else:
                    for obj in found:
                        for tobj in targets:
                            true_rels = relative_position(obj["box"], tobj["box"])
                            if rel not in true_rels:
                                ok = False
                                reasons.append(f"expected {cls} {rel} target, found {' and '.join(sorted(true_rels))} target")
                                break
                        if not ok:
                            break
        correct = correct and ok
        groups.append(found if ok else None)
    for clause in metadata.get("exclude", []):
        cls, count = clause["class"], int(clause["count"])
        n = len(detections.get(cls, []))
        if n >= count:
            correct = False
            reasons.append(f"expected {cls}<{count}, found {n}")
    return correct, "\n".join(reasons)
