"""The toy world: a procedural "shapes" scene world in GenEval's image, and its teacher (a renderer).

Why a toy world: it lets the whole study (data → student → GenEval) run on a CPU in minutes while
keeping GenEval's structure: object classes, 10 colours, counts, and four spatial relations.

* Classes are flat silhouettes (circle, square, triangle, star, …); ``world.n_classes`` takes the first N
  of :data:`ALL_CLASSES`.  Colours are GenEval's ten, with a fixed palette (:data:`PALETTE`).
* A *spec* is a GenEval metadata dict (``tag``, ``include`` clauses with ``class``/``count`` and optional
  ``color`` and ``position: [relation, target_clause_index]``, optional ``exclude``, ``prompt``).
  :meth:`ToyWorld.render` draws any spec exactly: every clause's count, its colour (a clause without a
  colour gets a random *trainable* colour, so no image ever shows a held-out colour/class pair), and
  positions that pass GenEval's box-centre rule with a wide margin.  Objects never overlap.
* Rendering is fast because silhouettes (:mod:`lightgen.world.shapes`) are pre-rasterised once
  per (class, pixel size, rotation level) and then alpha-stamped into the canvas with numpy slices.
* Held-out compositions (global, fixed by ``world.seed`` only, independent of every data knob; see
  ``ToyWorld._make_heldout``): a balanced seeded ``heldout_fraction`` of (colour, class) pairs, of
  (class, count≥2) pairs and of (classA, relation, classB) triples, each triple with its inverse.
  ``is_heldout(spec)`` is True when a spec uses any of them.  No image shows an unstated held-out
  composition: placements that would (by GenEval's position rule) are redrawn (``ToyWorld._place``).

Boxes returned by :meth:`ToyWorld.render_with_objects` are ``[x0, y0, x1, y1]`` in pixels, ``x1``/``y1``
exclusive (numpy slice convention), covering the pixels whose coverage is ≥ 0.5.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Iterable, Sequence

import numpy as np

from lightgen.errors import UserError
from lightgen.world.grammar import NUMBER_WORDS, plural, vocabulary  # noqa: F401 - NUMBER_WORDS re-exported
from lightgen.world.shapes import N_ROTATIONS, silhouette  # noqa: F401 - silhouette re-exported

ALL_CLASSES: tuple[str, ...] = (
    "circle", "square", "triangle", "star", "heart", "cross", "diamond", "hexagon",
    "pentagon", "crescent", "ring", "arrow", "semicircle", "trapezoid", "ellipse", "frame",
)
PLURALS: dict[str, str] = {c: plural(c) for c in ALL_CLASSES}

# GenEval's colours, in GenEval's order, with a fixed, well separated palette.
ALL_COLORS: tuple[str, ...] = (
    "red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white",
)
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30), "orange": (250, 140, 10), "yellow": (245, 225, 20), "green": (30, 160, 50),
    "blue": (30, 70, 225), "purple": (130, 40, 180), "pink": (250, 140, 200), "brown": (120, 70, 25),
    "black": (12, 12, 12), "white": (250, 250, 250),
}
ALL_RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
# Muted greys/tints, far from every palette colour (variant 0 = plain grey).
BACKGROUNDS: tuple[tuple[int, int, int], ...] = (
    (128, 128, 128), (100, 112, 126), (150, 142, 124), (112, 126, 108),
    (168, 168, 174), (88, 88, 94), (142, 122, 132), (120, 140, 146),
)

# GenEval's threshold in its relative-position rule (see relation_holds).
POSITION_THRESHOLD = 0.1
#: Version of the held-out draw (the world's identity carries it: caches of an older draw are not reused)
HELDOUT_RULE = 2
# placements tried before a scene keeps its first draw: a training scene has >= 1/3 acceptable placements
# (at most half of a class pair's relations are held out, _make_heldout), so 64 tries fail with p < 1e-11
MAX_REDRAWS = 64
INVERSE: dict[str, str] = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


def relation_holds(box_a: Sequence[float], box_b: Sequence[float], relation: str,
                   threshold: float = POSITION_THRESHOLD) -> bool:
    """GenEval's relative-position rule: is A ``relation`` B given their boxes?

    The centre offset is shrunk by ``threshold`` × (sum of box sizes) per axis and the relation holds
    when the shrunk offset along its axis exceeds half of the offset's length.
    """
    a = np.asarray(box_a, dtype=float).reshape(2, 2)
    b = np.asarray(box_b, dtype=float).reshape(2, 2)
    offset = a.mean(0) - b.mean(0)
    dims = np.abs(np.diff(a, axis=0))[0] + np.abs(np.diff(b, axis=0))[0]
    revised = np.maximum(np.abs(offset) - threshold * dims, 0) * np.sign(offset)
    norm = float(np.linalg.norm(offset))
    if norm == 0 or np.all(np.abs(revised) < 1e-3):
        return False
    dx, dy = revised / norm
    return {"left of": dx < -0.5, "right of": dx > 0.5, "above": dy < -0.5, "below": dy > 0.5}[relation]


_N_UNIFORMS = 128  # enough for 16 objects (6 draws each) plus colours and the background


@functools.lru_cache(maxsize=None)
def _edges(res: int, g: int) -> tuple[int, ...]:
    return tuple(int(v) for v in np.linspace(0, res, g + 1).round())


# --------------------------------------------------------------------------------------------------
# The world
# --------------------------------------------------------------------------------------------------
def close_inverses(comps: Iterable[Sequence], relations: Iterable[str] = ALL_RELATIONS) -> set[tuple]:
    """Compositions with every relation's inverse added ("A left of B" is also "B right of A")."""
    rels = set(relations)
    out = {tuple(c) for c in comps}
    out.update(("relation", c[3], INVERSE[c[2]], c[1]) for c in list(out)
               if c[0] == "relation" and INVERSE[c[2]] in rels)
    return out


