"""A tracked run: the buffered :class:`Tracker` and :func:`tracked_run`, which never leaves a run RUNNING."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any, Iterator

from lightgen.redact import redact
from lightgen.tracking.names import (TAG_COMMIT, TAG_DIRTY, TAG_FAILURE, TAG_HOST, TAG_KIND, TAG_PID, TAG_POINT,
                                     TAG_PRESET, TAG_SEED, TAG_SLURM_JOB, TAG_WORLD)
from lightgen.utils import slurm_job_id
from lightgen.tracking.store import _param_str, config_params, ensure_store, get_or_create_experiment, git_info, pip_freeze


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

    def log_dataset_input(self, name: str, *, digest: str, source: dict[str, Any], num_rows: int,
                          context: str = "train") -> None:
        """The run's dataset as an MLflow dataset input (a convenience: a failure here is never fatal)."""
        import json

        try:
            from mlflow.entities import Dataset, DatasetInput, InputTag

            dataset = Dataset(name=name, digest=digest, source_type="local", source=json.dumps(source),
                              profile=json.dumps({"num_rows": num_rows}))
            self.client.log_inputs(self.run_id, datasets=[DatasetInput(dataset, [InputTag("mlflow.data.context", context)])])
        except Exception:  # noqa: BLE001 - the dataset input is a convenience, never fatal
            pass

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

    An exception marks the run FAILED (with the reason in tag ``lightgen.failure``); Ctrl-C, SIGTERM or a
    ``SystemExit`` (submitit's pre-emption handler requeues the Slurm job, then exits) marks it KILLED, and so
    does a context abandoned without an outcome (``GeneratorExit``: an interrupt that landed inside the
    ``with`` machinery itself). Nothing is ever left RUNNING by a Python-level exit.
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
    if slurm_job_id():  # a run inside a Slurm job (``lightgen sweep --launcher slurm``) names its job
        all_tags[TAG_SLURM_JOB] = slurm_job_id()
    all_tags.update(tags or {})
    if run_id is None:
        run = client.create_run(exp_id, run_name=run_name, tags={k: str(v) for k, v in all_tags.items()})
        run_id = run.info.run_id
    else:
        client.update_run(run_id, status="RUNNING")
        client.set_tag(run_id, TAG_PID, str(os.getpid()))
        client.set_tag(run_id, TAG_HOST, socket.gethostname())
        if slurm_job_id():
            client.set_tag(run_id, TAG_SLURM_JOB, slurm_job_id())
    tracker = Tracker(run_id, uri)
    try:
        if log_config:
            tracker.log_params(config_params(cfg))
            tracker.log_text(redact(cfg.to_yaml()), "config.yaml")
            tracker.log_text(pip_freeze(), "pip-freeze.txt")
    except BaseException as e:  # Ctrl-C while the run is being set up: not left RUNNING either
        _safe_end(tracker, "KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED", f"{type(e).__name__}: {e}")
        raise

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
    except GeneratorExit:
        # closed without an outcome: the with-block never finished entering or leaving, as when Ctrl-C or
        # SIGTERM lands inside contextlib's own frames; the run was stopped, it did not fail
        _safe_end(tracker, "KILLED", "interrupted (the run's context was abandoned)")
        raise
    except SystemExit as e:  # stopped from outside (pre-emption, requeue): the run did not fail
        _safe_end(tracker, "KILLED", f"exited (SystemExit {e.code}): pre-empted or requeued")
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


ENV_SYSTEM_METRICS = "LIGHTGEN_SYSTEM_METRICS"


def _system_metrics_monitor(cfg: Any, run_id: str, uri: str) -> Any:
    """MLflow's CPU/GPU/memory sampler for the run when ``tracking.log_system_metrics`` (needs psutil; GPU
    metrics through nvidia-ml-py where a GPU is present). ``$LIGHTGEN_SYSTEM_METRICS=0`` turns it off."""
    if not getattr(getattr(cfg, "tracking", None), "log_system_metrics", False):
        return None
    if os.environ.get(ENV_SYSTEM_METRICS, "").strip().lower() in ("0", "false", "no", "off"):
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
