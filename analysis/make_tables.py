#!/usr/bin/env python
"""Rebuild the paper's GenEval tables (1–3) and per-sweep ablation tables from logged runs.

    python analysis/make_tables.py                              # all sweeps in ./mlflow.db, Markdown
    python analysis/make_tables.py --sweep data-scale --format latex --out tables.tex
    python analysis/make_tables.py --from export/data-scale --format csv --out tables.csv
    python analysis/make_tables.py --from study/runs            # + the pre-registered hypotheses table

The hypotheses table (H1–H4 and the controls of ``study/hypotheses.yaml``, or ``--hypotheses FILE``) is
built when the runs hold any of its sweeps, or always with ``--only hypotheses``. The per-seed table
(``--only seeds``) lists every run's own score: the values the means and the seed-level tests are made of.

Paper rows come from ``lightgen/analysis/paper_tables.csv`` (numbers of arXiv:2503.08619) and are kept
in their own block; studio rows are grouped by world and prompt set and toy-world rows are labelled
as not comparable. Unless ``--no-log``, the tables are also logged to each sweep's parent run
(``analysis/tables.md`` and ``analysis/<table>.json``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository's lightgen first

from lightgen.analysis.script import run_main, source_arguments, warn  # noqa: E402



MAX_BOOT = 100_000  # bootstrap draws per CI (lightgen.config.MAX_BOOTSTRAP)
MAX_RESAMPLES = 1_000_000  # sign-flip resamples per paired test


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="make_tables.py", description=__doc__.split("\n\n")[0])
    source_arguments(p)
    p.add_argument("--format", choices=["markdown", "latex", "csv"], default="markdown")
    p.add_argument("--out", default=None, help="write to this file instead of stdout")
    p.add_argument("--only", choices=["all", "paper", "ablation", "seeds", "hypotheses"], default="all",
                   help="which tables to build (default: all)")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for the CIs")
    p.add_argument("--n-resamples", type=int, default=9999, help="sign-flip resamples of the paired tests")
    p.add_argument("--hypotheses", default=None, metavar="FILE",
                   help="pre-registered hypotheses (default: study/hypotheses.yaml)")
    p.add_argument("--per-task-split", action="store_true", help="add per-task In-train / Novel / Held-out columns")
    args = p.parse_args(argv)
    if not 10 <= args.n_boot <= MAX_BOOT:
        p.error(f"--n-boot must be in 10..{MAX_BOOT}, got {args.n_boot}")
    if not 99 <= args.n_resamples <= MAX_RESAMPLES:
        p.error(f"--n-resamples must be in 99..{MAX_RESAMPLES}, got {args.n_resamples}")
    return args


def build_tables(args: argparse.Namespace):
    from lightgen.analysis import tables as T
    from lightgen.analysis.loader import load_sweep

    data = load_sweep(args.tracking_uri, sweep=args.sweep, experiment=args.experiment, bundle=args.bundle)
    points = T.point_summary(data, n_boot=args.n_boot, seed=args.seed)
    tables = []
    if args.only in ("all", "paper"):
        # the selection's notes (what was left out) once, under the last paper table
        tables += [T.build_paper_table(n, points, notes=data.notes if n == 3 else None, partial=data.partial)
                   for n in (1, 2, 3)]
    if args.only in ("all", "ablation"):
        for sweep in sorted(points["sweep"].dropna().unique()):
            tables.append(T.build_ablation_table(data, sweep, points, n_resamples=args.n_resamples,
                                                 seed=args.seed, per_task_split=args.per_task_split))
    if args.only in ("all", "seeds"):
        tables.append(T.build_seed_table(data, points))
    if args.only in ("all", "hypotheses"):
        from lightgen.analysis import hypotheses as H

        hf = H.load_hypotheses(args.hypotheses)
        sweeps = set(data.runs["sweep"].dropna())
        if args.only == "hypotheses" or sweeps & {h.sweep for h in hf.hypotheses}:
            results = H.evaluate_all(hf, data.runs, data.prompt_results(), n_boot=args.n_boot, seed=args.seed)
            tables.append(H.hypotheses_table(results, hf.alpha))
    return data, tables


def render_all(tables, fmt: str) -> str:
    from lightgen.analysis import tables as T

    if fmt == "csv":
        import io

        import pandas as pd

        frames = []
        for t in tables:
            f = t.frame()
            f.insert(0, "partial", t.partial)
            f.insert(0, "table", t.title)
            frames.append(f)
        buf = io.StringIO()
        pd.concat(frames, ignore_index=True).to_csv(buf, index=False)
        return buf.getvalue()
    sep = "\n" if fmt == "markdown" else "\n\n"
    return sep.join(T.render(t, fmt) for t in tables)


def log_to_parents(data, tables, markdown: str) -> list[str]:
    """Log the Markdown and each table (as an MLflow table) to the parent run of every sweep shown."""
    from lightgen.analysis import tables as T

    logged = []
    client = data.source.client
    for sweep in sorted(data.runs["sweep"].dropna().unique()):
        rid = data.parent_run_id(sweep)
        if rid is None:
            continue
        client.log_text(rid, markdown, "analysis/tables.md")
        for t in tables:
            if t.name.startswith("ablation_") and t.name != f"ablation_{sweep}":
                continue
            frame = t.frame().map(lambda v: T._cell(v, ""))  # strings: JSON-safe, as displayed
            client.log_table(rid, data=frame, artifact_file=f"analysis/{t.name}.json")
        logged.append(rid)
    return logged


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from lightgen.errors import UserError
    from lightgen.utils import write_atomic

    data, tables = build_tables(args)
    text = render_all(tables, args.format)
    if args.out:
        out = Path(args.out)
        if out.is_dir():
            raise UserError(f"--out {out} is a directory; give a file name")
        write_atomic(out, text)
        warn(f"wrote {len(tables)} table(s) to {out}")
    else:
        sys.stdout.write(text)
    if data.partial:
        warn("note: the selection is partial (" + "; ".join(data.notes) + ")")
    if not args.no_log and data.source.client is not None:
        md = text if args.format == "markdown" else render_all(tables, "markdown")
        logged = log_to_parents(data, tables, md)
        if logged:
            warn(f"logged the tables to parent run(s) {', '.join(logged)}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
