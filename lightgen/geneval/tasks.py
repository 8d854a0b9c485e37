"""The GenEval task registry: the one list of GenEval's six tasks, in GenEval's order.

Everything that names tasks reads it: the official and toy prompts (``geneval.prompts``), the caption
grammar's task mix (``world.captions``), the metric names (``tracking``: ``geneval/<task>``), the sweep
objectives, the summaries, the analysis loader (which notes and drops per-image rows of an unknown task)
and the tables (``LABELS``). Adding a task means adding it (and its label) here, then teaching the prompt
builders, the caption generator and the rules (``geneval.rules``) what it asks for.
"""

from __future__ import annotations

TASKS: tuple[str, ...] = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
# The column label of each task in tables and figures (the paper's headers).
LABELS: dict[str, str] = {"single_object": "Single Obj.", "two_object": "Two Obj.", "colors": "Colors",
                          "counting": "Counting", "position": "Position", "color_attr": "Color Attri."}


def ordered(tasks: "set[str] | list[str] | tuple[str, ...]") -> list[str]:
    """``tasks`` in registry order, unknown ones after them (in the order given), so tables and summaries agree."""
    present = list(dict.fromkeys(tasks))
    return [t for t in TASKS if t in present] + [t for t in present if t not in TASKS]
