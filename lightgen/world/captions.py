"""Captions with controllable diversity (placeholder: the word list; the generator follows)."""

from __future__ import annotations

# Every non-object word any caption template, paraphrase or synonym may use.
TEMPLATE_WORDS: tuple[str, ...] = (
    "a", "an", "photo", "of", "picture", "image", "there", "is", "are", "and", "with", "drawing",
    "on", "plain", "background", "simple", "showing", "render", "this", "shows", "flat", "illustration",
    "in", "the", "scene", "we", "see", "to", "its", "that", "colored", "as", "well", "together",
    "over", "under", "beneath", "disc", "discs", "rhombus", "rhombuses", "donut", "donuts", "plus",
    "pluses", "oval", "ovals", "moon", "moons", "left", "right", "above", "below", "side",
)
