"""Stores under concurrency and damage: two launchers at once in a fresh folder (then a third) share one
healthy store; a damaged MLflow store or Optuna journal fails with a message naming the file and the fix."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from lightgen.cliutil import UserError
from lightgen.sweep import open_storage
from lightgen.tracking import DamagedStoreError, check_sqlite_store, ensure_store
from tests.store_readers import mlflow_runs as _runs  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
FAKE = "lightgen.testing:fake_trial"


def _env() -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_LOGGING_LEVEL": "WARNING",
           "LIGHTGEN_FAKE_STEPS": "3", "LIGHTGEN_FAKE_STEP_SECONDS": "0.05"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def _cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "lightgen", "sweep", "data-scale", "--preset", "smoke", "--runner", FAKE,
            "--workers", "1", *args]


def _sweep(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(_cmd(*args), cwd=cwd, env=_env(), capture_output=True, text=True, timeout=600)


def _integrity(db: Path) -> list:
    con = sqlite3.connect(db)
    try:
        return con.execute("PRAGMA integrity_check").fetchall()
    finally:
        con.close()


@pytest.mark.fault
def test_two_launchers_at_once_in_a_fresh_folder_then_a_third(tmp_path):
    env = _env()
    a, b = (subprocess.Popen(_cmd(), cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True) for _ in range(2))
    out_a, _ = a.communicate(timeout=600)
    out_b, _ = b.communicate(timeout=600)
    assert a.returncode == 0, out_a
    assert b.returncode == 0, out_b  # the second joins; it neither crashes nor fails the parent run
    third = _sweep(tmp_path)
    assert third.returncode == 0 and "5 done, 0 enqueued" in third.stdout + third.stderr, third.stdout + third.stderr
    assert _integrity(tmp_path / "mlflow.db") == [("ok",)]
    runs = _runs(tmp_path)
    assert not (runs["status"] == "RUNNING").any()
    trials = runs[runs["tags.lightgen.kind"] == "trial"]
    assert (trials["status"] == "FINISHED").sum() == 5 and trials["tags.lightgen.point_id"].nunique() == 5
    assert len(trials) == 5  # each job ran once
    parent = runs[runs["tags.lightgen.kind"] == "sweep"]
    assert len(parent) == 1 and parent["status"].iloc[0] == "FINISHED"


def test_damaged_mlflow_stores_are_refused_with_the_file_and_the_fix(tmp_path):
    db = tmp_path / "mlflow.db"
    ensure_store(f"sqlite:///{db}")  # a healthy fresh store
    check_sqlite_store(db)
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    with pytest.raises(DamagedStoreError, match=r"empty\.db is empty \(0 bytes\).*backup"):
        ensure_store(f"sqlite:///{empty}")
    assert empty.stat().st_size == 0  # not silently re-created
    garbled = tmp_path / "garbled.db"
    data = bytearray(db.read_bytes())
    data[4096:8192] = os.urandom(4096)  # a page in the middle; the header still says SQLite
    garbled.write_bytes(bytes(data))
    with pytest.raises(DamagedStoreError, match=r"garbled\.db (fails SQLite's integrity check|is damaged)"):
        check_sqlite_store(garbled)
    noise = tmp_path / "noise.db"
    noise.write_bytes(os.urandom(20000))
    with pytest.raises(DamagedStoreError, match=r"noise\.db is damaged"):
        check_sqlite_store(noise)
    half = tmp_path / "half.db"
    shutil.copy(db, half)
    con = sqlite3.connect(half)
    con.execute("CREATE TABLE _alembic_tmp_experiments (x int)")  # what an interrupted migration leaves
    con.commit()
    con.close()
    with pytest.raises(DamagedStoreError, match="interrupted schema migration.*DROP TABLE _alembic_tmp_experiments"):
        check_sqlite_store(half)
    assert issubclass(DamagedStoreError, UserError)  # commands exit 2 with the message


def _journal(tmp_path: Path) -> Path:
    import optuna

    path = tmp_path / "journal.log"
    storage = open_storage(f"journal:{path}")
    study = optuna.create_study(study_name="s", storage=storage)
    for i in range(3):
        study.enqueue_trial({}, user_attrs={"lightgen.job": f"j{i}"})
    return path


def test_torn_journal_line_is_cut_and_later_writes_stay_readable(tmp_path):
    import optuna

    path = _journal(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[:-20])  # a writer killed mid-line
    storage = open_storage(f"journal:{path}", repair=True, log=lambda m: None)
    assert path.read_bytes().endswith(b"\n") and list(tmp_path.glob("journal.log.torn-*"))
    optuna.load_study(study_name="s", storage=storage).enqueue_trial({}, user_attrs={"lightgen.job": "j9"})
    again = open_storage(f"journal:{path}")  # the write after the repair left a readable journal
    assert len(optuna.load_study(study_name="s", storage=again).get_trials()) == 3


def test_damaged_journal_is_refused_with_the_file_and_the_fix(tmp_path):
    path = _journal(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[len(data) // 2:])  # the first half gone
    with pytest.raises(DamagedStoreError, match=r"journal\.log is damaged and cannot be replayed.*backup"):
        open_storage(f"journal:{path}")


@pytest.mark.fault
def test_sweep_on_a_zero_byte_mlflow_db_exits_2_and_keeps_nothing_running(tmp_path):
    res = _sweep(tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    (tmp_path / "mlflow.db").write_bytes(b"")
    res = _sweep(tmp_path)
    assert res.returncode == 2 and "mlflow.db is empty (0 bytes)" in res.stderr, res.stdout + res.stderr
    journal = tmp_path / "mlruns" / "optuna" / "journal.log"
    journal.write_bytes(journal.read_bytes()[len(journal.read_bytes()) // 2:])
    (tmp_path / "mlflow.db").unlink()
    res = _sweep(tmp_path)
    assert res.returncode == 2 and "journal.log is damaged" in res.stderr, res.stdout + res.stderr


@pytest.mark.fault
def test_emptied_journal_does_not_rerun_finished_jobs(tmp_path):
    res = _sweep(tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    (tmp_path / "mlruns" / "optuna" / "journal.log").write_bytes(b"")
    res = _sweep(tmp_path)
    out = res.stdout + res.stderr
    assert res.returncode == 0 and "restored them as complete" in out and "5 done, 0 enqueued" in out, out
    trials = _runs(tmp_path)
    trials = trials[trials["tags.lightgen.kind"] == "trial"]
    assert len(trials) == 5 and (trials["status"] == "FINISHED").all()  # not one more run per point
