"""A sweep on a PostgreSQL-backed Optuna study (the multi-node setup), server started on 127.0.0.1.

The server comes from Debian's `postgresql` package; where it is not installed the fixture installs it
with apt-get, and the test is skipped with the reason only where that cannot be done.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.postgres, pytest.mark.fault]
REPO = Path(__file__).resolve().parent.parent


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def _install_postgres() -> str | None:
    if shutil.which("apt-get") is None:
        return "apt-get is not available"
    if os.geteuid() != 0:
        return "not root: cannot install Debian's postgresql package"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        r = subprocess.run(["apt-get", "install", "-y", "-qq", "postgresql"], env=env, capture_output=True, text=True, timeout=600)
        if r.returncode != 0:
            subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=300)
            r = subprocess.run(["apt-get", "install", "-y", "-qq", "postgresql"], env=env, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"apt-get install postgresql failed: {e}"
    return None if _pg_bin() else f"apt-get install postgresql failed: {r.stderr[-300:]}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url():
    pytest.importorskip("psycopg2", reason="psycopg2 is not installed (pip install psycopg2-binary)")
    if _pg_bin() is None:
        reason = _install_postgres()
        if reason:
            pytest.skip(f"PostgreSQL server unavailable: {reason}")
    bin_dir = _pg_bin()
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="lightgen-pg-"))  # not under pytest's root-only folder
    data, sock = base / "data", base / "sock"
    sock.mkdir()
    as_user: list[str] = []
    if os.geteuid() == 0:  # postgres refuses to run as root
        shutil.chown(base, "postgres")
        shutil.chown(sock, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    port = _free_port()
    subprocess.run([*as_user, str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"],
                   check=True, capture_output=True, timeout=120)
    log = base / "pg.log"
    if as_user:
        log.touch()
        shutil.chown(log, "postgres")
    subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60", "-o",
                    f"-c listen_addresses=127.0.0.1 -p {port} -k {sock}", "start"], check=True, capture_output=True, timeout=120)
    try:
        subprocess.run([str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "optuna"],
                       check=True, capture_output=True, timeout=60)
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/optuna"
    finally:
        subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(base, ignore_errors=True)


def test_server_binds_loopback_only(postgres_url):
    import psycopg2

    port = int(postgres_url.rsplit(":", 1)[1].split("/")[0])
    conn = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="optuna")
    cur = conn.cursor()
    cur.execute("SHOW listen_addresses")
    assert cur.fetchone()[0] == "127.0.0.1"
    conn.close()


def test_sweep_on_postgres_storage(postgres_url, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_LOGGING_LEVEL": "WARNING",
           "LIGHTGEN_FAKE_STEPS": "3", "LIGHTGEN_FAKE_STEP_SECONDS": "0.02"}
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = [sys.executable, "-m", "lightgen", "sweep", "data-scale", "--preset", "smoke", "--workers", "2",
           "--runner", "lightgen.testing:fake_trial", "--storage", postgres_url]
    t0 = time.time()
    res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    import optuna
    from optuna.trial import TrialState

    (summary,) = optuna.get_all_study_summaries(postgres_url)
    trials = optuna.load_study(study_name=summary.study_name, storage=postgres_url).get_trials()
    done = [t.user_attrs["lightgen.job"] for t in trials if t.state == TrialState.COMPLETE]
    assert len(done) == 5 and len(set(done)) == 5
    # the same command again (as a second node would run it) joins the study and finds nothing to do
    res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "5 done, 0 enqueued" in res.stdout + res.stderr


def test_unreachable_storage_is_a_clear_error(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    port = _free_port()  # nothing listens there
    res = subprocess.run([sys.executable, "-m", "lightgen", "sweep", "data-scale", "--preset", "smoke",
                          "--storage", f"postgresql+psycopg2://postgres@127.0.0.1:{port}/x"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "unreachable" in res.stderr
    assert "Traceback" not in res.stderr
