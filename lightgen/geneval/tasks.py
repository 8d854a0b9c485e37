"""The GenEval task registry: the one list of GenEval's six tasks, in GenEval's order.

Everything that names tasks reads it: the official and toy prompts (``geneval.prompts``), the caption
grammar's task mix (``world.captions``), the metric names (``tracking``: ``geneval/<task>``), the sweep
objectives, the summaries, the analysis loader (which notes and drops per-image rows of an unknown task)
and the tables. Adding a task means adding it here, then teaching the prompt builders, the caption
generator and the rules (``geneval.rules``) what it asks for.
"""

from __future__ import annotations

TASKS: tuple[str, ...] = ("single_object", "two_object", "counting", "colors", "position", "color_attr")


def ordered(tasks: "set[str] | list[str] | tuple[str, ...]") -> list[str]:
    """``tasks`` in registry order, unknown ones after them (in the order given), so tables and summaries agree."""
    present = list(dict.fromkeys(tasks))
    return [t for t in TASKS if t in present] + [t for t in present if t not in TASKS]
