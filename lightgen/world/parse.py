"""Read a caption back into the compositions it states, in any wording of the toy grammar.

Written from the word lists (classes, plurals, synonyms, colours, number words, relation phrases), not from
the generator's templates, so it checks the generator: the leak test parses every training caption and
asserts it states no globally held-out composition, whatever the paraphrase, inverse form or synonym.

Recognised: noun phrases ``[a|an|<number>] [<colour>] <noun> [that is|are <colour> | colored <colour>]``
(nouns: class names, plurals and the grammar's synonyms), and relations between two consecutive noun
phrases: ``X [to the] left of Y``, ``X [to the] right of Y``, ``X above|over Y``, ``X below|under|beneath Y``,
``Y with X to its left side|right side``, ``Y with X under it``. Relations come back with their inverses.
"""

from __future__ import annotations

import re
from typing import Iterable

from lightgen.world.grammar import NUMBER_WORDS, plural
from lightgen.world.toy import close_inverses

SYNONYMS = {"disc": "circle", "rhombus": "diamond", "donut": "ring", "plus": "cross", "oval": "ellipse",
            "moon": "crescent"}
# connector between phrase X and phrase Y (X first) -> X's relation to Y
_BETWEEN = (("to the left of", "left of"), ("left of", "left of"), ("to the right of", "right of"),
            ("right of", "right of"), ("above", "above"), ("over", "above"), ("below", "below"),
            ("under", "below"), ("beneath", "below"))
# trailing phrase after "Y with X …" -> X's relation to Y
_AFTER = (("to its left side", "left of"), ("to its right side", "right of"), ("under it", "below"))


class CaptionParser:
    """Parse captions of one world's vocabulary (``classes``, ``colors``)."""

    def __init__(self, classes: Iterable[str], colors: Iterable[str], relations: Iterable[str] | None = None):
        self.nouns: dict[str, tuple[str, bool]] = {}
        for cls in classes:
            self.nouns[cls] = (cls, False)
            self.nouns[plural(cls)] = (cls, True)
        for syn, cls in SYNONYMS.items():
            if cls in classes:
                self.nouns[syn] = (cls, False)
                self.nouns[plural(syn)] = (cls, True)
        self.colors = set(colors)
        self.numbers = {w: n for n, w in enumerate(NUMBER_WORDS)}
        self.relations = list(relations) if relations is not None else None

    def phrases(self, caption: str) -> list[dict]:
        """Noun phrases in order: ``{"class", "count", "color", "start", "end"}`` (word indices, end exclusive)."""
        words = re.findall(r"[a-z]+", caption.lower())
        out = []
        for i, w in enumerate(words):
            if w not in self.nouns:
                continue
            cls, is_plural = self.nouns[w]
            start, color, count = i, None, 2 if is_plural else 1
            if start > 0 and words[start - 1] in self.colors:
                start -= 1
                color = words[start]
            if start > 0 and (words[start - 1] in self.numbers or words[start - 1] in ("a", "an")):
                start -= 1
                count = self.numbers.get(words[start], 1)
            end = i + 1
            if words[end:end + 2] in (["that", "is"], ["that", "are"]) and end + 2 < len(words) \
                    and words[end + 2] in self.colors:
                color, end = words[end + 2], end + 3
            elif end + 1 < len(words) and words[end] == "colored" and words[end + 1] in self.colors:
                color, end = words[end + 1], end + 2
            out.append({"class": cls, "count": count, "color": color, "start": start, "end": end, "words": words})
        return out

    def compositions(self, caption: str) -> set[tuple]:
        """Compositions the caption states: ("color", col, cls), ("count", cls, n ≥ 2), ("relation", a, rel, b)
        with every relation's inverse."""
        nps = self.phrases(caption)
        out: set[tuple] = set()
        for p in nps:
            if p["color"] is not None:
                out.add(("color", p["color"], p["class"]))
            if p["count"] >= 2:
                out.add(("count", p["class"], p["count"]))
        for x, y in zip(nps, nps[1:]):
            words = x["words"]
            between = " ".join(words[x["end"]:y["start"]])
            after = " ".join(words[y["end"]:])
            rel = next((r for phrase, r in _BETWEEN if between == phrase), None)
            if rel is not None:
                out.add(("relation", x["class"], rel, y["class"]))
            elif between == "with":
                rel = next((r for phrase, r in _AFTER if after.startswith(phrase)), None)
                if rel is not None:
                    out.add(("relation", y["class"], rel, x["class"]))
        rels = self.relations if self.relations is not None else ("left of", "right of", "above", "below")
        return close_inverses(out, rels)


def parser_for(world: object) -> CaptionParser:
    """A parser of a :class:`~lightgen.world.toy.ToyWorld`'s captions."""
    return CaptionParser(world.classes, world.colors, world.relations)  # type: ignore[attr-defined]
