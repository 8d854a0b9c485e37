"""The first hour of a new user (issue #23): what the console shows during a sweep (labelled progress per
trial, phases, the end summary, a one-line Ctrl-C), refused overrides, ``--version``, sampling from a run id,
where results land, table row order, MLflow descriptions and run names, and start-up cost.

Kept short on a loaded 2-core machine: the fake trial runner for the orchestration, one tiny real trial for
the pipeline's phases; waits are on markers in the output, never on sleeps."""

from __future__ import annotations

import os
import pty
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from tests.store_readers import mlflow_runs as _runs  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
FAKE = "lightgen.testing:fake_trial"
# a real trial in seconds: the pipeline's phases, not learning, are under test
FAST = ["train.iterations=4", "train.checkpoint_every=2", "eval.n_prompts=1", "eval.detector_train_images=200",
        "eval.num_iter=2", "eval.diffusion_steps=2", "data.diversity_subsample=20"]
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\r")
INTERRUPTED = re.compile(r"interrupted: (\d+) trials? stopped at their last checkpoint; run the same command to continue")


def _env(extra: dict | None = None) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_LOGGING_LEVEL": "WARNING", "LIGHTGEN_PROGRESS_INTERVAL": "0"}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.update(extra or {})
    return env


def _lightgen(cwd: Path, *args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lightgen", *args], cwd=cwd, env=env or _env(),
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def fake_sweep(tmp_path_factory):
    """The smoke data-scale sweep with the fake runner, output piped (not a terminal)."""
    cwd = tmp_path_factory.mktemp("fake")
    res = _lightgen(cwd, "sweep", "data-scale", "--preset", "smoke", "--runner", FAKE, "--workers", "2",
                    env=_env({"LIGHTGEN_FAKE_STEPS": "4", "LIGHTGEN_FAKE_STEP_SECONDS": "0.05"}))
    assert res.returncode == 0, res.stdout + res.stderr
    return cwd, res


@pytest.fixture(scope="module")
def real_trial(tmp_path_factory):
    """One real trial (dataset → training → sampling → GenEval) through `lightgen sweep`, output piped."""
    cwd = tmp_path_factory.mktemp("real")
    sweep = cwd / "one-point.yaml"
    sweep.write_text("name: one-point\ndescription: one tiny point\nmode: train\nobjective: geneval/overall\n"
                     "sampler: grid\nseeds: 1\narms:\n  - name: scale\n    grid:\n      data.scale: [100k]\n")
    args = ["sweep", str(sweep), "--preset", "smoke", "--workers", "1"]
    for s in FAST:
        args += ["--set", s]
    res = _lightgen(cwd, *args)
    assert res.returncode == 0, res.stdout + res.stderr
    return cwd, res


# --------------------------------------------------------------------------------------------------
# the console of a sweep
# --------------------------------------------------------------------------------------------------
def test_piped_real_trial_prints_labelled_phases_and_the_end_summary(real_trial):
    _, res = real_trial
    out = res.stdout
    for phase in ("dataset", "training", "sampling", "GenEval"):
        assert re.search(rf"^\[scale=100K · seed 0\] {phase}\b", out, re.M), f"no {phase} line:\n{out}"
    assert re.search(r"^\[scale=100K · seed 0\] training 4/4 \(100%\) loss \d", out, re.M), out
    assert re.search(r"^\[scale=100K · seed 0\] finished in \d+ s, objective \d", out, re.M), out
    assert "\x1e" not in out and "lightgen-progress" not in out  # events are parsed, never shown
    # the end: where the results are and what to type next, and what a smoke score means
    assert "results: runs in mlflow.db, artifacts, datasets and checkpoints under mlruns/" in out
    assert re.search(r"^next: +mlflow ui ", out, re.M) and "python analysis/make_tables.py --sweep one-point" in out
    assert "python analysis/make_curves.py --sweep one-point" in out
    assert "smoke preset is a plumbing check" in out and "--preset cpu" in out


def test_two_workers_label_every_line_with_their_trial(fake_sweep):
    _, res = fake_sweep
    labels = set(re.findall(r"^\[(scale=[0-9.]+[KM] · seed 0)\] training", res.stdout, re.M))
    assert labels == {f"scale={s} · seed 0" for s in ("100K", "200K", "500K", "1M", "2M")}, res.stdout
    # two trials ran at once and each line still names its own trial (nothing written onto one line)
    for line in res.stdout.splitlines():
        if "training" in line and line.startswith("["):
            assert line.count("[scale=") == 1, line


def test_terminal_view_draws_one_labelled_bar_per_running_trial():
    from rich.console import Console

    from lightgen.progress import EVENT_PREFIX, SweepProgress

    console = Console(record=True, force_terminal=True, width=120, file=open(os.devnull, "w"))
    view = SweepProgress(console=console, interactive=True)
    view.start()
    ev = lambda w, **e: view.feed(w, EVENT_PREFIX + __import__("json").dumps(e))  # noqa: E731
    ev(1, ev="start", trial="scale=1K · seed 0")
    ev(2, ev="start", trial="scale=2K · seed 0")
    ev(1, ev="phase", trial="scale=1K · seed 0", phase="training", total=60, done=0)
    ev(1, ev="update", trial="scale=1K · seed 0", phase="training", total=60, done=30, info="loss 0.52")
    ev(2, ev="phase", trial="scale=2K · seed 0", phase="GenEval", total=None)
    view.feed(2, "warning: something a worker said\n")
    view._bar.refresh()
    text = console.export_text()
    assert "scale=1K · seed 0" in text and "scale=2K · seed 0" in text
    assert re.search(r"scale=1K · seed 0 +training .*30/60 .*loss 0\.52", text), text
    assert re.search(r"scale=2K · seed 0 +GenEval", text), text
    assert "[scale=2K · seed 0] warning: something a worker said" in text
    ev(1, ev="end", trial="scale=1K · seed 0", status="FINISHED", value=0.5)
    assert view.running == ["scale=2K · seed 0"]  # a finished trial's bar goes away
    view.stop()


def test_ctrl_c_in_a_terminal_prints_one_line_and_keeps_checkpoints(tmp_path):
    """A real terminal (a pseudo-terminal): bars while it runs; Ctrl-C (SIGINT to the foreground process
    group, as a terminal sends it) → one line, exit 130, runs KILLED, checkpoints kept."""
    master, slave = pty.openpty()
    env = _env({"LIGHTGEN_FAKE_STEPS": "400", "LIGHTGEN_FAKE_STEP_SECONDS": "0.25", "TERM": "xterm-256color",
                "COLUMNS": "140", "LINES": "40"})
    p = subprocess.Popen([sys.executable, "-m", "lightgen", "sweep", "data-scale", "--preset", "smoke", "--runner",
                          FAKE, "--workers", "2"], cwd=tmp_path, env=env, stdin=slave, stdout=slave, stderr=slave,
                         start_new_session=True)
    os.close(slave)
    chunks: list[bytes] = []

    def pump() -> None:
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    text = lambda: ANSI.sub("", b"".join(chunks).decode("utf-8", "replace"))  # noqa: E731
    deadline = time.monotonic() + 240  # generous: a loaded machine starts workers slowly
    training = lambda: set(re.findall(r"(scale=\S+ · seed 0) +training", text()))  # noqa: E731
    while time.monotonic() < deadline and len(training()) < 2 and p.poll() is None:
        time.sleep(0.2)  # readiness: both trials (two distinct labels) show a training bar
    assert p.poll() is None and len(training()) == 2, text()[-3000:]
    before = text()
    assert "━" in before  # a rich bar, not plain lines
    os.killpg(p.pid, signal.SIGINT)
    rc = p.wait(timeout=120)
    reader.join(timeout=10)
    os.close(master)
    after = text()[len(before):]
    assert rc == 130, after
    m = INTERRUPTED.search(after)
    assert m, after
    assert "Traceback" not in after and "KeyboardInterrupt" not in after, after
    # the line, not a screenful: besides it only the bars' last frame (redrawn as the display stops)
    assert [ln for ln in after.splitlines() if ln.strip() and "━" not in ln] == [m.group(0)], after
    runs = _runs(tmp_path)
    trials = runs[runs["tags.lightgen.kind"] == "trial"]
    assert not (runs["status"] == "RUNNING").any()
    assert (trials["status"] == "KILLED").sum() == int(m.group(1)) == 2
    assert runs[runs["tags.lightgen.kind"] == "sweep"]["status"].iloc[0] == "KILLED"
    states = list((tmp_path / "mlruns" / "checkpoints").rglob("fake_state.json"))
    steps = [__import__("json").loads(s.read_text())["step"] for s in states]
    assert len(states) == 2 and max(steps) > 0, steps  # both kept; where they stopped is where they resume


# --------------------------------------------------------------------------------------------------
# overrides, --version, start-up cost
# --------------------------------------------------------------------------------------------------
def test_set_of_a_swept_key_is_refused_naming_it(tmp_path):
    res = _lightgen(tmp_path, "sweep", "data-scale", "--preset", "smoke", "--set", "data.scale=3M", timeout=60)
    assert res.returncode == 2
    err = res.stderr.strip()
    assert len(err.splitlines()) == 1 and "--set data.scale" in err and "varies it over" in err, err
    assert not (tmp_path / "mlflow.db").exists()  # refused before anything was written
    # a key of the sweep's base (not swept) can still be set: iterations runs at data.scale 2M by default
    from lightgen.sweep import load_sweep, plan_sweep

    plan = plan_sweep(load_sweep("iterations"), "smoke", {"data.scale": "100k"})
    assert plan.base_config.data.scale == 100_000


def test_version(tmp_path):
    from lightgen import __version__

    res = _lightgen(tmp_path, "--version", timeout=60)
    assert res.returncode == 0 and res.stdout.strip() == f"lightgen {__version__}"


def test_help_and_a_typo_in_a_sweep_name_import_nothing_heavy(tmp_path):
    code = ("import sys; from lightgen.cli import main\n"
            "for argv in (['--help'], ['sweep', 'data-scal']):\n"
            "    sys.argv = ['lightgen', *argv]\n"
            "    try: main()\n"
            "    except SystemExit as e: print('rc', e.code)\n"
            "print('heavy', sorted(m for m in ('torch', 'mlflow', 'optuna', 'pandas') if m in sys.modules))\n")
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=_env(), capture_output=True, text=True,
                         timeout=60)
    assert "rc 0" in res.stdout and "rc 2" in res.stdout, res.stdout + res.stderr
    assert "unknown sweep 'data-scal'" in res.stderr
    assert "heavy []" in res.stdout, res.stdout


