"""Pre-training of the MAR student (``train``), checkpoints (``load_checkpoint``); DPO lives in ``dpo*.py``.

Imports are lazy so that ``import lightgen.train.<module>`` stays cheap for the CLI.
"""

from __future__ import annotations

from typing import Any

__all__ = ["train", "TrainResult", "NonFiniteLossError", "load_checkpoint", "save_checkpoint"]


def __getattr__(name: str) -> Any:
    if name in ("train", "TrainResult", "NonFiniteLossError"):
        from lightgen.train import pretrain

        return getattr(pretrain, name)
    if name in ("load_checkpoint", "save_checkpoint"):
        from lightgen.train import checkpoint

        return getattr(checkpoint, name)
    raise AttributeError(name)
