#!/usr/bin/env python
"""Draw the paper's Fig. 6 curves, the diversity plots and the DPO β plot from logged runs.

    python analysis/make_curves.py                          # every sweep in ./mlflow.db
    python analysis/make_curves.py --sweep data-scale --out figures/
    python analysis/make_curves.py --from export/dpo-beta --only dpo

Each figure is written as PNG and PDF (default folder: beside the store read — ``mlruns/analysis/figures/<sweep|all>``
next to a SQLite ``mlflow.db``, ``<bundle>/figures/<sweep|all>`` for ``--from``; see ``default_out``) with the
numbers behind it as CSV, and, unless ``--no-log``, logged to the sweep's parent run under
``analysis/figures/``. Figures whose data is absent from the selection are skipped with a message.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository's lightgen first

from lightgen.analysis.script import run_main, source_arguments, warn  # noqa: E402

# the keys of lightgen.analysis.curves.ALL_PLOTS, spelled out so that --help needs no heavy import
PLOT_NAMES = ["scale", "samples_seen", "iterations", "diversity_knobs", "diversity_measured", "heatmap", "dpo"]



def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="make_curves.py", description=__doc__.split("\n\n")[0])
    source_arguments(p)
    p.add_argument("--out", default=None, help="output folder (default: beside the store read, "
                                              "<store folder>/mlruns/analysis/figures/<sweep|all>)")
    p.add_argument("--only", action="append", choices=PLOT_NAMES, default=None,
                   help="draw only these figures (repeatable)")
    p.add_argument("--formats", default="png,pdf", help="comma-separated: png, pdf, svg")
    args = p.parse_args(argv)
    args.formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    bad = [f for f in args.formats if f not in ("png", "pdf", "svg")]
    if bad or not args.formats:
        p.error(f"--formats: unknown format(s) {', '.join(bad) or '(none)'}; use png, pdf, svg")
    return args


def default_out(tracking_uri: str | None, bundle: str | None, sweep: str | None) -> Path:
    """Where figures go without ``--out``: beside what was read. A SQLite store ``DIR/mlflow.db`` →
    ``DIR/mlruns/analysis/figures/<sweep|all>``; a file store ``DIR`` → ``DIR/analysis/figures/…``; a bundle
    ``B`` → ``B/figures/…``; a server (http, postgresql) → ``mlruns/analysis/figures/…`` here."""
    from lightgen.tracking import resolve_tracking_uri

    name = sweep or "all"
    if bundle:
        b = Path(bundle)
        return (b if b.is_dir() else b.parent) / "figures" / name
    uri = resolve_tracking_uri(tracking_uri)
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///"):]).parent / "mlruns" / "analysis" / "figures" / name
    if uri.startswith("file:") or "://" not in uri:
        return Path(uri.removeprefix("file://").removeprefix("file:")) / "analysis" / "figures" / name
    return Path("mlruns") / "analysis" / "figures" / name


def draw(data, folder: Path, names: list[str], formats: list[str], sweep: str | None) -> list:
    """Draw the named figures of one sweep into ``folder`` (with the plotted numbers as CSV)."""
    from lightgen.analysis import curves as C
    from lightgen.utils import write_atomic

    drawn = []
    for name in names:
        df = C.ALL_PLOTS[name](data, out_dir=folder, formats=formats)
        if df.attrs.get("skipped"):
            if sweep is None or len(names) == 1:
                warn(f"skipped {name}: {df.attrs['skipped']}")
            continue
        files = list(df.attrs["files"])
        stem = files[0].stem if files else name
        files.append(write_atomic(folder / f"{stem}.csv", df.to_csv(index=False)))
        drawn.append((name, files))
        warn(f"{sweep or 'all'} / {name}: {', '.join(str(f) for f in files)}")
    return drawn


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from lightgen.analysis.loader import load_sweep
    from lightgen.errors import UserError

    data = load_sweep(args.tracking_uri, sweep=args.sweep, experiment=args.experiment, bundle=args.bundle)
    out = Path(args.out) if args.out else default_out(args.tracking_uri, args.bundle, args.sweep)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    sweeps = sorted(data.runs["sweep"].dropna().unique())
    groups = [(s, data.subset(s)) for s in sweeps] or [(None, data)]
    drawn_any = False
    for sweep, sub in groups:
        folder = out if (args.sweep or len(groups) == 1) else out / str(sweep)
        drawn = draw(sub, folder, args.only or PLOT_NAMES, args.formats, sweep)
        drawn_any = drawn_any or bool(drawn)
        rid = sub.parent_run_id(sweep) if sweep is not None else None
        if drawn and rid is not None and not args.no_log and sub.source.client is not None:
            for _, files in drawn:
                for f in files:
                    sub.source.client.log_artifact(rid, str(f), "analysis/figures")
            warn(f"logged {sum(len(f) for _, f in drawn)} file(s) to parent run {rid} ({sweep})")
    if not drawn_any:
        warn("nothing to show: no figure has data in this selection")
        return 0
    if data.partial:
        warn("note: the selection is partial (" + "; ".join(data.notes) + ")")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
