"""MLflow conventions of the studio, in one small module.

Names here are a contract that the analysis scripts and tests rely on:

* one MLflow experiment per sweep, a parent run per sweep, a child run per trial (``parent_run_id``);
* params: every config knob under its dotted name (``data.scale``, ``dpo.beta``, ``seed`` …) plus
  ``data.scale_label`` (the nominal label) and ``data.actual_size``;
* tags: ``lightgen.sweep``, ``lightgen.point_id``, ``lightgen.world``, ``lightgen.preset``,
  ``lightgen.git_commit``, ``lightgen.git_dirty``, ``lightgen.kind`` (sweep|trial|train|dpo|eval),
  ``optuna.study``, ``optuna.trial``, ``lightgen.pid`` / ``lightgen.host`` (the process that last ran it),
  ``lightgen.corrupt_checkpoints`` (skipped on resume), ``lightgen.resumed_from_run`` (history copied from);
* metrics: ``geneval/<task>``, ``geneval/overall``, ``geneval/overall_ci_low|high``,
  ``geneval_seen/…``, ``geneval_unseen/…``, ``train/loss`` …, ``compute/…``, ``data/…``;
* artifacts: ``config.yaml``, ``pip-freeze.txt``, ``samples/…png``, ``geneval/results.jsonl``.

Metrics are buffered and sent with ``log_batch`` (one call per flush, asynchronous), never one
``log_metric`` call per value: a single call costs ~14 ms on SQLite.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

from lightgen.errors import UserError
from lightgen.geneval.tasks import TASKS
from lightgen.redact import redact

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
GENEVAL_TASKS = TASKS  # the task registry (lightgen.geneval.tasks): metrics geneval/<task>

TAG_SWEEP = "lightgen.sweep"
TAG_POINT = "lightgen.point_id"
TAG_WORLD = "lightgen.world"
TAG_PRESET = "lightgen.preset"
TAG_COMMIT = "lightgen.git_commit"
TAG_DIRTY = "lightgen.git_dirty"
TAG_KIND = "lightgen.kind"
TAG_STUDY = "optuna.study"
TAG_TRIAL = "optuna.trial"
TAG_SEED = "lightgen.seed"
TAG_BASE_RUN = "lightgen.base_run_id"
TAG_PID = "lightgen.pid"  # process and host that last ran the run (a RUNNING run whose process is gone is stale)
TAG_HOST = "lightgen.host"
TAG_FAILURE = "lightgen.failure"  # why a run failed or was killed
TAG_CHECKPOINT = "lightgen.checkpoint"  # the run's checkpoint folder (its newest checkpoint after training)
TAG_BASE_CHECKPOINT = "lightgen.base_checkpoint"  # a DPO/SFT run's base checkpoint
TAG_INIT_CHECKPOINT = "lightgen.init_checkpoint"  # weights a pre-training run started from (train.init_from)
TAG_CORRUPT = "lightgen.corrupt_checkpoints"  # corrupt checkpoints skipped when this run resumed
TAG_RESUMED_FROM = "lightgen.resumed_from_run"  # a retried trial: the run its history was copied from
TAG_JOB = "lightgen.job"  # a sweep job's key "<point_id>-s<seed>" (also the Optuna trial's user attr)
TAG_POINT_LABEL = "lightgen.point_label"
TAG_ARM = "lightgen.arm"
TAG_ATTEMPT = "lightgen.attempt"
TAG_DATASET = "lightgen.dataset"  # the dataset's manifest hash
TAG_DATASET_PATH = "lightgen.dataset_path"
TAG_SOURCE_RUN = "lightgen.source_run_id"  # an imported run: its id in the store it came from


def resolve_tracking_uri(explicit: str | None = None) -> str:
    """--tracking-uri / config value, else $MLFLOW_TRACKING_URI, else MLflow's SQLite default."""
    return explicit or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


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


def get_or_create_experiment(name: str, tracking_uri: str | None = None) -> str:
    """Create the experiment once (before spawning workers: concurrent creation races)."""
    from mlflow.tracking import MlflowClient

    quiet_mlflow()
    client = MlflowClient(ensure_store(tracking_uri))
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return client.create_experiment(name)
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


