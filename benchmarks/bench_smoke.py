"""Wall time of the whole smoke sweep (`lightgen sweep data-scale --preset smoke`), GenEval included.

Runs in a fresh temporary directory (embedded MLflow store, no cache) so the number includes dataset
builds, training, GenEval and logging of all five points. Target: ≤ 3 minutes on 2 CPU cores.

    python benchmarks/bench_smoke.py [--sweep data-scale] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sweep", default="data-scale")
    ap.add_argument("--keep", default=None, help="run in this folder instead of a temporary one")
    ap.add_argument("extra", nargs="*", help="extra arguments for `lightgen sweep`")
    a = ap.parse_args()
    ctx = tempfile.TemporaryDirectory() if a.keep is None else None
    cwd = Path(a.keep or ctx.name)
    cwd.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "MLFLOW_LOGGING_LEVEL": "WARNING"}
    env.pop("MLFLOW_TRACKING_URI", None)
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "lightgen", "sweep", a.sweep, "--preset", "smoke", *a.extra],
                         cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    print(res.stdout[-3000:])
    if res.returncode != 0:
        print(res.stderr[-3000:], file=sys.stderr)
    print(f"machine: {platform.node()} ({os.cpu_count()} CPUs); sweep {a.sweep} [smoke]: exit {res.returncode}, "
          f"{wall:.1f} s wall")
    if ctx:
        ctx.cleanup()
    sys.exit(res.returncode)


if __name__ == "__main__":
    from lightgen.cliutil import run_guarded  # the studio's error boundary: bad input → one line, exit 2

    raise SystemExit(run_guarded(main))
