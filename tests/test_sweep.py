"""Sweep orchestration: definitions, planning, parallel workers, kills, re-runs.

These use the fake trial runner (``lightgen.testing:fake_trial``) so they exercise Optuna + MLflow +
process management without training; the real pipeline is covered by tests/test_smoke_sweep.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lightgen.config import ConfigError
from lightgen.sweep import available_sweeps, load_sweep, plan_sweep
from tests.store_readers import mlflow_runs as _runs, study_trials as _trials  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
FAKE = "lightgen.testing:fake_trial"


def test_shipped_sweeps_load_and_validate():
    names = ("data-scale", "caption-diversity", "iterations", "dpo-beta", "confirmatory", "controls")
    assert set(names) <= set(available_sweeps())
    for name in names:
        sweep = load_sweep(name)
        for preset in ("smoke", "lab", "paper", "cpu"):
            plan = plan_sweep(sweep, preset)
            assert plan.points, (name, preset)
            # every point is a distinct config
            assert len({p.point_id for p in plan.points}) == len(plan.points)


def test_data_scale_points_and_labels():
    plan = plan_sweep(load_sweep("data-scale"), "smoke")
    assert [p.label for p in plan.points] == ["scale=100K", "scale=200K", "scale=500K", "scale=1M", "scale=2M"]
    assert [p.cfg.data.actual_size for p in plan.points] == [100, 200, 500, 1000, 2000]
    lab = plan_sweep(load_sweep("data-scale"), "lab")
    assert lab.seeds == 3 and len(lab.jobs) == 30  # iso-iteration + iso-epoch arms
    iso_epoch = [p for p in lab.points if p.arm == "iso-epoch"]
    epochs = {p.cfg.train.iterations * p.cfg.train.batch_size / p.cfg.data.actual_size for p in iso_epoch}
    assert max(epochs) - min(epochs) < 0.01  # the same number of epochs at every scale


def test_cpu_study_sweeps():
    """The CPU study's designs (issue 17): >= 5 scales, >= 5 seeds where H1/H2 need them, beta where it acts."""
    ds = plan_sweep(load_sweep("data-scale"), "cpu")
    scales = sorted({p.cfg.data.actual_size for p in ds.points if p.arm == "cpu-iso-iteration"})
    # straddles the 500-item saturation point of study/design_checks.json (PLAN v2)
    assert scales == [100, 250, 500, 2000, 16000] and ds.seeds >= 5
    iso_epoch = [p for p in ds.points if p.arm == "cpu-iso-epoch"]
    epochs = {round(p.cfg.train.iterations * p.cfg.train.batch_size / p.cfg.data.actual_size) for p in iso_epoch}
    assert epochs == {6} and len(iso_epoch) == 4   # its 16K point is the iso-iteration one, run once
    conf = plan_sweep(load_sweep("confirmatory"), "cpu")
    h1 = [p for p in conf.points if p.arm == "h1"]
    assert conf.seeds >= 5 and {p.cfg.world.seed for p in h1} == {0, 1} and len(h1) == 8
    assert {(p.cfg.data.caption_diversity, p.cfg.data.actual_size) for p in h1} == {
        (1.0, 250), (0.0, 250), (0.5, 500), (0.5, 250)}
    knobs = {p.arm: p.cfg.data for p in conf.points if p.arm.startswith("h3-")}
    assert knobs["h3-coverage"].coverage == 0.05 and knobs["h3-variety"].variety == 0.0
    assert knobs["h3-density"].density == 0.0
    controls = plan_sweep(load_sweep("controls"), "cpu")
    assert controls.seeds == 10 and {p.arm: p.cfg.train.iterations for p in controls.points} == {
        "aa": 3000, "budget": 750}  # A/A and the training-budget positive control (PLAN A7), one point each
    dpo = plan_sweep(load_sweep("dpo-beta"), "cpu")
    betas = {p.cfg.dpo.beta for p in dpo.points if p.cfg.dpo.mode == "dpo"}
    assert len(betas) >= 4 and all(p.cfg.dpo.lr == 1e-5 for p in dpo.points)
    assert all(p.cfg.dpo.lr == 1e-5 for p in plan_sweep(load_sweep("dpo-beta"), "lab").points)
    assert any(p.cfg.dpo.mode == "sft" for p in dpo.points)


