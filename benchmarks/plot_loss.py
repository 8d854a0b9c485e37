"""Plot training-loss curves of MLflow runs (the learning checks in LEARN_TINY.md).

Each ``--run LABEL=TRACKING_URI#RUN_ID[,RUN_ID…]`` is one curve; several run ids are concatenated by step
(a run resumed from another's checkpoint continues its step counter). Curves are grouped into panels by
``model.prediction_type`` (ε and v targets have different loss scales).

    PYTHONPATH=. python benchmarks/plot_loss.py --out loss.png \
        --run "v + sincos=sqlite:////work/a/mlflow.db#<run>,<run>" --run "eps + normal=sqlite:///b.db#<run>"
"""

from __future__ import annotations

import argparse

import matplotlib

matplotlib.use("Agg")
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402


def load_curve(spec: str, metric: str) -> pd.DataFrame:
    label, rest = spec.split("=", 1)
    uri, ids = rest.rsplit("#", 1)
    client = MlflowClient(uri)
    rows, target = [], None
    for run_id in ids.split(","):
        run = client.get_run(run_id)
        target = run.data.params.get("model.prediction_type", "epsilon")
        rows += [(m.step, m.value) for m in client.get_metric_history(run_id, metric)]
    df = pd.DataFrame(rows, columns=["step", "loss"]).drop_duplicates("step", keep="last").sort_values("step")
    return df.assign(run=label, target=target)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", action="append", required=True)
    ap.add_argument("--metric", default="train/loss")
    ap.add_argument("--out", default="loss.png")
    a = ap.parse_args()
    df = pd.concat([load_curve(s, a.metric) for s in a.run])
    df["loss (rolling mean of 5 logs)"] = df.groupby("run")["loss"].transform(lambda s: s.rolling(5, min_periods=1).mean())
    g = sns.relplot(df, x="step", y="loss (rolling mean of 5 logs)", hue="run", col="target", kind="line",
                    facet_kws={"sharey": False}, height=3.2, aspect=1.3)
    g.set(yscale="log")
    g.savefig(a.out, dpi=110)
    last = df.sort_values("step").groupby("run").tail(1)[["run", "step", "loss"]]
    print(last.to_string(index=False))


if __name__ == "__main__":
    from lightgen.cliutil import run_guarded  # the studio's error boundary: bad input → one line, exit 2

    raise SystemExit(run_guarded(main))