def _balanced_cells(rows: list[Any], cols: list[Any], fraction: float, rng: np.random.Generator,
                    max_row: int, max_col: int) -> set[tuple[Any, Any]]:
    """A seeded ``fraction`` of the (row, col) cells with balanced margins: every row holds the same number
    of cells (±1, at most ``max_row``) and every column too (±1, at most ``max_col``).

    Built as consecutive blocks around a seeded column order (which balances both margins), then shuffled by
    random 2×2 swaps that keep every margin, so the pattern is random but the margins stay exact.
    """
    if not rows or not cols:
        return set()
    k = int(math.floor(fraction * len(rows) * len(cols) + 0.5))
    k = min(k, len(rows) * max(0, max_row), len(cols) * max(0, max_col))
    if k <= 0:
        return set()
    m = np.zeros((len(rows), len(cols)), dtype=bool)
    base, extra = divmod(k, len(rows))
    rp, cp = rng.permutation(len(rows)), rng.permutation(len(cols))
    pos = 0
    for n, r in enumerate(rp):
        for _ in range(base + (n < extra)):
            m[r, cp[pos % len(cols)]] = True
            pos += 1
    for _ in range(50 * m.size):  # margin-preserving swaps: a random matrix with these margins
        r1, r2 = rng.choice(len(rows), 2, replace=False) if len(rows) > 1 else (0, 0)
        c1, c2 = rng.choice(len(cols), 2, replace=False) if len(cols) > 1 else (0, 0)
        if m[r1, c1] and m[r2, c2] and not m[r1, c2] and not m[r2, c1]:
            m[r1, c1] = m[r2, c2] = False
            m[r1, c2] = m[r2, c1] = True
    return {(rows[r], cols[c]) for r, c in zip(*np.nonzero(m))}