def test_user_axis_and_bad_axis(tmp_path):
    good = tmp_path / "size.yaml"
    good.write_text("name: size\narms:\n  - name: s\n    grid:\n      model.size: [tiny, small]\n")
    plan = plan_sweep(load_sweep(good), "smoke")
    assert [p.cfg.model.size for p in plan.points] == ["tiny", "small"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\narms:\n  - name: s\n    grid:\n      model.sise: [tiny]\n")
    with pytest.raises(ConfigError, match="model.sise"):
        plan_sweep(load_sweep(bad), "smoke")
    out_of_range = tmp_path / "oor.yaml"
    out_of_range.write_text("name: oor\narms:\n  - name: s\n    grid:\n      dpo.beta: [-1]\n")
    with pytest.raises(ConfigError, match="dpo.beta"):
        plan_sweep(load_sweep(out_of_range), "smoke")
    with pytest.raises(ConfigError, match="unknown sweep"):
        load_sweep("no-such-sweep")
    typo = tmp_path / "typo.yaml"
    typo.write_text("name: t\nsampler: grid\narmz: []\n")
    with pytest.raises(ConfigError, match="armz"):
        load_sweep(typo)


def _env(extra: dict | None = None) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_LOGGING_LEVEL": "WARNING"}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.update(extra or {})
    return env


def _sweep_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "lightgen", "sweep", "data-scale", "--preset", "smoke", "--runner", FAKE, *args]


