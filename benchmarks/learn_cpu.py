"""Learning-speed benchmark of the ``cpu`` preset: one run = dataset → training → toy GenEval, on one core.

Each call trains ``lightgen train cpu`` with the given overrides in its own tracking root (so the
toy VAE tokenizer and the detector are the shared, cached ones from ``--shared``), with GenEval at the
fractions of training given by ``--evals``, and appends one JSON line per run to ``--out``
(``benchmarks/learn_cpu_results.jsonl`` by default): the lever's name, its overrides and seed, and for
each evaluation the step, the training minutes so far (``compute/device_hours``, which excludes the
evaluations), the GenEval Overall with its bootstrap CI and the six tasks; plus the run's total wall
time (dataset + training + every evaluation) and its steps/s.

    PYTHONPATH=. python benchmarks/learn_cpu.py --name v_patch4 --seed 0 --evals 0.5,1.0 \\
        --set train.iterations=2400

``benchmarks/plot_learn_cpu.py`` draws GenEval against training minutes from the same file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def metrics(db: Path) -> dict[str, dict[int, float]]:
    con = sqlite3.connect(db)
    out: dict[str, dict[int, float]] = {}
    for key, step, value in con.execute("select key, step, value from metrics"):
        out.setdefault(key, {})[int(step)] = float(value)
    con.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--name", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--evals", default="1.0", help="comma-separated fractions of training for GenEval")
    ap.add_argument("--set", dest="sets", action="append", default=[])
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--work", default="/tmp/learn_cpu", help="scratch folder (runs, checkpoints)")
    ap.add_argument("--shared", default=None, help="tracking root whose tokenizers/ and geneval/ caches are reused")
    ap.add_argument("--out", default=str(HERE / "learn_cpu_results.jsonl"))
    args = ap.parse_args()

    work = Path(args.work) / f"{args.name}_seed{args.seed}"
    shutil.rmtree(work, ignore_errors=True)
    root = work / "root"
    root.mkdir(parents=True)
    if args.shared:  # reuse the one-off caches (toy VAE, detector) like the runs of one study do
        for sub in ("tokenizers", "geneval"):
            src = Path(args.shared) / sub
            src.mkdir(parents=True, exist_ok=True)
            (root / sub).symlink_to(src.resolve(), target_is_directory=True)
    db = work / "mlflow.db"
    fr = ",".join(str(float(f)) for f in args.evals.split(","))
    cmd = [sys.executable, "-m", "lightgen.cli", "train", args.preset,
           "--set", f"seed={args.seed}", "--set", f"tracking.root={root}",
           "--set", f"tracking.tracking_uri=sqlite:///{db}", "--set", f"eval.checkpoints=[{fr}]",
           "--checkpoint-dir", str(work / "ckpt")]
    for s in args.sets:
        cmd += ["--set", s]
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.time() - t0
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit(f"run failed (exit {proc.returncode})")
    from lightgen.geneval.prompts import TASKS

    m = metrics(db)
    steps = sorted(m.get("geneval/overall", {}))
    evals = []
    for s in steps:
        evals.append({
            "step": s,
            "train_min": m["compute/device_hours"].get(s, float("nan")) * 60,
            "overall": m["geneval/overall"][s],
            "ci": [m["geneval/overall_ci_low"][s], m["geneval/overall_ci_high"][s]],
            "tasks": {t: m[f"geneval/{t}"][s] for t in TASKS if f"geneval/{t}" in m},
            "eval_s": m.get("compute/geneval_sample_s", {}).get(s, float("nan"))
            + m.get("compute/geneval_score_s", {}).get(s, float("nan")),
        })
    last = max(m["train/loss"])
    row = {
        "name": args.name, "seed": args.seed, "preset": args.preset, "sets": args.sets,
        "wall_s": round(wall, 1), "steps": last,
        "steps_per_s": last / (m["compute/device_hours"][last] * 3600),
        "final_loss": m["train/loss"][last], "evals": evals,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, train.num_threads from the preset",
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    with open(args.out, "a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row, indent=1))


if __name__ == "__main__":
    from lightgen.cliutil import run_guarded  # the studio's error boundary: bad input → one line, exit 2

    raise SystemExit(run_guarded(main))