class ToyWorld:
    """Classes, colours, relations, held-out compositions and the teacher renderer of the toy world.

    ``cfg`` is a :class:`lightgen.config.WorldConfig` (or anything with the same attributes); ``None``
    gives the defaults.
    """

    def __init__(self, cfg: Any = None):
        if cfg is None:
            from lightgen.config import WorldConfig

            cfg = WorldConfig()
        self.cfg = cfg
        self.seed = int(cfg.seed)
        self.classes: list[str] = list(ALL_CLASSES[: cfg.n_classes])
        self.colors: list[str] = list(ALL_COLORS[: cfg.n_colors])
        self.relations: list[str] = list(ALL_RELATIONS[: cfg.n_relations])
        self.max_objects = int(cfg.max_objects)
        self.counts: list[int] = list(range(1, self.max_objects + 1))
        self.backgrounds = list(BACKGROUNDS[: cfg.n_backgrounds])
        self.palette: dict[str, tuple[int, int, int]] = {c: PALETTE[c] for c in self.colors}
        self.heldout_fraction = float(cfg.heldout_fraction)
        self.layout = str(getattr(cfg, "layout", "free"))
        self.grid_cells = int(getattr(cfg, "grid_cells", 2))
        self.fixed_pose = str(getattr(cfg, "pose", "varied")) == "fixed"
        #: most objects one scene can hold (one per cell in the grid layout)
        self.capacity = self.grid_cells**2 if self.layout == "grid" else 16
        self._class_set, self._color_set = set(self.classes), set(self.colors)
        self._colors_np = {c: np.asarray(PALETTE[c], dtype=np.float32) for c in self.colors}
        self._make_heldout()

    # ---- held-out compositions -----------------------------------------------------------------
    def _make_heldout(self) -> None:
        """The global held-out draw (fixed by ``world.seed``; rule version :data:`HELDOUT_RULE`).

        * (colour, class) pairs: ``round(f · classes · colours)`` pairs with balanced margins: every class
          holds out the same number of colours (±1) and every colour is held out for the same number of
          classes (±1), so every class keeps ≥ 2 trainable colours and every colour ≥ 1 trainable class, and
          held-out and trainable prompts have the same class mix (the CLEVR-CoGenT design, seeded).
        * (class, count ≥ 2) pairs: the same balanced draw over classes × counts (every class keeps a
          trainable count when the world has two or more counts ≥ 2).
        * (A, relation, B) triples are held out *with their inverses* ("A left of B" is the scene "B right of
          A"): ``round(f · units)`` inverse units, spread evenly over the unordered class pairs and at most
          half of any pair's units, so every two-object scene still has a placement that shows no held-out
          relation (the teacher rejects placements that would, see :meth:`_draw`).
        """
        f = self.heldout_fraction
        rng = np.random.default_rng([self.seed, HELDOUT_RULE])
        M = len(self.colors)
        held = _balanced_cells(self.classes, self.colors, f, rng, max_row=max(0, M - 2),
                               max_col=max(0, len(self.classes) - 1))
        self.heldout_color_class: frozenset[tuple[str, str]] = frozenset((col, cls) for cls, col in held)
        counts = [n for n in self.counts if n >= 2]
        self.heldout_class_count: frozenset[tuple[str, int]] = frozenset(_balanced_cells(
            self.classes, counts, f, rng, max_row=len(counts) - 1 if len(counts) >= 2 else len(counts),
            max_col=max(0, len(self.classes) - 1)))
        self.heldout_relation: frozenset[tuple[str, str, str]] = frozenset(self._relation_units(f, rng))
        self._trainable_colors = {
            cls: [c for c in self.colors if (c, cls) not in self.heldout_color_class] for cls in self.classes
        }
        self._any_heldout = bool(self.heldout_color_class or self.heldout_class_count or self.heldout_relation)

    def _relation_units(self, f: float, rng: np.random.Generator) -> set[tuple[str, str, str]]:
        rels = set(self.relations)
        pairs = [(a, b) for i, a in enumerate(self.classes) for b in self.classes[i + 1:]]
        units_of: dict[tuple[str, str], list[frozenset]] = {}
        for a, b in pairs:
            units: list[frozenset] = []
            for r in self.relations:
                for x, y in ((a, b), (b, a)):
                    unit = frozenset(t for t in ((x, r, y), (y, INVERSE[r], x)) if t[1] in rels)
                    if unit not in units:
                        units.append(unit)
            units_of[(a, b)] = units
        total = sum(len(u) for u in units_of.values())
        k = int(math.floor(f * total + 0.5))
        if k == 0:
            return set()
        order = [pairs[i] for i in rng.permutation(len(pairs))]
        base, extra = divmod(k, len(pairs))
        out: set[tuple[str, str, str]] = set()
        for n, pair in enumerate(order):
            units = units_of[pair]
            want = min(base + (n < extra), len(units) // 2)
            for i in rng.permutation(len(units))[:want]:
                out |= units[i]
        return out

    def trainable_colors(self, cls: str) -> list[str]:
        """Colours that class ``cls`` may show in training images."""
        return list(self._trainable_colors[cls])

    def compositions(self, spec: dict) -> list[tuple]:
        """The compositions a spec uses: ("color", col, cls), ("count", cls, n), ("relation", a, rel, b)."""
        out: list[tuple] = []
        inc = spec.get("include", [])
        for cl in inc:
            if cl.get("color") is not None:
                out.append(("color", cl["color"], cl["class"]))
            if int(cl.get("count", 1)) >= 2:
                out.append(("count", cl["class"], int(cl["count"])))
            if cl.get("position"):
                rel, j = cl["position"]
                out.append(("relation", cl["class"], rel, inc[int(j)]["class"]))
        return out

    def stated_compositions(self, spec: dict) -> set[tuple]:
        """What a spec (and so its caption) states, relations with their inverses ("A left of B" states
        "B right of A" too)."""
        return close_inverses(self.compositions(spec), self.relations)

    def shown_compositions(self, objects: Sequence[dict]) -> set[tuple]:
        """What an image shows, from its objects (``render_with_objects``): every object's (colour, class),
        every class's count when ≥ 2, and every relation between two objects of different classes that
        GenEval's position rule (:func:`lightgen.geneval.rules.relative_position`) reads from their boxes."""
        from lightgen.geneval.rules import relative_position

        out: set[tuple] = set()
        n_of: dict[str, int] = {}
        for o in objects:
            out.add(("color", o["color"], o["class"]))
            n_of[o["class"]] = n_of.get(o["class"], 0) + 1
        out.update(("count", c, n) for c, n in n_of.items() if n >= 2)
        rels = set(self.relations)
        for i, a in enumerate(objects):
            for j, b in enumerate(objects):
                if i != j and a["class"] != b["class"]:
                    out.update(("relation", a["class"], r, b["class"])
                               for r in relative_position(a["box"], b["box"]) if r in rels)
        return out

    def is_heldout_composition(self, comp: Sequence) -> bool:
        """True for a globally held-out ("color", col, cls), ("count", cls, n) or ("relation", a, rel, b)."""
        kind = comp[0]
        if kind == "color":
            return (comp[1], comp[2]) in self.heldout_color_class
        if kind == "count":
            return (comp[1], comp[2]) in self.heldout_class_count
        if kind == "relation":
            return tuple(comp[1:]) in self.heldout_relation
        return False

    def is_heldout(self, spec: dict) -> bool:
        """True when the spec uses any globally held-out composition (never seen in training)."""
        return any(self.is_heldout_composition(c) for c in self.compositions(spec))

    def heldout_compositions(self) -> set[tuple]:
        """Every globally held-out composition, in the ``compositions`` format."""
        return ({("color", c, k) for c, k in self.heldout_color_class}
                | {("count", k, n) for k, n in self.heldout_class_count}
                | {("relation", *t) for t in self.heldout_relation})

    def trainable_compositions(self) -> set[tuple]:
        """Every composition a training item may state and show (the world's compositions minus the held out)."""
        counts = [n for n in self.counts if n >= 2]
        every = ({("color", c, k) for k in self.classes for c in self.colors}
                 | {("count", k, n) for k in self.classes for n in counts}
                 | {("relation", a, r, b) for a in self.classes for r in self.relations for b in self.classes if a != b})
        return every - self.heldout_compositions()

    # ---- vocabulary ----------------------------------------------------------------------------
    def vocabulary(self) -> list[str]:
        """Every word a caption (training or GenEval prompt) may use, sorted."""
        return vocabulary(self.classes, self.colors, self.max_objects, ALL_RELATIONS)

    # ---- validation ----------------------------------------------------------------------------
    def validate_spec(self, spec: dict) -> list[dict]:
        """Check a spec against the world; returns its include clauses. Raises UserError naming the field."""
        if not isinstance(spec, dict) or not isinstance(spec.get("include"), list) or not spec["include"]:
            raise UserError(f"spec must be a dict with a non-empty 'include' list, got {spec!r}")
        inc = spec["include"]
        for i, cl in enumerate(inc):
            cls = cl.get("class")
            if cls not in self._class_set:
                raise UserError(f"spec include[{i}].class: unknown class {cls!r}; this world has {', '.join(self.classes)}")
            col = cl.get("color")
            if col is not None and col not in self._color_set:
                raise UserError(f"spec include[{i}].color: unknown colour {col!r}; this world has {', '.join(self.colors)}")
            n = cl.get("count", 1)
            if not isinstance(n, (int, np.integer)) or n < 1 or n > self.max_objects:
                raise UserError(f"spec include[{i}].count: {n!r} is not in 1..{self.max_objects}")
            pos = cl.get("position")
            if pos:
                if (not isinstance(pos, (list, tuple)) or len(pos) != 2 or pos[0] not in self.relations
                        or not isinstance(pos[1], (int, np.integer)) or not 0 <= pos[1] < len(inc) or pos[1] == i):
                    raise UserError(f"spec include[{i}].position: expected [relation, other clause index] with "
                                    f"relation in {self.relations}, got {pos!r}")
                if len(inc) != 2 or any(int(c.get("count", 1)) != 1 for c in inc):
                    raise UserError("spec position: relations are drawn between exactly two clauses of count 1")
        total = sum(int(c.get("count", 1)) for c in inc)
        if total > self.capacity:
            where = f"a {self.grid_cells}x{self.grid_cells} grid layout" if self.layout == "grid" else "a scene"
            raise UserError(f"spec has {total} objects; at most {self.capacity} fit in {where}")
        return inc

    # ---- rendering -----------------------------------------------------------------------------
    def _layout(self, spec: dict, res: int, u: np.ndarray) -> list[tuple[str, str, int, int, int, int]]:
        """Objects as (class, colour, x0, y0, size, rotation level); no two stamps overlap.

        All randomness comes from ``u`` (uniforms in [0, 1), drawn once per image: one generator call
        instead of dozens is most of what makes rendering fast).
        """
        inc = self.validate_spec(spec)
        k = iter(u)
        nxt = k.__next__
        uni = lambda lo, hi: lo + (hi - lo) * nxt()  # noqa: E731
        pick = lambda n: min(int(nxt() * n), n - 1)  # noqa: E731
        # world.pose=fixed: every size draw at the middle of its range, every rotation upright (the
        # uniforms are still consumed, so the rest of the layout keeps its stream)
        size_u = (lambda lo, hi: (nxt(), (lo + hi) / 2)[1]) if self.fixed_pose else uni  # noqa: E731
        rot = (lambda: (nxt(), N_ROTATIONS // 2)[1]) if self.fixed_pose else (lambda: pick(N_ROTATIONS))  # noqa: E731
        colors = []
        for cl in inc:
            col = cl.get("color")
            if col is None:
                opts = self._trainable_colors[cl["class"]]
                col = opts[pick(len(opts))]
            colors.append(col)
        step = max(1, res // 32)
        q = lambda s: max(3, int(s) // step * step)  # noqa: E731 - quantised sizes keep the mask cache small
        pos_clause = next((i for i, c in enumerate(inc) if c.get("position")), None)
        place = lambda items, cells, g: self._in_cells(items, cells, res, g, q, size_u, pick, rot)  # noqa: E731
        if pos_clause is not None and self.layout == "grid":
            rel, j = inc[pos_clause]["position"]
            return place([(c["class"], colors[i]) for i, c in enumerate(inc)],
                         self._relation_cells(rel, pos_clause, int(j), pick), self.grid_cells)
        if pos_clause is not None:
            rel, j = inc[pos_clause]["position"]
            a, b = pos_clause, int(j)
            # A is `rel` of B: put "first" on the low side of the axis, "second" on the high side.
            low, high = (a, b) if rel in ("left of", "above") else (b, a)
            sizes = {low: q(res * size_u(0.28, 0.42)), high: q(res * size_u(0.28, 0.42))}
            gap = max(1.0, 0.04 * res)
            half = res / 2.0
            c_low = uni(sizes[low] / 2, half - gap / 2 - sizes[low] / 2)
            c_high = uni(half + gap / 2 + sizes[high] / 2, res - sizes[high] / 2)
            smax = max(sizes.values())
            p_low = uni(smax / 2, res - smax / 2)
            p_high = min(max(p_low + uni(-0.12, 0.12) * res, smax / 2), res - smax / 2)
            horizontal = rel in ("left of", "right of")
            objs: list[tuple[str, str, int, int, int, int]] = []
            for idx, along, perp in ((low, c_low, p_low), (high, c_high, p_high)):
                s = sizes[idx]
                cx, cy = (along, perp) if horizontal else (perp, along)
                x0 = min(max(round(cx - s / 2), 0), res - s)
                y0 = min(max(round(cy - s / 2), 0), res - s)
                objs.append((inc[idx]["class"], colors[idx], x0, y0, s, rot()))
            return objs
        items = [(cl["class"], colors[i]) for i, cl in enumerate(inc) for _ in range(int(cl.get("count", 1)))]
        n = len(items)
        if n == 1 and self.layout != "grid":
            s = q(res * size_u(0.35, 0.6))
            x0, y0 = pick(res - s + 1), pick(res - s + 1)
            return [(items[0][0], items[0][1], x0, y0, s, rot())]
        # a g x g grid of cells (the world's own in the grid layout; just large enough otherwise), n distinct
        g = self.grid_cells if self.layout == "grid" else max(2, math.ceil(math.sqrt(n)))
        cells = list(range(g * g))
        for i in range(n):  # partial Fisher-Yates: n distinct cells
            j = i + pick(g * g - i)
            cells[i], cells[j] = cells[j], cells[i]
        return place(items, [divmod(c, g) for c in cells[:n]], g)

    def _relation_cells(self, rel: str, a: int, b: int, pick: Any) -> list[tuple[int, int]]:
        """Grid layout: (row, col) of clauses 0 and 1 with clause ``a`` ``rel`` of clause ``b``, in one row or column."""
        g = self.grid_cells
        low, high = (a, b) if rel in ("left of", "above") else (b, a)
        i1, i2 = pick(g), pick(g - 1)  # two distinct indices along the relation's axis
        i2 += i2 >= i1
        lo, hi = min(i1, i2), max(i1, i2)
        other = pick(g)
        horizontal = rel in ("left of", "right of")
        cell = {low: (other, lo) if horizontal else (lo, other), high: (other, hi) if horizontal else (hi, other)}
        return [cell[0], cell[1]]

    def _in_cells(self, items: list[tuple[str, str]], cells: list[tuple[int, int]], res: int, g: int, q: Any,
                  size_u: Any, pick: Any, rot: Any) -> list[tuple[str, str, int, int, int, int]]:
        """One object per (row, col) cell of a g x g grid over the canvas, at a random size and offset inside it
        (centred in the grid layout with fixed poses)."""
        edges = _edges(res, g)
        centre = self.fixed_pose and self.layout == "grid"
        objs = []
        for (cls, col), (r, c) in zip(items, cells):
            w_c, h_c = edges[c + 1] - edges[c], edges[r + 1] - edges[r]
            s = min(q(min(w_c, h_c) * size_u(0.6, 0.92)), w_c, h_c)
            dx, dy = pick(w_c - s + 1), pick(h_c - s + 1)
            if centre:
                dx, dy = (w_c - s) // 2, (h_c - s) // 2
            objs.append((cls, col, edges[c] + dx, edges[r] + dy, s, rot()))
        return objs

    def _check_resolution(self, resolution: int) -> int:
        if not isinstance(resolution, (int, np.integer)) or not 16 <= resolution <= 1024:
            raise UserError(f"resolution must be an integer in 16..1024 (toy world: 32–256 typical), got {resolution!r}")
        return int(resolution)

    def _place(self, spec: dict, res: int, seed: int) -> tuple[tuple[int, int, int], list[tuple]]:
        """Background and objects (class, colour, x0, y0, size, rot, box) of one image.

        Placements that would *show* a globally held-out composition the spec does not state (e.g. two
        objects whose boxes put A left of B by GenEval's rule when (A, left of, B) is held out) are rejected
        and redrawn from a derived stream, so no training image shows a held-out composition; the first draw
        is kept whenever it is fine, so such worlds' other renders do not change. A spec no placement can draw
        without showing one (four objects of two classes fill a 2x2 grid: every relation between them shows;
        only the detector's own training scenes are like that, never a caption generator's) keeps its first draw.
        """
        stated = None
        first = None
        for attempt in range(MAX_REDRAWS):
            gen = np.random.default_rng(int(seed) if attempt == 0 else [int(seed), attempt])
            u = gen.random(_N_UNIFORMS).tolist()
            bg = self.backgrounds[min(int(u[-1] * len(self.backgrounds)), len(self.backgrounds) - 1)]
            objs = []
            for cls, col, x0, y0, s, rot in self._layout(spec, res, u):
                bx0, by0, bx1, by1 = silhouette(cls, s, rot)[1]
                objs.append((cls, col, x0, y0, s, rot, [x0 + bx0, y0 + by0, x0 + bx1, y0 + by1]))
            if not self._any_heldout:
                return bg, objs
            first = first or (bg, objs)
            if stated is None:
                stated = self.stated_compositions(spec)
            shown = self.shown_compositions([{"class": o[0], "color": o[1], "box": o[6]} for o in objs])
            if not any(self.is_heldout_composition(c) for c in shown - stated):
                return bg, objs
        return first

    def _draw(self, canvas: np.ndarray, spec: dict, res: int, seed: int) -> list[dict]:
        bg, objs = self._place(spec, res, seed)
        canvas[...] = bg
        out = []
        for cls, col, x0, y0, s, rot, box in objs:
            alpha = silhouette(cls, s, rot)[0]
            region = canvas[y0 : y0 + s, x0 : x0 + s]
            region += alpha * (self._colors_np[col] - region)
            out.append({"class": cls, "color": col, "box": box})
        return out

    def objects(self, spec: dict, resolution: int, seed: int) -> list[dict]:
        """The objects ``render_with_objects`` would draw (class, colour, box), without drawing them."""
        return [{"class": o[0], "color": o[1], "box": o[6]}
                for o in self._place(spec, self._check_resolution(resolution), seed)[1]]

    def render(self, specs: Sequence[dict], resolution: int, seeds: Iterable[int]) -> np.ndarray:
        """Render specs to ``uint8 [N, H, W, 3]``; image i depends only on (specs[i], resolution, seeds[i])."""
        res = self._check_resolution(resolution)
        seeds = list(seeds)
        if len(seeds) != len(specs):
            raise UserError(f"render: got {len(specs)} specs but {len(seeds)} seeds")
        canvas = np.empty((len(specs), res, res, 3), dtype=np.float32)
        for i, (spec, seed) in enumerate(zip(specs, seeds)):
            self._draw(canvas[i], spec, res, seed)
        np.add(canvas, 0.5, out=canvas)
        return canvas.astype(np.uint8)

    def render_with_objects(self, spec: dict, resolution: int, seed: int) -> tuple[np.ndarray, list[dict]]:
        """One image and its objects: ``[{"class", "color", "box": [x0, y0, x1, y1]}]`` (pixels, end exclusive)."""
        res = self._check_resolution(resolution)
        canvas = np.empty((res, res, 3), dtype=np.float32)
        objs = self._draw(canvas, spec, res, seed)
        return (canvas + 0.5).astype(np.uint8), objs
