"""Worlds: the toy shapes world (renderer teacher + captions) and the real world's adapters.

:func:`make_world` is the one place a run's world is built from its config.
"""

from __future__ import annotations

from typing import Any

from lightgen.world.captions import CaptionGenerator, Knobs, geneval_prompt
from lightgen.world.toy import ToyWorld, relation_holds

__all__ = ["CaptionGenerator", "Knobs", "ToyWorld", "geneval_prompt", "make_world", "relation_holds"]


def make_world(cfg: Any) -> ToyWorld | None:
    """The world of an experiment config: a :class:`ToyWorld` of ``cfg.world`` when ``world.kind`` is
    ``toy``; ``None`` in the real world (its teacher, prompts and detector come from pretrained models)."""
    if cfg.world.kind != "toy":
        return None
    return ToyWorld(cfg.world)
