"""Worlds: the toy shapes world (renderer teacher + captions) and the real world's adapters."""

from lightgen.world.captions import CaptionGenerator, Knobs, geneval_prompt
from lightgen.world.toy import ToyWorld, relation_holds

__all__ = ["CaptionGenerator", "Knobs", "ToyWorld", "geneval_prompt", "relation_holds"]
