"""A seeded stream of (spec, caption) pairs whose diversity is set by three independent knobs.

Why three knobs: the study asks whether caption *diversity* matters more than data *volume*, and
"diversity" has several faces.  Each can be swept on its own while the volume stays fixed:

* **coverage** (a) ∈ (0, 1] — the fraction of the *trainable* compositions (every (colour, class) pair,
  (class, count≥2) pair and (classA, relation, classB) triple that is not globally held out) that
  captions may use.  The allowed subsets are nested (a larger coverage adds compositions, never swaps
  them) and balanced: (colour, class) and (class, count) pairs are taken diagonal by diagonal of a
  seeded Latin-square order, so every class gets the same number of colours/counts and every colour
  serves the same number of classes; relation triples come in rounds that give every class one triple
  as subject.  The first round (one composition of each kind per class) is always allowed, so every
  class keeps a colour, a count and a relation even at the lowest coverage.  Compositions are then
  sampled uniformly from the allowed lists.
* **variety** (b) ∈ [0, 1] — linguistic variety: how many sentence templates are in use
  (1 + variety·(T−1)), how many paraphrases of each construction (word order of two objects, inverse
  relations "B right of A" for "A left of B", "a circle that is red" for "a red circle"), and the
  probability of synonyms ("disc" for circle, "over" for above).  At 0 a composition always reads the
  same way.
* **density** (c) ∈ [0, 1] — how many attributes a caption states beyond what its task needs: each
  clause without a colour gets one stated with probability ``density``, and a two-object scene gets a
  stated spatial relation with probability ``density / 2``.  Stated attributes go into the spec, so the
  teacher renders them: the caption always describes the image.  Density applies to the non-GenEval
  phrasings only: the :data:`GENEVAL_SHARE` of captions in GenEval's literal phrasing state exactly what
  their task asks, so colourless captions ("a photo of two stars") exist at every density.

One normalised ``data.caption_diversity`` D ∈ [0, 1] sets all three: ``coverage = 0.05 + 0.95·D``,
``variety = D``, ``density = D``; ``data.coverage/variety/density`` override each one.

Invariants at every knob setting:
* The task mix is GenEval's six tasks in equal shares (single_object, two_object, counting, colors,
  position, color_attr); classes and colours are drawn uniformly from the allowed lists.
* Global held-out compositions (``world.is_heldout``) are never stated, in any wording (held-out relation
  triples come with their inverses, so "B right of A" never states a held-out "A left of B"), and never
  shown: the teacher rejects placements whose geometry would show one (``ToyWorld._place``).
* A fixed share :data:`GENEVAL_SHARE` of captions uses GenEval's literal prompt ("a photo of …"), so
  linguistic variety never changes how often the test phrasing is seen.
* Item ``i`` depends only on (world, knobs, stream seed, i): a dataset of N items is the first N items of
  the stream, so smaller datasets are prefixes of larger ones at every diversity level.
* Every word of every caption is in ``world.vocabulary()``.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

from lightgen.geneval.tasks import TASKS
from lightgen.world.grammar import NUMBER_WORDS, TEMPLATE_WORDS  # noqa: F401 - the grammar's words
from lightgen.world.toy import INVERSE, PLURALS, ToyWorld  # noqa: F401 - INVERSE re-exported

GENEVAL_SHARE = 0.2  # share of captions in GenEval's literal "a photo of …" phrasing, at every level

# Sentence templates, most canonical first ("{s}" is the scene phrase, "{be}" is/are agreement).
TEMPLATES: tuple[str, ...] = (
    "{s}", "an image of {s}", "a picture of {s}", "there {be} {s}", "a drawing of {s}",
    "{s} on a plain background", "a simple picture showing {s}", "a render of {s}", "this image shows {s}",
    "a flat illustration of {s}", "{s} in the scene", "we see {s}",
)
CLASS_SYNONYMS = {"circle": ("disc", "discs"), "diamond": ("rhombus", "rhombuses"), "ring": ("donut", "donuts"),
                  "cross": ("plus", "pluses"), "ellipse": ("oval", "ovals"), "crescent": ("moon", "moons")}
# Paraphrases of "A rel B": (phrase, swap) — swap=True means the phrase names B first ("B right of A").
REL_PARAPHRASES = {
    "left of": ("{a} left of {b}", "{b} right of {a}", "{a} to the left of {b}", "{b} with {a} to its left side"),
    "right of": ("{a} right of {b}", "{b} left of {a}", "{a} to the right of {b}", "{b} with {a} to its right side"),
    "above": ("{a} above {b}", "{b} below {a}", "{a} over {b}", "{b} under {a}", "{b} beneath {a}"),
    "below": ("{a} below {b}", "{b} above {a}", "{a} under {b}", "{a} beneath {b}", "{b} with {a} under it"),
}
AND_PARAPHRASES = ("{b} and {a}", "{a} and {b}", "{a} with {b}", "{a} as well as {b}", "{a} together with {b}")


@dataclass(frozen=True)
class Knobs:
    """The three diversity knobs, resolved."""

    coverage: float
    variety: float
    density: float

    @classmethod
    def from_config(cls, data_cfg: Any) -> "Knobs":
        """Map ``caption_diversity`` onto the knobs; explicit ``coverage/variety/density`` override."""
        d = float(data_cfg.caption_diversity)
        cov = data_cfg.coverage if data_cfg.coverage is not None else 0.05 + 0.95 * d
        var = data_cfg.variety if data_cfg.variety is not None else d
        den = data_cfg.density if data_cfg.density is not None else d
        return cls(float(cov), float(var), float(den))


def _balanced_order(rows: list[Any], cols: list[Any], rng: random.Random) -> list[tuple[Any, Any]]:
    """All (row, col) pairs ordered diagonal by diagonal of a seeded Latin square.

    Any prefix made of whole diagonals gives every row the same number of columns and every column
    (nearly) the same number of rows; within a diagonal the order is random.
    """
    rp, cp = rng.permutation(len(rows)), rng.permutation(len(cols))
    out = []
    for d in range(len(cols)):
        diag = [(rows[rp[i]], cols[cp[(i + d) % len(cols)]]) for i in range(len(rows))]
        out.extend(diag[k] for k in rng.permutation(len(diag)))
    return out


def _balanced_triples(classes: list[str], relations: list[str], rng: random.Random) -> list[tuple]:
    """All (a, relation, b) triples in rounds: each round gives every class one triple as subject."""
    pools = {a: [(a, r, b) for r in relations for b in classes if b != a] for a in classes}
    for a in classes:
        pools[a] = [pools[a][i] for i in rng.permutation(len(pools[a]))]
    out = []
    for k in range(max((len(p) for p in pools.values()), default=0)):
        for i in rng.permutation(len(classes)):
            if k < len(pools[classes[i]]):
                out.append(pools[classes[i]][k])
    return out


def _item_seed(seed: int, i: int, salt: int) -> int:
    """A 63-bit seed for stream item ``i``: a hash, so neighbouring items get unrelated streams."""
    h = hashlib.blake2b(f"{seed}:{int(i)}:{salt}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") >> 1


class CaptionGenerator:
    """Seeded (spec, caption) stream for a toy world at given diversity knobs.

    ``item(i)`` returns ``(spec, caption)`` for stream position ``i``; ``stream(n)`` yields the first n.
    The allowed compositions depend on (world, coverage) only, never on the data seed, so datasets
    with different seeds at the same coverage share a composition set.
    """

    def __init__(self, world: ToyWorld, knobs: Knobs, seed: int = 0):
        if not 0.0 < knobs.coverage <= 1.0:
            raise ValueError(f"data.coverage must be in (0, 1], got {knobs.coverage}")
        for name in ("variety", "density"):
            if not 0.0 <= getattr(knobs, name) <= 1.0:
                raise ValueError(f"data.{name} must be in [0, 1], got {getattr(knobs, name)}")
        self.world, self.knobs, self.seed = world, knobs, int(seed)
        self.tasks = [t for t in TASKS if t != "position" or world.relations]
        if len(world.classes) < 2:
            self.tasks = [t for t in self.tasks if t in ("single_object", "counting", "colors")]
        if world.max_objects < 2:
            self.tasks = [t for t in self.tasks if t != "counting"]
        self._allowed()
        # tasks whose compositions are all held out in this world cannot be sampled
        empty = {"counting": not self.count_pairs, "colors": not self.color_pairs,
                 "color_attr": not self.color_pairs, "position": not self.relation_triples}
        self.tasks = [t for t in self.tasks if not empty.get(t, False)]
        v = knobs.variety
        self.n_templates = 1 + int(round(v * (len(TEMPLATES) - 1)))
        self.p_synonym = 0.5 * v
        self.n_para = lambda k: 1 + int(round(v * (k - 1)))  # noqa: E731

    # ---- allowed compositions --------------------------------------------------------------
    def _allowed(self) -> None:
        w, cov = self.world, self.knobs.coverage
        rng = np.random.default_rng([w.seed, 7919])  # by world only: nested in coverage

        def prefix(order: list, held: frozenset, floor: int) -> list:
            trainable = [p for p in order if p not in held]
            return trainable[: max(floor, math.ceil(cov * len(trainable)))]

        # Balanced orders: any prefix gives every class (nearly) the same number of compositions, and
        # the first "round" (one per class) is always allowed, so every class keeps a colour and a count.
        n_cls = len(w.classes)
        cc = prefix([(col, cls) for cls, col in _balanced_order(w.classes, w.colors, rng)], w.heldout_color_class, n_cls)
        self.color_pairs = cc
        self.colors_of = {cls: [c for c, k in cc if k == cls] for cls in w.classes}
        counts = [n for n in w.counts if n >= 2]
        self.count_pairs = (prefix(_balanced_order(w.classes, counts, rng), w.heldout_class_count, n_cls)
                            if counts else [])
        self.relation_triples = prefix(_balanced_triples(w.classes, w.relations, rng), w.heldout_relation, n_cls)
        self.rel_of = {}
        for a, r, b in self.relation_triples:
            self.rel_of.setdefault((a, b), []).append(r)
        n_train = (
            len([p for p in ((c, k) for k in w.classes for c in w.colors) if p not in w.heldout_color_class])
            + len([p for p in ((k, n) for k in w.classes for n in counts) if p not in w.heldout_class_count])
            + len([t for t in ((a, r, b) for a in w.classes for r in w.relations for b in w.classes if a != b)
                   if t not in w.heldout_relation])
        )
        self.n_trainable = n_train
        self.n_allowed = len(self.color_pairs) + len(self.count_pairs) + len(self.relation_triples)

    # ---- specs -----------------------------------------------------------------------------
    def _spec(self, rng: random.Random, den: float | None = None) -> dict:
        w = self.world
        den = self.knobs.density if den is None else den
        task = self.tasks[rng.randrange(len(self.tasks))]
        pick = lambda seq: seq[rng.randrange(len(seq))]  # noqa: E731
        if task == "single_object":
            inc = [{"class": pick(w.classes), "count": 1}]
        elif task == "two_object":
            a, b = rng.sample(range(len(w.classes)), 2)
            inc = [{"class": w.classes[a], "count": 1}, {"class": w.classes[b], "count": 1}]
            if w.relations and rng.random() < den / 2 and (w.classes[b], w.classes[a]) in self.rel_of:
                inc[1]["position"] = [pick(self.rel_of[(w.classes[b], w.classes[a])]), 0]
        elif task == "counting":
            cls, n = pick(self.count_pairs)
            inc = [{"class": cls, "count": n}]
        elif task == "colors":
            col, cls = pick(self.color_pairs)
            inc = [{"class": cls, "count": 1, "color": col}]
        elif task == "position":
            a, r, b = pick(self.relation_triples)
            inc = [{"class": b, "count": 1}, {"class": a, "count": 1, "position": [r, 0]}]
        else:  # color_attr
            col_a, cls_a = pick(self.color_pairs)
            others = [p for p in self.color_pairs if p[1] != cls_a]
            if not others:
                others = [(pick(w.trainable_colors(c)), c) for c in w.classes if c != cls_a]
            col_b, cls_b = pick(others)
            inc = [{"class": cls_a, "count": 1, "color": col_a}, {"class": cls_b, "count": 1, "color": col_b}]
        for cl in inc:  # density: state extra colours (rendered as stated)
            if "color" not in cl and rng.random() < den and self.colors_of[cl["class"]]:
                cl["color"] = pick(self.colors_of[cl["class"]])
        spec: dict = {"tag": task, "include": inc}
        if task == "counting":
            n = inc[0]["count"]
            if n < w.max_objects:
                spec["exclude"] = [{"class": inc[0]["class"], "count": n + 1}]
        return spec

    # ---- captions --------------------------------------------------------------------------
    def _noun(self, cls: str, plural: bool, rng: random.Random) -> str:
        if cls in CLASS_SYNONYMS and rng.random() < self.p_synonym:
            return CLASS_SYNONYMS[cls][int(plural)]
        return PLURALS[cls] if plural else cls

    def _np(self, cl: dict, rng: random.Random) -> str:
        """Noun phrase of a clause: "a red circle", "three stars", "a circle that is red"."""
        n, col = int(cl.get("count", 1)), cl.get("color")
        noun = self._noun(cl["class"], n > 1, rng)
        post = col is not None and self.n_para(3) > 1 and rng.randrange(self.n_para(3)) > 0
        head = f"{col} {noun}" if col is not None and not post else noun
        phrase = f"{NUMBER_WORDS[n]} {head}" if n > 1 else ("an " if head[0] in "aeiou" else "a ") + head
        if post:
            phrase += f" that {'is' if n == 1 else 'are'} {col}" if rng.randrange(2) == 0 else f" colored {col}"
        return phrase

    def _scene(self, spec: dict, rng: random.Random) -> str:
        inc = spec["include"]
        if len(inc) == 1:
            return self._np(inc[0], rng)
        a, b = inc[1], inc[0]  # clause 1 relates to clause 0 (GenEval's layout)
        pa, pb = self._np(a, rng), self._np(b, rng)
        if a.get("position"):
            opts = REL_PARAPHRASES[a["position"][0]]
            return opts[rng.randrange(self.n_para(len(opts)))].format(a=pa, b=pb)
        return AND_PARAPHRASES[rng.randrange(self.n_para(len(AND_PARAPHRASES)))].format(a=pa, b=pb)

    def geneval_prompt(self, spec: dict) -> str:
        """GenEval's literal phrasing of a spec ("a photo of a red circle left of a star")."""
        return geneval_prompt(spec)

    def caption(self, spec: dict, rng: random.Random, geneval: bool | None = None) -> str:
        """A caption of ``spec``: GenEval's literal phrasing when ``geneval`` (drawn with probability
        :data:`GENEVAL_SHARE` when None), else a template and paraphrases at the variety knob."""
        if geneval is None:
            geneval = rng.random() < GENEVAL_SHARE
        if geneval:
            return self.geneval_prompt(spec)
        s = self._scene(spec, rng)
        t = TEMPLATES[rng.randrange(self.n_templates)]
        plural = sum(int(c.get("count", 1)) for c in spec["include"]) > 1
        return t.format(s=s, be="are" if plural else "is")

    # ---- stream ----------------------------------------------------------------------------
    def item(self, i: int) -> tuple[dict, str]:
        """The i-th (spec, caption) of the stream; its spec carries the caption as ``prompt``."""
        rng = random.Random(_item_seed(self.seed, i, 0x5EED))
        # The phrasing is drawn first: a GenEval-phrased item states only what its task asks (density adds
        # nothing), so colourless captions in GenEval's phrasing exist at every density (review T6).
        geneval = rng.random() < GENEVAL_SHARE
        for _ in range(100):
            spec = self._spec(rng, 0.0 if geneval else None)
            if not self.world.is_heldout(spec):
                break
        else:  # pragma: no cover - only reachable with a pathological world
            raise RuntimeError("could not draw a non-held-out composition")
        cap = self.caption(spec, rng, geneval)
        spec["prompt"] = cap
        return spec, cap

    def render_seed(self, i: int) -> int:
        """The teacher's seed for stream item i (independent of the caption knobs)."""
        return _item_seed(self.seed, i, 0xA11CE)

    def stream(self, n: int, start: int = 0) -> Iterator[tuple[dict, str]]:
        for i in range(start, start + n):
            yield self.item(i)


