"""The toy caption grammar's words, and the vocabulary they make: one owner for every word a caption uses.

``world.captions`` builds captions from these words and ``world.toy.ToyWorld.vocabulary`` lists them;
both import this module, which imports nothing of the world (no import loop).
"""

from __future__ import annotations

from typing import Iterable

# Every non-object word any caption template, paraphrase or synonym may use.
TEMPLATE_WORDS: tuple[str, ...] = (
    "a", "an", "photo", "of", "picture", "image", "there", "is", "are", "and", "with", "drawing",
    "on", "plain", "background", "simple", "showing", "render", "this", "shows", "flat", "illustration",
    "in", "the", "scene", "we", "see", "to", "its", "that", "colored", "as", "well", "together",
    "over", "under", "beneath", "disc", "discs", "rhombus", "rhombuses", "donut", "donuts", "plus",
    "pluses", "oval", "ovals", "moon", "moons", "left", "right", "above", "below", "side", "it",
)
NUMBER_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five")


def plural(cls: str) -> str:
    """The plural of a toy class name ("circle" → "circles", "cross" → "crosses")."""
    return cls + "es" if cls.endswith(("s", "x", "sh", "ch")) else cls + "s"


def vocabulary(classes: Iterable[str], colors: Iterable[str], max_objects: int, relations: Iterable[str]) -> list[str]:
    """Every word a caption (training or GenEval prompt) of a world with these names may use, sorted."""
    classes = list(classes)
    words = set(TEMPLATE_WORDS)
    words.update(classes)
    words.update(plural(c) for c in classes)
    words.update(colors)
    words.update(NUMBER_WORDS[: max_objects + 1])
    for rel in relations:
        words.update(rel.split())
    return sorted(words)
