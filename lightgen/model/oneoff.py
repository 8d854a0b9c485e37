"""Frozen components trained once per world and cached (the toy VAE tokenizer, the pre-trained toy T5).

``build_once(folder, ready, what, cfg, build)`` returns ``folder`` when its ``ready`` file exists; otherwise,
under a file lock beside it (so two workers starting together train it once), it calls
``build(tmp, log)`` on the CPU with ``train.num_threads`` threads, into a temporary folder that is then
renamed into place: a crash never leaves a half-written component that a later run would take for whole.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Callable

import torch

from lightgen.utils import file_lock


def cache_folder(cfg: Any, prefix: str, spec: dict[str, Any]) -> Path:
    """``<tracking.root>/tokenizers/<prefix>-<hash of spec>``: one folder per distinct recipe."""
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
    from lightgen.layout import tokenizer_dir

    return tokenizer_dir(cfg, f"{prefix}-{key}")


def build_once(folder: Path, ready: str, what: str, cfg: Any, build: Callable[[Path, Callable[[str], None]], str],
               log: Callable[[str], None] | None = None) -> Path:
    """``build(tmp, log) -> summary line`` fills ``tmp``; see the module docstring."""
    if (folder / ready).exists():
        return folder
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    folder.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(folder.parent / f".{folder.name}.lock"):
        if (folder / ready).exists():  # another worker built it while we waited
            return folder
        log(f"training the {what} once for this world ({folder.name}; cached for every later run)")
        tmp = folder.parent / f".{folder.name}.tmp{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        threads = torch.get_num_threads()
        if cfg.train.num_threads:
            torch.set_num_threads(cfg.train.num_threads)
        try:
            with torch.device("cpu"):  # even when the caller builds the student on the meta device
                summary = build(tmp, log)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        finally:
            torch.set_num_threads(threads)
        if folder.exists():  # an incomplete folder (no ready file) from an older layout
            shutil.rmtree(folder)
        os.replace(tmp, folder)
        log(f"{what} ready: {summary}")
    return folder
