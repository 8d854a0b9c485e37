"""Tracking overhead: what MLflow logging costs per training step, batched vs one call per value.

The studio's Tracker buffers metrics and sends them with one asynchronous ``log_batch`` per flush. This
benchmark runs a fake training loop that logs the trainer's per-step metrics (loss, lr, grad_norm,
images/s every ``--log-every`` steps) to a fresh SQLite store, and reports the logging time per training
step; compare it with a step time to get the overhead fraction (the ``lab`` preset logs every 50 steps).

    python benchmarks/bench_tracking.py [--steps 2000] [--log-every 50] [--step-ms 60]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--log-every", type=int, default=50, help="the lab preset's train.log_every")
    ap.add_argument("--step-ms", type=float, default=None, help="a step time to express the overhead against")
    ap.add_argument("--naive-calls", type=int, default=50, help="single log_metric calls timed for comparison")
    a = ap.parse_args()
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    from mlflow.tracking import MlflowClient

    from lightgen.config import load_config
    from lightgen.tracking import quiet_mlflow, tracked_run

    quiet_mlflow()
    with tempfile.TemporaryDirectory() as d:
        uri = f"sqlite:///{d}/mlflow.db"
        cfg = load_config("lab", [f"tracking.tracking_uri={uri}", f"tracking.root={d}/mlruns"])
        with tracked_run(cfg, experiment="bench", kind="bench") as tr:
            spent = 0.0
            for step in range(1, a.steps + 1):
                if step % a.log_every == 0:
                    t0 = time.perf_counter()
                    tr.log_metrics({"train/loss": 1.0 / step, "train/lr": 1e-4, "train/grad_norm": 0.5,
                                    "train/images_per_s": 1000.0}, step=step)
                    spent += time.perf_counter() - t0
            t0 = time.perf_counter()
            tr.flush(synchronous=True)
            final_flush = time.perf_counter() - t0
            client = MlflowClient(uri)
            t0 = time.perf_counter()
            for i in range(a.naive_calls):
                client.log_metric(tr.run_id, "naive/value", float(i), step=i)
            naive_ms = (time.perf_counter() - t0) / a.naive_calls * 1000
        per_step_ms = (spent + final_flush) / a.steps * 1000
    print(f"machine: {platform.node()} ({platform.processor() or platform.machine()}, {os.cpu_count()} CPUs)")
    print(f"steps {a.steps}, log every {a.log_every}: batched logging {per_step_ms * 1000:.1f} µs per training step "
          f"({spent * 1000:.1f} ms in log calls + {final_flush * 1000:.1f} ms final flush, {tr.log_calls} requests)")
    print(f"one log_metric call (unbatched, synchronous): {naive_ms:.1f} ms")
    if a.step_ms:
        print(f"overhead at {a.step_ms} ms/step: {100 * per_step_ms / a.step_ms:.3f}% of step time")


if __name__ == "__main__":
    from lightgen.cliutil import run_guarded  # the studio's error boundary: bad input → one line, exit 2

    raise SystemExit(run_guarded(main))
