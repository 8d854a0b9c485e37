"""GenEval Overall against one-core training minutes, one line per lever (and seed), from learn_cpu results.

    PYTHONPATH=. python benchmarks/plot_learn_cpu.py [--results benchmarks/learn_cpu_results.jsonl]
        [--out benchmarks/learn_cpu_curves.png] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", default=str(HERE / "learn_cpu_results.jsonl"))
    ap.add_argument("--out", default=str(HERE / "learn_cpu_curves.png"))
    ap.add_argument("--only", nargs="*", default=None)
    args = ap.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in Path(args.results).read_text().splitlines() if line.strip()]
    if args.only:
        rows = [r for r in rows if r["name"] in args.only]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colours: dict[str, str] = {}
    for r in rows:
        xs = [0.0] + [e["train_min"] for e in r["evals"]]
        ys = [0.0] + [e["overall"] for e in r["evals"]]
        lo = [0.0] + [e["ci"][0] for e in r["evals"]]
        hi = [0.0] + [e["ci"][1] for e in r["evals"]]
        first = r["name"] not in colours
        line, = ax.plot(xs, ys, marker="o", color=colours.get(r["name"]), label=r["name"] if first else None)
        colours.setdefault(r["name"], line.get_color())
        ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.12)
    ax.axhline(0.5, color="grey", ls="--", lw=0.8)
    ax.axvline(10, color="grey", ls=":", lw=0.8)
    ax.set_xlabel("training minutes on one core (excluding evaluations)")
    ax.set_ylabel("toy GenEval Overall (95% bootstrap CI)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, loc="upper left")
    ax.set_title("Learning on a CPU: GenEval vs one-core minutes, per lever")
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    from lightgen.cliutil import run_guarded  # the studio's error boundary: bad input → one line, exit 2

    raise SystemExit(run_guarded(main))