def geneval_prompt(spec: dict) -> str:
    """GenEval's literal prompt for a spec, exactly as training captions phrase it at ``GENEVAL_SHARE``:
    "a photo of a red circle", "a photo of two stars", "a photo of a star and a ring",
    "a photo of a red circle left of a star" (clause 1 relative to clause 0, as in GenEval's metadata)."""
    return "a photo of " + _canonical_scene(spec)


def _np_canonical(cl: dict) -> str:
    n, col = int(cl.get("count", 1)), cl.get("color")
    head = (f"{col} " if col else "") + (PLURALS[cl["class"]] if n > 1 else cl["class"])
    return f"{NUMBER_WORDS[n]} {head}" if n > 1 else ("an " if head[0] in "aeiou" else "a ") + head


def _canonical_scene(spec: dict) -> str:
    inc = spec["include"]
    if len(inc) == 1:
        return _np_canonical(inc[0])
    first, second = _np_canonical(inc[0]), _np_canonical(inc[1])
    if inc[1].get("position"):
        return f"{second} {inc[1]['position'][0]} {first}"
    return f"{first} and {second}"


def used_compositions(world: ToyWorld, spec: dict) -> list[tuple]:
    """Atomic compositions stated by a spec (see ``ToyWorld.compositions``)."""
    return world.compositions(spec)