def _sweep(cwd: Path, env: dict, *args: str, timeout: int) -> subprocess.CompletedProcess:
    """Run the smoke data-scale sweep with the fake runner in ``cwd``."""
    return subprocess.run(_sweep_cmd(*args), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _assert_each_job_once(cwd: Path, n_points: int = 5) -> None:
    from optuna.trial import TrialState

    trials = _trials(cwd)
    complete = [t.user_attrs["lightgen.job"] for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == n_points and len(set(complete)) == n_points
    runs = _runs(cwd)
    assert not (runs["status"] == "RUNNING").any(), "a run was left RUNNING"
    children = runs[(runs["tags.lightgen.kind"] == "trial") & (runs["status"] == "FINISHED")]
    assert len(children) == n_points
    assert children["tags.lightgen.point_id"].nunique() == n_points
    parent = runs[runs["tags.lightgen.kind"] == "sweep"]
    assert len(parent) == 1 and (children["tags.mlflow.parentRunId"] == parent["run_id"].iloc[0]).all()


@pytest.mark.fault
def test_two_workers_cover_grid_once_and_rerun_does_nothing(tmp_path):
    env = _env({"LIGHTGEN_FAKE_STEPS": "4", "LIGHTGEN_FAKE_STEP_SECONDS": "0.05"})
    res = _sweep(tmp_path, env, "--workers", "2", timeout=240)
    assert res.returncode == 0, res.stdout + res.stderr
    _assert_each_job_once(tmp_path)
    # params and tags of the tracking contract
    runs = _runs(tmp_path)
    child = runs[runs["tags.lightgen.kind"] == "trial"].iloc[0]
    for key in ("params.data.scale", "params.data.scale_label", "params.data.actual_size", "params.seed",
                "params.train.iterations", "params.dpo.beta", "tags.lightgen.sweep", "tags.lightgen.world",
                "tags.lightgen.preset", "tags.lightgen.git_commit", "tags.optuna.study", "tags.optuna.trial"):
        assert key in runs.columns and child[key] is not None, key
    pids = {json.loads(p.read_text())["pid"] for p in (tmp_path / "mlruns" / "checkpoints").glob("*/seed0/fake_state.json")}
    assert len(pids) == 2  # both workers ran trials
    # re-running a finished sweep does nothing new
    n_trials = len(_trials(tmp_path))
    res = _sweep(tmp_path, env, "--workers", "2", timeout=120)
    assert res.returncode == 0 and "5 done, 0 enqueued" in res.stdout + res.stderr
    assert len(_trials(tmp_path)) == n_trials
    _assert_each_job_once(tmp_path)
    # --status reports the points
    res = subprocess.run([*_sweep_cmd("--status")], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "5/5 jobs complete" in res.stdout


@pytest.mark.fault
def test_sigkilled_workers_resume_from_checkpoint(tmp_path):
    """Kill -9 a worker mid-trial three times: every point still ends with exactly one COMPLETE trial,
    resumed from its checkpoint (step counter continues), killed runs marked KILLED, none RUNNING."""
    env = _env({"LIGHTGEN_FAKE_STEPS": "30", "LIGHTGEN_FAKE_STEP_SECONDS": "0.1"})
    launcher = subprocess.Popen(_sweep_cmd("--workers", "2"), cwd=tmp_path, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    killed: list[tuple[str, int]] = []
    deadline = time.time() + 180
    try:
        while len(killed) < 3 and time.time() < deadline and launcher.poll() is None:
            for f in (tmp_path / "mlruns" / "checkpoints").glob("*/seed0/fake_state.json"):
                try:
                    st = json.loads(f.read_text())
                except (OSError, json.JSONDecodeError):
                    continue
                key = (str(f), st.get("trial"))
                if st.get("done") or st["step"] < 3 or key in killed:
                    continue
                try:
                    os.kill(st["pid"], signal.SIGKILL)
                except ProcessLookupError:
                    continue
                killed.append(key)
                break
            time.sleep(0.2)
        out, _ = launcher.communicate(timeout=240)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert len(killed) == 3, f"could only kill {len(killed)} workers: {out}"
    assert launcher.returncode == 0, out
    _assert_each_job_once(tmp_path)
    for path in {k[0] for k in killed}:
        st = json.loads(Path(path).read_text())
        assert st["done"] and len(st["starts"]) >= 2 and st["starts"][-1] >= 3, st  # resumed, not restarted
    runs = _runs(tmp_path)
    assert (runs["status"] == "KILLED").sum() >= 3


@pytest.mark.fault
def test_nan_trial_fails_with_reason_and_sweep_goes_on(tmp_path):
    env = _env({"LIGHTGEN_FAKE_STEPS": "3", "LIGHTGEN_FAKE_STEP_SECONDS": "0.01", "LIGHTGEN_FAKE_NAN": "scale=500K"})
    res = _sweep(tmp_path, env, timeout=240)
    assert res.returncode == 1  # the sweep did not finish every point, and says so
    runs = _runs(tmp_path)
    trials = runs[runs["tags.lightgen.kind"] == "trial"]
    failed = trials[trials["status"] == "FAILED"]
    assert len(failed) == 1 and "NaN" in failed["tags.lightgen.failure"].iloc[0]
    parent = runs[runs["tags.lightgen.kind"] == "sweep"]
    assert parent["status"].iloc[0] == "FAILED"  # the sweep says it is incomplete
    assert (runs[runs["tags.lightgen.kind"] == "trial"]["status"] == "FINISHED").sum() == 4
    # a permanent failure is not retried by a re-run, and the message says how to retry it
    res = _sweep(tmp_path, env, timeout=120)
    assert "0 enqueued" in res.stdout + res.stderr and "--retry-failed" in res.stdout + res.stderr
    assert res.returncode == 1
    # once the cause is fixed, --retry-failed runs it again and the sweep finishes
    env.pop("LIGHTGEN_FAKE_NAN")
    res = _sweep(tmp_path, env, "--retry-failed", timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "4 done, 1 enqueued" in res.stdout + res.stderr
    runs = _runs(tmp_path)
    assert (runs[runs["tags.lightgen.kind"] == "trial"]["status"] == "FINISHED").sum() == 5
    assert runs[runs["tags.lightgen.kind"] == "sweep"]["status"].iloc[0] == "FINISHED"


def test_dry_run_lists_points_and_datasets(tmp_path):
    res = subprocess.run([sys.executable, "-m", "lightgen", "sweep", "data-scale", "--preset", "smoke", "--dry-run"],
                         cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "5 points" in res.stdout and "scale=2M" in res.stdout
    # one cached stream serves all five scales (smaller ones are its prefixes): one stream to build, not five
    assert "datasets: 5, from 1 image stream(s)" in res.stdout and "streams to build: 1" in res.stdout
    assert not (tmp_path / "mlflow.db").exists()  # a dry run writes nothing


def test_unknown_gpu_is_rejected(tmp_path):
    res = subprocess.run([sys.executable, "-m", "lightgen", "sweep", "data-scale", "--gpus", "7"],
                         cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "--gpus names GPU 7" in res.stderr
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.fault
def test_four_workers_on_one_study(tmp_path):
    """Four workers on one study: no grid point lost or run twice; one FINISHED child run per point."""
    env = _env({"LIGHTGEN_FAKE_STEPS": "3", "LIGHTGEN_FAKE_STEP_SECONDS": "0.05"})
    res = _sweep(tmp_path, env, "--workers", "4", timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    _assert_each_job_once(tmp_path)
    from optuna.trial import TrialState

    ran = [t for t in _trials(tmp_path) if t.state == TrialState.COMPLETE]
    assert len({t.user_attrs["worker_pid"] for t in ran}) >= 2  # the work was shared


@pytest.mark.fault
def test_killed_sweep_continues_when_run_again(tmp_path):
    """SIGKILL the launcher and its workers mid-sweep; the same command again finishes the sweep without
    redoing finished points, resuming the interrupted one from its checkpoint."""
    env = _env({"LIGHTGEN_FAKE_STEPS": "20", "LIGHTGEN_FAKE_STEP_SECONDS": "0.1"})
    launcher = subprocess.Popen(_sweep_cmd("--workers", "1"), cwd=tmp_path, env=env, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpts = tmp_path / "mlruns" / "checkpoints"
    deadline = time.time() + 180
    try:
        while time.time() < deadline:  # wait until one point is done and another is half-way
            states = []
            for f in ckpts.glob("*/seed0/fake_state.json"):
                try:
                    states.append(json.loads(f.read_text()))
                except (OSError, json.JSONDecodeError):
                    pass
            if any(s.get("done") for s in states) and any(not s.get("done") and s["step"] >= 3 for s in states):
                break
            time.sleep(0.2)
        os.killpg(launcher.pid, signal.SIGKILL)  # the whole sweep: launcher and workers
    finally:
        launcher.wait(timeout=60)
    finished_before = {str(f) for f in ckpts.glob("*/seed0/fake_state.json") if json.loads(f.read_text()).get("done")}
    assert finished_before
    res = _sweep(tmp_path, env, "--workers", "1", timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"{len(finished_before)} done" in res.stdout + res.stderr
    _assert_each_job_once(tmp_path)
    for f in ckpts.glob("*/seed0/fake_state.json"):
        st = json.loads(f.read_text())
        if str(f) in finished_before:
            assert len(st["starts"]) == 1  # not redone
        assert st["done"] and all(s < 20 for s in st["starts"])
    resumed = [json.loads(f.read_text()) for f in ckpts.glob("*/seed0/fake_state.json")]
    assert any(len(s["starts"]) == 2 and s["starts"][1] >= 3 for s in resumed)  # continued from its checkpoint


def test_dry_run_counts_dpo_steps_and_one_base():
    """A DPO sweep's compute is its DPO steps (a winner and a loser per pair) plus one shared base model, not a
    pre-training budget per job."""
    from lightgen.sweep.plan import dry_run

    plan = plan_sweep(load_sweep("dpo-beta"), "cpu")
    info = dry_run(plan)
    cfg, base = plan.points[0].cfg, plan.base_config
    want = len(plan.jobs) * cfg.dpo.iterations * cfg.dpo.batch_size * 2 + base.train.iterations * base.train.batch_size
    assert info["samples"] == want
    assert base.train.iterations == 3000   # the cpu base trains at the study's budget
