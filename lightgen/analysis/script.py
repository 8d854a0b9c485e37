"""Shared command-line plumbing of ``analysis/make_tables.py`` and ``analysis/make_curves.py``.

Exit codes: 0 on success and for "nothing to show" (empty store, no finished runs: a message on
stderr), 2 for bad arguments or unreadable inputs (``UserError``/``ConfigError``), never a traceback for
either.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable


def source_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--from", dest="bundle", metavar="BUNDLE",
                     help="read an export bundle (directory or runs .parquet) instead of MLflow")
    src.add_argument("--tracking-uri", default=None,
                     help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    parser.add_argument("--sweep", default=None, help="only this sweep (tag lightgen.sweep), e.g. data-scale")
    parser.add_argument("--experiment", default=None, help="only this MLflow experiment (name or id)")
    parser.add_argument("--no-log", action="store_true", help="do not log the output to the sweep's parent run")
    parser.add_argument("--seed", type=seed_type, default=0, help="seed of the bootstrap and permutation draws")


def seed_type(text: str) -> int:
    """A seed: an integer >= 0 (numpy's generators refuse negative seeds)."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {v}")
    return v


def warn(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_main(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """Call ``main`` and turn expected failures into messages and exit codes (the studio's error
    boundary, ``lightgen.cliutil.describe_error``: one line naming the file, exit 2; bugs traceback)."""
    from lightgen.analysis.loader import NoData
    from lightgen.errors import describe_error, one_line

    try:
        return main(argv)
    except NoData as e:
        warn(f"nothing to show: {e}")
        return 0
    except Exception as e:  # noqa: BLE001 - sorted by describe_error; bugs are re-raised
        msg = describe_error(e)
        if msg is None:
            raise
        warn(f"error: {one_line(msg)}")
        return 2