class Tracker:
    """A thin handle on one active MLflow run with buffered, batched metric logging."""

    def __init__(self, run_id: str, tracking_uri: str, flush_every: int = 200, flush_seconds: float = 10.0):
        from mlflow.tracking import MlflowClient

        self.run_id = run_id
        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri)
        self._buffer: list[Any] = []
        self._flush_every = flush_every
        self._flush_seconds = flush_seconds
        self._last_flush = time.monotonic()
        self.log_calls = 0

    # -- metrics ------------------------------------------------------------------------------
    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        for k, v in metrics.items():
            if v is None:
                continue
            self._buffer.append(Metric(k, float(v), ts, int(step)))
        if len(self._buffer) >= self._flush_every or time.monotonic() - self._last_flush > self._flush_seconds:
            self.flush()

    def flush(self, synchronous: bool = False) -> None:
        if not self._buffer:
            return
        batch, self._buffer = self._buffer, []
        for i in range(0, len(batch), 1000):  # MLflow's per-request metric limit
            self.client.log_batch(self.run_id, metrics=batch[i : i + 1000], synchronous=synchronous)
            self.log_calls += 1
        self._last_flush = time.monotonic()
        if synchronous:  # earlier asynchronous batches too: everything logged so far is in the store
            with contextlib.suppress(Exception):
                import mlflow

                mlflow.flush_async_logging()

    # -- params / tags ------------------------------------------------------------------------
    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, _param_str(v)) for k, v in params.items()]
        existing = self.client.get_run(self.run_id).data.params
        items = [p for p in items if p.key not in existing]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i : i + 100])
            self.log_calls += 1

    def set_tags(self, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, redact(str(v))) for k, v in tags.items()]
        if items:
            self.client.log_batch(self.run_id, tags=items)
            self.log_calls += 1

    # -- artifacts ----------------------------------------------------------------------------
    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def log_dict(self, obj: Any, artifact_file: str) -> None:
        self.client.log_dict(self.run_id, obj, artifact_file)

    def log_image(self, image: Any, artifact_file: str) -> None:
        """Log a uint8 HxWx3 numpy array or PIL image as PNG."""
        self.client.log_image(self.run_id, image, artifact_file=artifact_file)

    def log_figure(self, fig: Any, artifact_file: str) -> None:
        self.client.log_figure(self.run_id, fig, artifact_file)

    def log_table(self, df: Any, artifact_file: str) -> None:
        self.client.log_table(self.run_id, data=df, artifact_file=artifact_file)

    def artifact_dir(self) -> str:
        return self.client.get_run(self.run_id).info.artifact_uri

    def end(self, status: str = "FINISHED") -> None:
        self.flush(synchronous=True)
        self.client.set_terminated(self.run_id, status=status)


@contextlib.contextmanager
def tracked_run(
    cfg: Any,
    *,
    experiment: str,
    run_name: str | None = None,
    parent_run_id: str | None = None,
    tags: dict[str, Any] | None = None,
    kind: str = "train",
    log_config: bool = True,
    run_id: str | None = None,
) -> Iterator[Tracker]:
    """Start (or resume) a run with the studio's params/tags; end it FINISHED, FAILED or KILLED.

    An exception marks the run FAILED (with the reason in tag ``lightgen.failure``); Ctrl-C or SIGTERM
    marks it KILLED. Nothing is ever left RUNNING by a Python-level exit.
    """
    from mlflow.tracking import MlflowClient

    uri = ensure_store(getattr(getattr(cfg, "tracking", None), "tracking_uri", None))
    client = MlflowClient(uri)
    exp_id = get_or_create_experiment(experiment, uri)
    commit, dirty = git_info()
    all_tags = {
        TAG_KIND: kind,
        TAG_WORLD: cfg.world.kind,
        TAG_PRESET: cfg.preset,
        TAG_COMMIT: commit,
        TAG_DIRTY: str(dirty).lower(),
        TAG_POINT: cfg.point_id(),
        TAG_SEED: cfg.seed,
        TAG_PID: os.getpid(),
        TAG_HOST: socket.gethostname(),
    }
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    all_tags.update(tags or {})
    if run_id is None:
        run = client.create_run(exp_id, run_name=run_name, tags={k: str(v) for k, v in all_tags.items()})
        run_id = run.info.run_id
    else:
        client.update_run(run_id, status="RUNNING")
        client.set_tag(run_id, TAG_PID, str(os.getpid()))
        client.set_tag(run_id, TAG_HOST, socket.gethostname())
    tracker = Tracker(run_id, uri)
    if log_config:
        tracker.log_params(config_params(cfg))
        tracker.log_text(redact(cfg.to_yaml()), "config.yaml")
        tracker.log_text(pip_freeze(), "pip-freeze.txt")

    previous = signal.getsignal(signal.SIGTERM)

    def _on_term(signum: int, frame: Any) -> None:  # turn SIGTERM into KeyboardInterrupt → KILLED
        raise KeyboardInterrupt(f"signal {signum}")

    monitor = _system_metrics_monitor(cfg, run_id, uri)
    in_main = _is_main_thread()
    if in_main:
        signal.signal(signal.SIGTERM, _on_term)
    try:
        yield tracker
    except KeyboardInterrupt:
        _safe_end(tracker, "KILLED", "interrupted")
        raise
    except BaseException as e:  # noqa: BLE001 - re-raised below
        _safe_end(tracker, "FAILED", f"{type(e).__name__}: {e}")
        raise
    else:
        tracker.end("FINISHED")
    finally:
        if monitor is not None:
            monitor.finish()
        if in_main:
            signal.signal(signal.SIGTERM, previous)


