"""A small MLflow store with runs of known metrics and per-image results, for the analysis tests.

Layout (all toy world, toy prompt set, 32 px, unless said otherwise), 4 prompts per task, 1 image each;
prompts 0–1 are "seen", 2–3 "unseen"; a run with n correct per task gets prompts 0..n-1 right in every
task, so every per-task score, the overall score and seen/unseen scores are n/4, min(n,2)/2,
max(n-2,0)/2:

* sweep ``data-scale`` (parent FINISHED): scale 100K / 200K / 500K × seeds 0, 1 with n = (1, 2), (2, 3),
  (4, 4); samples seen 60*32 = 1920 everywhere;
* sweep ``caption-diversity`` (parent RUNNING = still running): diversity 0.5 seeds 0, 1 (n = 2, 2) and
  diversity 1.0 seed 0 finished twice (older n = 0, newer n = 3: the newer wins), seed 1 FAILED;
* sweep ``dpo-beta``: SFT arm (n = 2, seeds 0, 1), β 1000 (n = 3, 3), β 5000 (n = 4, 3); geneval_before = 0.25;
* sweep ``iterations``: seeds 0, 1, geneval/overall history at steps 20, 40, 60 = 0.25, 0.5, 0.75 (+0.25 for
  seed 1, capped at 1.0), no per-image results;
* sweep ``paper-repro``: one real-world point at 256 px on the official prompt set, n = 3, no results.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

TASKS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
N_PROMPTS = 4
T0 = 1_700_000_000_000


def records(n_correct: int) -> list[dict]:
    out = []
    for t in TASKS:
        for i in range(N_PROMPTS):
            out.append({"filename": f"{t}_{i}.png", "tag": t, "prompt": f"{t} prompt {i}",
                        "correct": i < n_correct, "reason": "", "details": {"n": i},
                        "metadata": {"tag": t, "prompt": f"{t} prompt {i}", "seen": i < 2}})
    return out


def metrics_for(n: int) -> dict[str, float]:
    acc, seen, unseen = n / 4, min(n, 2) / 2, max(n - 2, 0) / 2
    m = {f"geneval/{t}": acc for t in TASKS} | {f"geneval_seen/{t}": seen for t in TASKS}
    m |= {f"geneval_unseen/{t}": unseen for t in TASKS}
    m |= {"geneval/overall": acc, "geneval_seen/overall": seen, "geneval_unseen/overall": unseen,
          "geneval/overall_ci_low": max(0.0, acc - 0.1), "geneval/overall_ci_high": min(1.0, acc + 0.1)}
    return m


class StoreBuilder:
    def __init__(self, root: Path):
        self.uri = f"sqlite:///{root / 'mlflow.db'}"
        self.client = MlflowClient(self.uri)
        self.root = root
        self.clock = T0
        self.exp: dict[str, str] = {}

    def experiment(self, sweep: str) -> str:
        if sweep not in self.exp:
            self.exp[sweep] = self.client.create_experiment(
                f"lightgen/{sweep}", artifact_location=(self.root / "artifacts" / sweep).as_uri())
        return self.exp[sweep]

    def parent(self, sweep: str, status: str = "FINISHED") -> str:
        self.clock += 1000
        run = self.client.create_run(self.experiment(sweep), start_time=self.clock, tags={
            "lightgen.kind": "sweep", "lightgen.sweep": sweep})
        self.client.log_batch(run.info.run_id, params=[Param("lightgen.sweep", sweep)])
        if status != "RUNNING":
            self.client.set_terminated(run.info.run_id, status)
        return run.info.run_id

    def trial(self, sweep: str, parent: str, point: str, seed: int, params: dict, metrics: dict | None,
              results: list[dict] | None = None, status: str = "FINISHED", world: str = "toy",
              history: list[tuple[int, dict]] | None = None) -> str:
        self.clock += 1000
        tags = {"lightgen.kind": "trial", "lightgen.sweep": sweep, "lightgen.point_id": point,
                "lightgen.seed": str(seed), "lightgen.world": world, "mlflow.parentRunId": parent}
        run = self.client.create_run(self.experiment(sweep), start_time=self.clock, tags=tags)
        rid = run.info.run_id
        base = {"seed": seed, "world.kind": world, "eval.prompt_set": "toy", "data.resolution": 32,
                "model.size": "tiny", "train.iterations": 60, "train.batch_size": 32, "data.scale": 100000,
                "data.scale_label": "100K", "data.actual_size": 100, "data.caption_diversity": 1.0,
                "dpo.mode": "dpo", "dpo.beta": 5000.0}
        base.update(params)
        ms = [Metric(k, float(v), self.clock, 0) for k, v in (metrics or {}).items()]
        for step, hm in history or []:
            ms += [Metric(k, float(v), self.clock + step, step) for k, v in hm.items()]
        self.client.log_batch(rid, metrics=ms, params=[Param(k, str(v)) for k, v in base.items()],
                              tags=[RunTag("lightgen.preset", "smoke")])
        if results is not None:
            self.client.log_text(rid, "\n".join(json.dumps(r) for r in results) + "\n", "geneval/results.jsonl")
        if status != "RUNNING":
            self.client.set_terminated(rid, status, end_time=self.clock + 500)
        return rid


def build(root: Path) -> StoreBuilder:
    t = time.perf_counter()
    b = StoreBuilder(root)
    compute = {"compute/samples_seen": 1920, "compute/train_flops": 1e12, "compute/device_hours": 0.01}
    # data-scale
    p = b.parent("data-scale")
    for scale, label, ns in ((100_000, "100K", (1, 2)), (200_000, "200K", (2, 3)), (500_000, "500K", (4, 4))):
        for seed, n in enumerate(ns):
            m = metrics_for(n) | compute | {"compute/epochs": 1920 / (scale / 1000),
                                            "data/vendi_caption": scale / 100_000}
            b.trial("data-scale", p, f"scale{label}", seed,
                    {"data.scale": scale, "data.scale_label": label, "data.actual_size": scale // 1000},
                    m, records(n))
    # caption-diversity (still running)
    p = b.parent("caption-diversity", status="RUNNING")
    for seed in (0, 1):
        b.trial("caption-diversity", p, "div0.5", seed, {"data.caption_diversity": 0.5},
                metrics_for(2) | {"data/vendi_caption": 2.0}, records(2))
    b.trial("caption-diversity", p, "div1.0", 0, {"data.caption_diversity": 1.0},
            metrics_for(0) | {"data/vendi_caption": 4.0}, records(0))
    b.trial("caption-diversity", p, "div1.0", 0, {"data.caption_diversity": 1.0},
            metrics_for(3) | {"data/vendi_caption": 4.0}, records(3))
    b.trial("caption-diversity", p, "div1.0", 1, {"data.caption_diversity": 1.0}, None, None, status="FAILED")
    # dpo-beta
    p = b.parent("dpo-beta")
    before = {f"geneval_before/{t}": 0.25 for t in TASKS} | {"geneval_before/overall": 0.25}
    for point, params, ns in (("sft", {"dpo.mode": "sft"}, (2, 2)), ("b1000", {"dpo.beta": 1000.0}, (3, 3)),
                              ("b5000", {"dpo.beta": 5000.0}, (4, 3))):
        for seed, n in enumerate(ns):
            b.trial("dpo-beta", p, point, seed, params, metrics_for(n) | before, records(n))
    # iterations: step-indexed history, no results
    p = b.parent("iterations")
    for seed in (0, 1):
        hist = [(s, {"geneval/overall": min(1.0, v + 0.25 * seed)}) for s, v in ((20, 0.25), (40, 0.5), (60, 0.75))]
        b.trial("iterations", p, "iters", seed, {}, None, None, history=hist)
    # a real-world point at 256 px
    p = b.parent("paper-repro")
    b.trial("paper-repro", p, "real256", 0, {"data.resolution": 256, "eval.prompt_set": "official",
                                              "world.kind": "real", "model.size": "L"},
            metrics_for(3), None, world="real")
    b.build_seconds = time.perf_counter() - t
    return b
