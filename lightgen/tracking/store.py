"""The MLflow store: reaching it, creating it once, refusing a damaged one; experiments; run provenance."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

from lightgen.errors import UserError
from lightgen.redact import redact
from lightgen.tracking.names import resolve_tracking_uri


def quiet_mlflow() -> None:
    """MLflow's INFO lines (database creation/migration) are noise on a terminal."""
    import logging

    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


def configure(tracking_uri: str | None = None) -> str:
    import mlflow

    uri = resolve_tracking_uri(tracking_uri)
    mlflow.set_tracking_uri(uri)
    return uri


def check_reachable(tracking_uri: str, timeout: float = 5.0) -> None:
    """Fail fast with a clear message when an http(s) tracking server cannot be reached."""
    if not tracking_uri.startswith(("http://", "https://")):
        if tracking_uri.startswith("sqlite:///"):
            db = Path(tracking_uri[len("sqlite:///"):])
            parent = db.parent if str(db.parent) else Path(".")
            if not parent.exists():
                raise ConnectionError(f"tracking URI {tracking_uri}: folder {parent} does not exist")
            if not os.access(parent, os.W_OK):
                raise PermissionError(f"tracking URI {tracking_uri}: folder {parent} is not writable")
        return
    import urllib.error
    import urllib.request

    url = tracking_uri.rstrip("/") + "/health"
    try:
        urllib.request.urlopen(url, timeout=timeout)  # noqa: S310 - URL given by the user
    except (urllib.error.URLError, OSError) as e:
        raise ConnectionError(f"MLflow tracking server {redact(tracking_uri)} is unreachable: {redact(str(e))}") from None


class DamagedStoreError(UserError, ConnectionError):
    """A tracking or Optuna store that exists but cannot be used as it is; the message names the file
    and the fix. Commands report it as a user error (exit code 2), like an unreachable store."""


def sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` tracking URI (``None`` for other stores or in-memory)."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    path = tracking_uri[len("sqlite:///"):].split("?", 1)[0]
    return None if path in ("", ":memory:") else Path(path)


def check_sqlite_store(db: Path) -> None:
    """Refuse a damaged MLflow SQLite store with a message naming the file: zero bytes (truncated),
    not a database, ``PRAGMA integrity_check`` failing, or a schema migration left half done."""
    import sqlite3

    if not db.exists():
        return
    fix = (f"restore {db} from a backup, or move it away to start a new store "
           f"(checkpoints under tracking.root are kept and resumed)")
    if db.stat().st_size == 0:
        raise DamagedStoreError(f"MLflow store {db} is empty (0 bytes): it was truncated and every run in it "
                                f"is gone; {fix}")
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=60)
        try:
            problems = [r[0] for r in con.execute("PRAGMA integrity_check").fetchall()]
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            con.close()
    except sqlite3.DatabaseError as e:
        raise DamagedStoreError(f"MLflow store {db} is damaged ({e}); {fix}") from None
    if problems != ["ok"]:
        raise DamagedStoreError(f"MLflow store {db} fails SQLite's integrity check "
                                f"({'; '.join(problems[:3])}); {fix}")
    leftovers = sorted(t for t in tables if t.startswith("_alembic_tmp_"))
    if leftovers:
        drops = "; ".join(f"DROP TABLE {t}" for t in leftovers)
        raise DamagedStoreError(f"MLflow store {db}: an interrupted schema migration left {', '.join(leftovers)}; "
                                f"run sqlite3 {db} \"{drops};\" and try again (the migration is then redone)")
    if tables and "experiments" not in tables:
        raise DamagedStoreError(f"{db} is a SQLite database but not an MLflow store (no 'experiments' table)")


_STORES_READY: set[str] = set()


def ensure_store(tracking_uri: str | None = None) -> str:
    """Check the tracking store and create its schema once, under a file lock, before any client uses it.

    For SQLite: two processes creating a fresh ``mlflow.db`` at once would both run MLflow's migrations and
    leave the store unusable; here the first creates it while the others wait on ``<db>.lock``, then
    find it at the current schema. A damaged store raises ``DamagedStoreError``. Once per process and URI.
    """
    uri = resolve_tracking_uri(tracking_uri)
    db = sqlite_path(uri)
    if db is None or uri in _STORES_READY:
        return uri
    import fcntl

    from mlflow.tracking import MlflowClient

    quiet_mlflow()
    if db.parent.is_dir():
        with open(db.with_name(db.name + ".lock"), "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                check_sqlite_store(db)
                try:
                    MlflowClient(uri).search_experiments(max_results=1)  # creates / migrates the schema
                except Exception as e:  # noqa: BLE001 - name the file, whatever the driver raised
                    raise DamagedStoreError(f"MLflow store {db} cannot be opened ({type(e).__name__}: "
                                            f"{str(e).splitlines()[0][:300] if str(e) else ''}); restore it "
                                            f"from a backup, or move it away to start a new store") from None
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
    _STORES_READY.add(uri)
    return uri


TAG_EXPERIMENT_KIND = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
"""MLflow 3's UI opens an experiment by its kind: ``custom_model_development`` (model training) shows the
training runs table first, instead of the GenAI view (traces, "Evaluation runs") it infers otherwise."""


def get_or_create_experiment(name: str, tracking_uri: str | None = None) -> str:
    """Create the experiment once (before spawning workers: concurrent creation races)."""
    from mlflow.tracking import MlflowClient

    quiet_mlflow()
    client = MlflowClient(ensure_store(tracking_uri))
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if TAG_EXPERIMENT_KIND not in exp.tags:  # made by an older studio: the UI would open its GenAI view
            client.set_experiment_tag(exp.experiment_id, TAG_EXPERIMENT_KIND, EXPERIMENT_KIND)
        return exp.experiment_id
    try:
        return client.create_experiment(name, tags={TAG_EXPERIMENT_KIND: EXPERIMENT_KIND})
    except Exception:  # created by a racing process meanwhile
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def git_info(cwd: str | Path | None = None) -> tuple[str, bool]:
    cwd = Path(cwd or Path(__file__).resolve().parent.parent)
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                cwd=cwd, capture_output=True, text=True, timeout=5,
            ).stdout.strip()
        )
        return commit or "unknown", dirty
    except (OSError, subprocess.SubprocessError):
        return "unknown", False


def pip_freeze() -> str:
    from importlib import metadata

    lines = sorted(f"{d.metadata['Name']}=={d.version}" for d in metadata.distributions() if d.metadata["Name"])
    return "\n".join(lines) + "\n"


def config_params(cfg: Any) -> dict[str, str]:
    """Every knob of an ExperimentConfig as MLflow params (dotted names), plus nominal/actual size."""
    flat = cfg.flat()
    flat["data.scale_label"] = cfg.data.scale_label
    flat["data.actual_size"] = cfg.data.actual_size
    return {k: _param_str(v) for k, v in flat.items()}


def _param_str(v: Any) -> str:
    s = str(v) if not isinstance(v, (list, tuple)) else "[" + ", ".join(str(x) for x in v) + "]"
    return redact(s)[:6000]  # never a password in a param
