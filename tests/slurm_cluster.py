"""A real single-node Slurm cluster for tests: munged, slurmctld and slurmd from Debian's packages
(``slurm-wlm``, ``munge``), configured in a temp folder, bound to 127.0.0.1, no cgroups, fast polling.

``start_cluster(base)`` returns a :class:`Cluster` (its ``env`` points ``SLURM_CONF`` at the temp config, so
``sbatch``/``squeue``/``scancel`` and submitit talk to it), or raises :class:`Unavailable` with the reason.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

BINARIES = ("slurmctld", "slurmd", "munged", "sbatch", "squeue", "scancel", "scontrol")


class Unavailable(RuntimeError):
    """Slurm cannot run here (with the reason)."""


def _find(name: str) -> str | None:
    return shutil.which(name) or next((str(p) for p in (Path("/usr/sbin") / name, Path("/sbin") / name) if p.exists()), None)


def missing_binaries() -> list[str]:
    return [b for b in BINARIES if _find(b) is None]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Cluster:
    base: Path
    env: dict[str, str]
    partition: str = "debug"
    procs: list[subprocess.Popen] = field(default_factory=list)

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run([_find(cmd[0]) or cmd[0], *cmd[1:]], env=self.env, capture_output=True, text=True,
                              timeout=60, check=check)

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in reversed(self.procs):
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)

    def logs(self) -> str:
        out = []
        for f in sorted(self.base.glob("*.log")):
            out.append(f"== {f.name}\n{f.read_text(errors='replace')[-2000:]}")
        return "\n".join(out)


def start_cluster(base: Path, cpus: int | None = None) -> Cluster:
    if os.geteuid() != 0:
        raise Unavailable("not root: slurmd must run as root to launch jobs")
    missing = missing_binaries()
    if missing:
        raise Unavailable(f"Slurm binaries not installed ({', '.join(missing)}): apt-get install slurm-wlm munge")
    base.mkdir(parents=True, exist_ok=True)
    for d in ("spool", "state", "munge"):
        (base / d).mkdir(exist_ok=True)
    os.chmod(base / "munge", 0o700)
    key = base / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    os.chmod(key, 0o400)
    sock = base / "munge" / "munge.socket"
    host = socket.gethostname().split(".")[0]
    cpus = cpus or os.cpu_count() or 1
    ctl_port, d_port = _free_port(), _free_port()
    conf = base / "slurm.conf"
    conf.write_text(f"""\
ClusterName=lightgen-test
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctl_port}
SlurmdPort={d_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={sock},cred_expire=10
StateSaveLocation={base / 'state'}
SlurmdSpoolDir={base / 'spool'}
SlurmctldPidFile={base / 'slurmctld.pid'}
SlurmdPidFile={base / 'slurmd.pid'}
SlurmctldLogFile={base / 'slurmctld.log'}
SlurmdLogFile={base / 'slurmd.log'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SwitchType=switch/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/builtin
SchedulerParameters=sched_interval=1,sched_min_interval=100000,batch_sched_delay=0
ReturnToService=2
MessageTimeout=5
SlurmctldTimeout=10
SlurmdTimeout=30
InactiveLimit=0
KillWait=2
MinJobAge=300
OverTimeLimit=0
Waittime=0
SlurmctldParameters=enable_configless
SlurmdParameters=config_overrides
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=1000 State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:8
""")
    env = {**os.environ, "SLURM_CONF": str(conf)}
    cluster = Cluster(base, env)
    try:
        munged = _find("munged")
        cluster.procs.append(subprocess.Popen(
            [munged, "-F", "--force", f"--key-file={key}", f"--socket={sock}", f"--pid-file={base / 'munge' / 'munged.pid'}",
             f"--log-file={base / 'munged.log'}", f"--seed-file={base / 'munge' / 'seed'}"],
            stdout=subprocess.DEVNULL, stderr=open(base / "munged-out.log", "w")))
        _wait(lambda: sock.exists(), 15, "munged did not create its socket", cluster)
        cluster.procs.append(subprocess.Popen([_find("slurmctld"), "-D", "-i", "-f", str(conf)], env=env,
                                              stdout=subprocess.DEVNULL, stderr=open(base / "slurmctld-out.log", "w")))
        _wait(lambda: cluster.run("scontrol", "ping", check=False).stdout.count("UP") > 0, 30,
              "slurmctld did not answer scontrol ping", cluster)
        cluster.procs.append(subprocess.Popen([_find("slurmd"), "-D", "-f", str(conf), "-N", host], env=env,
                                              stdout=subprocess.DEVNULL, stderr=open(base / "slurmd-out.log", "w")))

        def node_idle() -> bool:
            out = cluster.run("sinfo", "-h", "-o", "%T", check=False).stdout
            return "idle" in out or "mix" in out or "alloc" in out

        _wait(node_idle, 45, "slurmd did not register its node", cluster)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _wait(pred, timeout: float, what: str, cluster: Cluster) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        try:
            if pred():
                return
        except (OSError, subprocess.SubprocessError):
            pass
        for p in cluster.procs:
            if p.poll() is not None:
                raise Unavailable(f"{what}: {Path(p.args[0]).name} exited with {p.returncode}\n{cluster.logs()}")
        time.sleep(0.3)
    raise Unavailable(f"{what} within {timeout:.0f} s\n{cluster.logs()}")