# --------------------------------------------------------------------------------------------------
# MLflow: what the UI shows
# --------------------------------------------------------------------------------------------------
def test_experiment_declares_model_training_and_runs_are_described(fake_sweep):
    from mlflow.tracking import MlflowClient

    cwd, _ = fake_sweep
    client = MlflowClient(f"sqlite:///{cwd / 'mlflow.db'}")
    exp = client.get_experiment_by_name("lightgen/data-scale")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    assert "parent run" in exp.tags["mlflow.note.content"] and "geneval/overall" in exp.tags["mlflow.note.content"]
    runs = _runs(cwd)
    parent = runs[runs["tags.lightgen.kind"] == "sweep"].iloc[0]
    assert "smoke preset" in parent["tags.mlflow.note.content"] and "5 points" in parent["tags.mlflow.note.content"]
    names = set(runs[runs["tags.lightgen.kind"] == "trial"]["tags.mlflow.runName"])
    assert names == {f"scale={s} · seed 0" for s in ("100K", "200K", "500K", "1M", "2M")}


def test_short_run_names_tell_diversity_points_apart():
    from lightgen.sweep import load_sweep, plan_sweep
    from lightgen.sweep.plan import Job, run_name

    plan = plan_sweep(load_sweep("caption-diversity"), "lab")
    names = {run_name(Job(p, 1)) for p in plan.points}
    assert "D=0.5 · seed 1" in names and "coverage=0.25 · seed 1" in names
    assert len(names) == len(plan.points) and max(len(n) for n in names) <= 28


