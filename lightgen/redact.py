"""Credentials never leave the process: URLs with passwords are redacted before they are printed, logged
as MLflow params, written into ``config.yaml`` artifacts, checkpoints or dataset manifests, or put on a
worker's command line (workers get the storage URL through the environment, ``LIGHTGEN_STORAGE_URL``)."""

from __future__ import annotations

import re
from typing import Any

MASK = "***"
# scheme://user:password@host  → scheme://user:***@host
_USERINFO = re.compile(r"(?P<pre>\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^:/@\s'\"]*:)(?P<pw>[^@\s'\"]+)(?P<at>@)")
# ...?password=secret&...  (also token / secret / key parameters)
_QUERY = re.compile(r"(?P<pre>[?&;](?:password|passwd|pwd|token|secret|api_key|access_key)=)(?P<pw>[^&\s'\"]+)",
                    re.IGNORECASE)


def redact(text: str) -> str:
    """``text`` with the password of every URL in it (``user:password@`` or ``?password=``) masked."""
    if not isinstance(text, str) or ("://" not in text and "=" not in text):
        return text
    text = _USERINFO.sub(lambda m: m["pre"] + MASK + m["at"], text)
    return _QUERY.sub(lambda m: m["pre"] + MASK, text)


def redact_obj(obj: Any) -> Any:
    """A JSON-like structure with every string redacted (dicts and lists copied)."""
    if isinstance(obj, str):
        return redact(obj)
    if isinstance(obj, dict):
        return {k: redact_obj(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(redact_obj(v) for v in obj)
    return obj


def config_yaml(cfg: Any) -> str:
    """``cfg.to_yaml()`` with credentials masked: what artifacts and checkpoints store."""
    return redact(cfg.to_yaml())
