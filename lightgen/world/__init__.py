"""Worlds: the toy shapes world (renderer teacher + captions) and the real world's adapters."""

from lightgen.world.toy import ToyWorld, relation_holds

__all__ = ["ToyWorld", "relation_holds"]
