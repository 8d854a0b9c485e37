"""`lightgen bench NAME`: the benchmark scripts under ``benchmarks/`` (results in ``benchmarks/RESULTS.md``)."""

from __future__ import annotations

import typer

from lightgen.cliutil import not_yet, user_errors

bench_app = typer.Typer(help="Throughput and overhead benchmarks (train, sample, tracking, smoke, data).", no_args_is_help=True)


BENCHMARKS = {
    "train": "Training throughput: images/s, step time, peak memory, MFU (CPU-sized by default; --size L --device cuda).",
    "sample": "Sampling throughput: images/s at a batch size, GenEval pass time.",
    "tracking": "MLflow logging cost per training step, batched vs one call per value.",
    "smoke": "Wall time of the whole smoke sweep, GenEval included.",
    "data": "Toy teacher rendering rate (images/s) at 32/64/128 px.",
    "geneval": "Toy GenEval detector: accuracy under corruptions, false positives, scoring rate.",
}


def _bench_command(name: str, doc: str):
    @user_errors
    def run(ctx: typer.Context) -> None:
        import runpy
        import sys
        from pathlib import Path

        from lightgen.config import REPO_ROOT

        script = Path(REPO_ROOT) / "benchmarks" / f"bench_{name}.py"
        if not script.is_file():
            not_yet(f"bench {name}")
        sys.argv = [str(script), *ctx.args]
        runpy.run_path(str(script), run_name="__main__")

    run.__doc__ = doc + " Extra arguments go to the benchmark script (see its --help)."
    return run


for _name, _doc in BENCHMARKS.items():
    bench_app.command(_name, context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(
        _bench_command(_name, _doc))


def register(root: typer.Typer) -> None:
    root.add_typer(bench_app, name="bench")
