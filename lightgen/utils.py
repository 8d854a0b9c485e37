"""Small shared utilities: atomic writes and image grids."""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator


def image_grid_png(images: Any, captions: list[str] | None = None, ncol: int = 8) -> bytes:
    """A PNG grid of uint8 images (N,H,W,3) with optional captions under each tile."""
    import numpy as np
    from PIL import Image, ImageDraw

    imgs = np.asarray(images)
    n, h, w, _ = imgs.shape
    ncol = min(ncol, n)
    nrow = (n + ncol - 1) // ncol
    scale = max(1, 96 // w)
    th, tw = h * scale, w * scale
    width = max(4, tw // 6)  # characters of the default font per tile
    wrapped = [caption_lines(c, width) for c in captions] if captions else []
    cap_h = 11 * max(len(x) for x in wrapped) + 2 if wrapped else 0
    canvas = Image.new("RGB", (ncol * tw, nrow * (th + cap_h)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for i in range(n):
        r, c = divmod(i, ncol)
        tile = Image.fromarray(imgs[i]).resize((tw, th), Image.NEAREST)
        canvas.paste(tile, (c * tw, r * (th + cap_h)))
        for j, line in enumerate(wrapped[i] if wrapped else []):
            draw.text((c * tw + 1, r * (th + cap_h) + th + 11 * j), line, fill=(0, 0, 0))
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    return buf.getvalue()


def caption_lines(text: str, width: int, max_lines: int = 4) -> list[str]:
    """A caption word-wrapped to ``width`` characters (words are not cut unless longer than a line),
    at most ``max_lines`` lines, the last ending in '...' when some words did not fit."""
    import textwrap

    lines = textwrap.wrap(str(text), width=width, break_long_words=True, break_on_hyphens=False) or [""]
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = textwrap.shorten(lines[-1] + " " + "x" * width, width=width, placeholder="...") \
            if len(lines[-1]) + 3 > width else lines[-1] + "..."
    return lines


def write_atomic(path: str | Path, data: bytes | str) -> Path:
    """Write to a temp name in the same folder, fsync, then rename: never a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = "wb" if isinstance(data, bytes) else "w"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def check_folder_path(path: str | Path, what: str) -> Path:
    """Refuse, before any work, a folder path that can never be created: it is a regular file, or one of
    its parents is. ``what`` names the option or key (``--out``, ``tracking.root`` …) in the UserError."""
    from lightgen.errors import UserError

    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UserError(f"{what} {p}: is a regular file, expected a folder")
    for parent in p.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"{what} {p}: {parent} is a regular file, so nothing can be created under it")
            break
    return p


def _not_utf8(path: str | Path, data: bytes, e: UnicodeDecodeError, line: int | None = None) -> Exception:
    from lightgen.errors import UserError

    line = line or data[: e.start].count(b"\n") + 1
    return UserError(f"{path}:{line}: not UTF-8 text (byte {data[e.start:e.start + 1]!r} at offset {e.start})")


def read_text(path: str | Path) -> str:
    """A text file's contents, decoded as UTF-8; bytes that are not UTF-8 raise
    ``UserError("<path>:<line>: not UTF-8 text …")`` instead of a bare ``UnicodeDecodeError``.

    A folder or a missing file raises the ``OSError`` (with its filename) that the error boundary names.
    """
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _not_utf8(path, data, e) from None


def iter_jsonl(path: str | Path) -> Iterator[tuple[str, Any]]:
    """``(where, object)`` for each non-blank line of a JSONL file, ``where`` being ``path:line``.

    A line that is not JSON (or not UTF-8) raises ``UserError("<path>:<line>: not valid JSON (…)")``, so
    every reader of the studio's JSONL files (GenEval metadata and results, DPO pairs) reports bad input
    the same way; what each object must look like is the reader's to check (:func:`require_object`).
    """
    import json

    from lightgen.errors import UserError

    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise _not_utf8(path, raw, e, line=lineno) from None
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{where}: not valid JSON ({e.msg})") from None
            except RecursionError:
                raise UserError(f"{where}: JSON nested too deeply") from None


def require_object(where: str, obj: Any, fields: dict[str, type | tuple[type, ...]] | None = None) -> dict:
    """``obj`` as a dict whose listed fields (when present) have the listed types, else a UserError
    naming ``where`` (``path:line``) and the field."""
    from lightgen.errors import UserError

    if not isinstance(obj, dict):
        raise UserError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    for key, typ in (fields or {}).items():
        if key in obj and obj[key] is not None and not isinstance(obj[key], typ):
            names = " or ".join(t.__name__ for t in (typ if isinstance(typ, tuple) else (typ,)))
            raise UserError(f"{where}: field '{key}' must be {names}, got {type(obj[key]).__name__}")
    return obj


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` (created) for the duration of the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def sha256_file(path: str | Path) -> str:
    """SHA-256 of a file, read in 4 MiB blocks (dataset shards, checkpoint files)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a lightgen process, where /proc tells: a reused pid is not ours)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"lightgen" in f.read()
    except OSError:
        return True


def slurm_job_id() -> str | None:
    """This process's Slurm job as ``squeue`` names it: ``<array job>_<task>`` in a job array, else the job id;
    None outside Slurm."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array and task:
        return f"{array}_{task}"
    return os.environ.get("SLURM_JOB_ID") or None
