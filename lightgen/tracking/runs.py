"""Runs across processes: stale runs (resume, kill), copied histories, a sweep's parent run and its trials."""

from __future__ import annotations

import contextlib
import socket
import time
from pathlib import Path
from typing import Any

from lightgen.errors import UserError
from lightgen.redact import redact
from lightgen.tracking.names import (TAG_CHECKPOINT, TAG_COMMIT, TAG_DIRTY, TAG_FAILURE, TAG_HOST, TAG_KIND, TAG_PID,
                                     TAG_STUDY, resolve_tracking_uri)
from lightgen.tracking.store import ensure_store, get_or_create_experiment, git_info


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


# --------------------------------------------------------------------------------------------------
# A sweep's parent run and its trial runs (the sweep package talks to MLflow only through these)
# --------------------------------------------------------------------------------------------------
def ensure_parent_run(tracking_uri: str, experiment: str, study: str, *, run_name: str, tags: dict[str, Any],
                      params: dict[str, Any], texts: dict[str, str]) -> str:
    """The parent run of ``study`` (tag ``lightgen.kind=sweep``), created once — with ``tags``, ``params``
    (redacted) and ``texts`` (artifact name → text) — and set RUNNING again when a launcher re-runs it."""
    from mlflow.entities import Param
    from mlflow.tracking import MlflowClient

    client = MlflowClient(ensure_store(tracking_uri))
    exp_id = get_or_create_experiment(experiment, tracking_uri)
    runs = client.search_runs([exp_id], filter_string=f"tags.`{TAG_STUDY}` = '{study}' and tags.`{TAG_KIND}` = 'sweep'",
                              max_results=1)
    if runs:
        run_id = runs[0].info.run_id
        client.update_run(run_id, status="RUNNING")
        return run_id
    commit, dirty = git_info()
    run = client.create_run(exp_id, run_name=run_name, tags={TAG_KIND: "sweep", TAG_STUDY: study, **tags,
                                                             TAG_COMMIT: commit, TAG_DIRTY: str(dirty).lower()})
    run_id = run.info.run_id
    items = [Param(k, redact(str(v))[:6000]) for k, v in params.items()]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i : i + 100])
    for name, text in texts.items():
        client.log_text(run_id, text, name)
    return run_id


def close_parent_run(tracking_uri: str, run_id: str, metrics: dict[str, float], status: str | None) -> None:
    """Log a launcher's final ``sweep/…`` metrics on the parent run; end it with ``status`` unless None
    (another launcher of the sweep still runs). Never raises: the sweep's own result stands."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    with contextlib.suppress(Exception):
        client = MlflowClient(tracking_uri)
        now = int(time.time() * 1000)
        client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()])
        if status is not None:
            client.set_terminated(run_id, status=status)


def finished_trial_runs(tracking_uri: str, experiment: str, study: str) -> list[tuple[str, dict[str, str], dict[str, float]]]:
    """(run id, tags, metrics) of the FINISHED trial runs of ``study`` (none when the experiment is new)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    runs = client.search_runs([exp.experiment_id], filter_string=(
        f"tags.`{TAG_STUDY}` = '{study}' and tags.`{TAG_KIND}` = 'trial' and attributes.status = 'FINISHED'"),
        max_results=50000)
    return [(r.info.run_id, dict(r.data.tags), dict(r.data.metrics)) for r in runs]


def run_record(tracking_uri: str | None, run_id: str, *, what: str = "run") -> tuple[dict[str, str], dict[str, str], str]:
    """(tags, params, artifact URI) of an MLflow run; an unknown run id is a ``UserError`` naming ``what``."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    uri = resolve_tracking_uri(tracking_uri)
    try:
        run = MlflowClient(uri).get_run(run_id)
    except MlflowException as e:
        raise UserError(f"{what} {run_id}: no such MLflow run in {uri} ({getattr(e, 'message', e)})") from None
    return dict(run.data.tags), dict(run.data.params), run.info.artifact_uri or ""