# --------------------------------------------------------------------------------------------------
# sampling from a run id; where results land; table row order; captions
# --------------------------------------------------------------------------------------------------
def test_sample_from_a_run_id(real_trial, tmp_path):
    cwd, _ = real_trial
    runs = _runs(cwd)
    run_id = runs[runs["tags.lightgen.kind"] == "trial"]["run_id"].iloc[0]
    out = tmp_path / "from-run.png"
    res = _lightgen(cwd, "sample", "--checkpoint", run_id, "--prompt", "a photo of a red circle", "--n", "1",
                    "--out", str(out), "--set", "eval.num_iter=2", "--set", "eval.diffusion_steps=2", timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    res = _lightgen(cwd, "sample", "--checkpoint", "0" * 32, "--prompt", "x", "--out", str(out), timeout=60)
    assert res.returncode == 2 and "Traceback" not in res.stderr and "0" * 32 in res.stderr


def test_figures_land_beside_the_store_read(fake_sweep, tmp_path):
    cwd, _ = fake_sweep
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    res = subprocess.run([sys.executable, str(REPO / "analysis" / "make_curves.py"), "--tracking-uri",
                          f"sqlite:///{cwd / 'mlflow.db'}", "--sweep", "data-scale", "--only", "scale", "--formats",
                          "png", "--no-log"], cwd=elsewhere, env=_env(), capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr
    assert list((cwd / "mlruns" / "analysis" / "figures" / "data-scale").glob("*.png")), res.stderr
    assert not any(elsewhere.iterdir())  # nothing written where the command was typed


def test_data_show_leaves_nothing_in_the_current_folder(tmp_path):
    root = tmp_path / "store"
    res = _lightgen(tmp_path, "data", "show", "smoke", "--set", "data.scale=100k", "--set", f"tracking.root={root}",
                    "--n", "4", timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]
    grids = list((root / "analysis" / "data").glob("grid-*.png"))
    assert len(grids) == 1 and str(grids[0].name) in res.stdout.replace("\n", "")


def test_paper_table_rows_follow_the_swept_value(fake_sweep):
    from lightgen.analysis.loader import load_sweep
    from lightgen.analysis.tables import build_paper_table, point_summary

    cwd, _ = fake_sweep
    pts = point_summary(load_sweep(f"sqlite:///{cwd / 'mlflow.db'}", sweep="data-scale"), n_boot=50)
    shuffled = pts.iloc[[1, 0, 2, 4, 3]].reset_index(drop=True)  # logged as 200K, 100K, 500K, 2M, 1M
    table = build_paper_table(3, shuffled)
    studio = table.blocks[-1].rows
    scales = [s for s in ("100K", "200K", "500K", "1M", "2M") for d in studio["Pre-train Data"] if s in str(d)]
    assert scales == ["100K", "200K", "500K", "1M", "2M"], studio["Pre-train Data"].tolist()


def test_sample_grid_captions_wrap_at_word_boundaries():
    import io

    import numpy as np
    from PIL import Image

    from lightgen.utils import caption_lines, image_grid_png

    lines = caption_lines("a photo of a cross and a red circle", 16)
    assert lines == ["a photo of a", "cross and a red", "circle"]
    assert all(len(ln) <= 16 for ln in caption_lines("x " * 80, 16)) and caption_lines("x " * 80, 16)[-1].endswith("...")
    imgs = np.zeros((2, 32, 32, 3), np.uint8)
    short = Image.open(io.BytesIO(image_grid_png(imgs, ["a", "b"], ncol=2)))
    long = Image.open(io.BytesIO(image_grid_png(imgs, ["a photo of a cross and a red circle", "b"], ncol=2)))
    assert long.height > short.height  # room for every line of the caption
