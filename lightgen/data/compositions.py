"""A run's own composition set: what its training items both state (caption) and show (scene).

The per-run GenEval splits are read against it (:func:`prompt_split`): a prompt is

* ``"heldout"`` when it uses a globally held-out composition (``world.is_heldout``; never in any training set),
* ``"intrain"`` when every composition it uses — (colour, class), (class, count ≥ 2), (A, relation, B) —
  and every class it names occurs in this run's training data, stated by a caption *and* shown by its scene,
* ``"novel"`` otherwise (trainable, but this run never saw it).

Compositions are tuples as :meth:`ToyWorld.compositions` writes them, plus ``("class", cls)`` atoms; relations
come with their inverses ("A left of B" is the scene "B right of A"). On disk (next to the dataset's shards,
``compositions-<N>.json``, written atomically) each composition is one ``"|"``-joined key with its item count.

Per-dataset numbers (logged as ``data/…`` with the dataset; docs/ARCHITECTURE.md):
``trainable_coverage`` (realised trainable compositions / the world's trainable compositions),
``realised_compositions``, ``repetition`` (items per realised composition, mean) and ``repetition_min``,
``colourless_share`` (captions stating no colour), ``colourless_share_geneval`` (the same among the captions
in GenEval's literal phrasing), ``colours_per_caption`` (colours stated per caption, mean) and
``heldout_leaks`` (items whose caption states or whose scene shows a held-out composition: 0 by construction).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

SPLITS = ("intrain", "novel", "heldout")
VERSION = 1


def key(comp: Sequence) -> str:
    return "|".join(str(x) for x in comp)


def unkey(k: str) -> tuple:
    parts = k.split("|")
    return tuple(int(p) if p.isdigit() else p for p in parts)


def item_compositions(world: Any, spec: dict, objects: Sequence[dict]) -> tuple[set[tuple], set[tuple]]:
    """(realised, leaked) of one training item: realised = stated ∩ shown (with the classes named and drawn);
    leaked = held-out compositions it states or shows (must be empty)."""
    stated = world.stated_compositions(spec) | {("class", cl["class"]) for cl in spec["include"]}
    shown = world.shown_compositions(objects) | {("class", o["class"]) for o in objects}
    leaked = {c for c in stated | shown if world.is_heldout_composition(c)}
    return stated & shown, leaked


def measure(world: Any, items: Iterable[tuple[dict, str, int]], resolution: int) -> dict[str, Any]:
    """Composition counts and per-dataset numbers of ``items`` = (spec, caption, render seed)."""
    counts: Counter = Counter()
    n = colourless = geneval = geneval_colourless = colours = leaks = 0
    for spec, caption, seed in items:
        realised, leaked = item_compositions(world, spec, world.objects(spec, resolution, seed))
        counts.update(realised)
        k = sum(1 for cl in spec["include"] if cl.get("color") is not None)
        n += 1
        colours += k
        colourless += k == 0
        if caption.startswith("a photo of "):
            geneval += 1
            geneval_colourless += k == 0
        leaks += bool(leaked)
    return {"counts": counts, "metrics": summarise(world, counts, n, colourless, geneval, geneval_colourless,
                                                   colours, leaks)}


def summarise(world: Any, counts: Mapping[tuple, int], n: int, colourless: int, geneval: int,
              geneval_colourless: int, colours: int, leaks: int) -> dict[str, float]:
    trainable = world.trainable_compositions()
    realised = [c for c in counts if c[0] != "class"]
    occ = [counts[c] for c in realised]
    return {
        "trainable_coverage": len(trainable & set(realised)) / len(trainable) if trainable else 0.0,
        "realised_compositions": float(len(realised)),
        "repetition": float(sum(occ) / len(occ)) if occ else 0.0,
        "repetition_min": float(min(occ)) if occ else 0.0,
        "colourless_share": colourless / n if n else 0.0,
        "colourless_share_geneval": geneval_colourless / geneval if geneval else 0.0,
        "colours_per_caption": colours / n if n else 0.0,
        "heldout_leaks": float(leaks),
    }


def save(path: Path, size: int, result: dict[str, Any]) -> Path:
    from lightgen.utils import write_atomic

    blob = {"version": VERSION, "size": int(size), "metrics": result["metrics"],
            "counts": {key(c): int(v) for c, v in sorted(result["counts"].items(), key=lambda kv: key(kv[0]))}}
    return write_atomic(path, json.dumps(blob, indent=0) + "\n")


def load(path: Path, size: int) -> dict[str, Any] | None:
    """The saved result for ``size`` items, or None (missing, another size/version, or unreadable)."""
    try:
        blob = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(blob, dict) or blob.get("version") != VERSION or blob.get("size") != size:
        return None
    return {"counts": Counter({unkey(k): int(v) for k, v in blob["counts"].items()}), "metrics": blob["metrics"]}


def prompt_split(world: Any, spec: dict, train: set[tuple] | frozenset | None) -> str | None:
    """``"heldout"`` / ``"intrain"`` / ``"novel"`` for a GenEval prompt spec (None: the run's data is unknown
    and the prompt is not held out)."""
    comps = world.compositions(spec)
    if any(world.is_heldout_composition(c) for c in comps):
        return "heldout"
    if train is None:
        return None
    need = set(comps) | {("class", cl["class"]) for cl in spec["include"]}
    return "intrain" if need <= train else "novel"


def with_splits(world: Any, specs: Sequence[dict], train: set[tuple] | frozenset | None) -> list[dict]:
    """Copies of ``specs`` with their ``split`` (see :func:`prompt_split`); the old ``seen`` flag dropped."""
    out = []
    for s in specs:
        s = {k: v for k, v in s.items() if k not in ("seen", "split")}
        split = prompt_split(world, s, train)
        if split is not None:
            s["split"] = split
        out.append(s)
    return out
