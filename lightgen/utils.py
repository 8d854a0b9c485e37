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
    cap_h = 24 if captions else 0
    canvas = Image.new("RGB", (ncol * tw, nrow * (th + cap_h)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for i in range(n):
        r, c = divmod(i, ncol)
        tile = Image.fromarray(imgs[i]).resize((tw, th), Image.NEAREST)
        canvas.paste(tile, (c * tw, r * (th + cap_h)))
        if captions:
            text = captions[i]
            line1, line2 = text[: tw // 6], text[tw // 6 : 2 * (tw // 6)]
            draw.text((c * tw + 1, r * (th + cap_h) + th), line1, fill=(0, 0, 0))
            draw.text((c * tw + 1, r * (th + cap_h) + th + 11), line2, fill=(0, 0, 0))
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    return buf.getvalue()


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


def iter_jsonl(path: str | Path) -> Iterator[tuple[str, Any]]:
    """``(where, object)`` for each non-blank line of a JSONL file, ``where`` being ``path:line``.

    A line that is not JSON raises ``UserError("<path>:<line>: not valid JSON (…)")``, so every reader
    of the studio's JSONL files (GenEval metadata and results, DPO pairs) reports bad input the same way.
    """
    import json

    from lightgen.cliutil import UserError

    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{where}: not valid JSON ({e.msg})") from None


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