def _system_metrics_monitor(cfg: Any, run_id: str, uri: str) -> Any:
    """MLflow's CPU/GPU/memory sampler for the run when ``tracking.log_system_metrics`` (needs psutil)."""
    if not getattr(getattr(cfg, "tracking", None), "log_system_metrics", False):
        return None
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
    except ImportError as e:  # psutil (and pynvml for GPUs) are optional
        print(f"warning: tracking.log_system_metrics needs psutil ({e}); not logging system metrics", file=sys.stderr)
        return None
    monitor = SystemMetricsMonitor(run_id, sampling_interval=10, tracking_uri=uri)
    monitor.start()
    return monitor


def _safe_end(tracker: Tracker, status: str, reason: str) -> None:
    try:
        tracker.set_tags({TAG_FAILURE: redact(reason)[:5000]})
        tracker.end(status)
    except Exception as e:  # noqa: BLE001 - never mask the original error
        print(f"warning: could not mark run {tracker.run_id} {status}: {e}", file=sys.stderr)


def _is_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def mark_stale_runs(experiment_id: str, tracking_uri: str, run_ids: list[str] | None = None, status: str = "KILLED") -> int:
    """Mark RUNNING runs (all, or the given ones) as KILLED: used when a worker died under SIGKILL."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    n = 0
    if run_ids is None:
        runs = client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=5000)
        run_ids = [r.info.run_id for r in runs]
    for rid in run_ids:
        try:
            if client.get_run(rid).info.status == "RUNNING":
                client.set_tag(rid, TAG_FAILURE, "worker died (killed)")
                client.set_terminated(rid, status=status)
                n += 1
        except Exception:  # noqa: BLE001
            continue
    return n


def stale_run_to_resume(tracking_uri: str, experiment: str, checkpoint: str | Path) -> str | None:
    """The run of an earlier ``lightgen train`` on ``checkpoint`` that was killed (still RUNNING, its process
    gone): its id, to resume it so that one run holds the whole history. Older stale runs of the same
    folder are marked KILLED. A run whose process is alive on this host is left alone (None)."""
    from mlflow.tracking import MlflowClient

    from lightgen.utils import pid_alive

    uri = ensure_store(tracking_uri)
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    folder = str(checkpoint).replace("'", "\\'")
    runs = client.search_runs([exp.experiment_id], filter_string=(
        f"tags.`{TAG_CHECKPOINT}` = '{folder}' and attributes.status = 'RUNNING'"),
        order_by=["attributes.start_time DESC"], max_results=100)
    stale = []
    for r in runs:
        pid, host = r.data.tags.get(TAG_PID), r.data.tags.get(TAG_HOST)
        if host == socket.gethostname() and pid and pid.isdigit() and pid_alive(int(pid)):
            continue  # another process is training it right now
        if host not in (None, socket.gethostname()):
            continue  # another node's run: its liveness cannot be checked from here
        stale.append(r.info.run_id)
    if not stale:
        return None
    mark_stale_runs(exp.experiment_id, uri, run_ids=stale[1:], status="KILLED")
    return stale[0]


def copy_metric_history(client: Any, src_run: str, dst_run: str, *, max_step: int,
                        skip_prefixes: tuple[str, ...] = ("data/", "system/")) -> int:
    """Copy ``src_run``'s metric history up to ``max_step`` into ``dst_run`` (a resumed trial's new run then
    shows the whole curve, not only the steps after the resume). Returns the number of points copied."""
    from mlflow.entities import Metric

    src = client.get_run(src_run)
    points = []
    for key in src.data.metrics:
        if key.startswith(skip_prefixes):
            continue
        points += [Metric(key, m.value, m.timestamp, m.step) for m in client.get_metric_history(src_run, key)
                   if m.step <= max_step]
    for i in range(0, len(points), 1000):
        client.log_batch(dst_run, metrics=points[i : i + 1000])
    return len(points)
