"""A one-node SLURM cluster on this machine, for the tests marked ``slurm`` and ``make test-slurm``.

    python scripts/slurm_cluster.py start    # install if absent, configure, start, wait for idle
    python scripts/slurm_cluster.py status   # daemons and the node's state; exit 0 when usable
    python scripts/slurm_cluster.py stop     # stop the daemons this script started, by pid

Needs root and a Debian-like system (``apt-get install slurm-wlm munge`` when the daemons are
missing; Debian 12 ships SLURM 22.05). ``start`` writes ``/etc/slurm/slurm.conf`` (one node: this
machine, every CPU, one default partition ``debug``; no accounting, no cgroups) and a munge key
when none exists, starts ``munged`` (as the munge user), ``slurmctld`` and ``slurmd``, and waits
until ``sinfo`` reports the node idle. Every step is idempotent: a running daemon is left alone, a
cluster already idle is reported as such. ``stop`` signals the three daemons by the pids in their
pid files and waits for them to exit; it never kills by name. A slurm.conf this script did not
write is never overwritten (``--force`` does).

This is a test cluster: accounting is off (``sacct`` fails; reprlab reads job states from
``squeue``/``scontrol`` instead), jobs are tracked with ``proctrack/linuxproc`` and not confined
(``task/none``), and ``SlurmUser=root``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

CONF = Path("/etc/slurm/slurm.conf")
MUNGE_KEY = Path("/etc/munge/munge.key")
MARKER = "# written by reprlab scripts/slurm_cluster.py"
PID_FILES = {
    "slurmd": Path("/run/slurmd.pid"),
    "slurmctld": Path("/run/slurmctld.pid"),
    "munged": Path("/run/munge/munged.pid"),
}
STATE_DIRS = ("/var/spool/slurmctld", "/var/spool/slurmd", "/var/log/slurm")
PARTITION = "debug"


def say(message: str) -> None:
    print(f"slurm_cluster: {message}", flush=True)


def hostname() -> str:
    return socket.gethostname().split(".")[0]


def memory_mb() -> int:
    """The node's RealMemory: 80% of this machine's memory, in MB (slurmd refuses a node that
    claims more than it has)."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(int(line.split()[1]) / 1024 * 0.8)
    return 1000


def config_text(cpus: int, memory: int) -> str:
    host = hostname()
    return f"""{MARKER}
ClusterName=reprlab
SlurmctldHost={host}
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
SlurmctldPidFile={PID_FILES["slurmctld"]}
SlurmdPidFile={PID_FILES["slurmd"]}
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=300
KillWait=5
Waittime=0
NodeName={host} CPUs={cpus} RealMemory={memory} State=UNKNOWN
PartitionName={PARTITION} Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


def run(*command: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, check=check, timeout=600)


def install() -> None:
    if all(shutil.which(name) for name in ("slurmctld", "slurmd", "munged", "sbatch")):
        return
    if os.geteuid() != 0:
        sys.exit("slurm_cluster: SLURM is not installed; as root: apt-get install slurm-wlm munge")
    say("installing slurm-wlm and munge (apt-get)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "slurm-wlm", "munge"], check=True, env=env)


def pid_of(name: str) -> int | None:
    """The pid in ``name``'s pid file when that process is alive, else None."""
    try:
        pid = int(PID_FILES[name].read_text().split()[0])
        os.kill(pid, 0)
    except (OSError, ValueError, IndexError):
        return None
    try:  # a recycled pid would belong to another program
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None
    return pid if comm == name else None


def write_config(force: bool) -> None:
    text = config_text(os.cpu_count() or 1, memory_mb())
    if CONF.exists():
        old = CONF.read_text()
        if old == text:
            return
        if MARKER not in old and not force:
            sys.exit(
                f"slurm_cluster: {CONF} exists and was not written by this script; "
                "pass --force to replace it"
            )
    CONF.parent.mkdir(parents=True, exist_ok=True)
    CONF.write_text(text)
    say(f"wrote {CONF}")


def ensure_munge_key() -> None:
    if MUNGE_KEY.exists():
        return
    MUNGE_KEY.parent.mkdir(parents=True, exist_ok=True)
    MUNGE_KEY.write_bytes(os.urandom(1024))
    shutil.chown(MUNGE_KEY, "munge", "munge")
    MUNGE_KEY.chmod(0o400)
    say(f"wrote a new munge key {MUNGE_KEY}")


def start_daemons() -> None:
    for directory in STATE_DIRS:
        Path(directory).mkdir(parents=True, exist_ok=True)
    run_munge = Path("/run/munge")
    run_munge.mkdir(parents=True, exist_ok=True)
    shutil.chown(run_munge, "munge", "munge")
    if pid_of("munged") is None:
        run("runuser", "-u", "munge", "--", "munged", "--force")
        say("started munged")
    if pid_of("slurmctld") is None:
        run("slurmctld")
        say("started slurmctld")
    if pid_of("slurmd") is None:
        run("slurmd")
        say("started slurmd")


def node_state() -> str | None:
    """The node's state as ``sinfo`` reports it (``idle``, ``mixed``, ``down*``...), or None."""
    try:
        result = run("sinfo", "-h", "-N", "-o", "%T", check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = result.stdout.split()
    return lines[0] if result.returncode == 0 and lines else None


def wait_usable(timeout: float) -> str:
    deadline = time.monotonic() + timeout
    resumed = False
    while True:
        state = node_state()
        if state in ("idle", "mixed", "allocated", "completing"):
            return state
        if state is not None and state.startswith(("down", "drain")) and not resumed:
            run("scontrol", "update", f"nodename={hostname()}", "state=resume", check=False)
            resumed = True
        if time.monotonic() > deadline:
            sys.exit(
                f"slurm_cluster: the node is {state or 'not reported'} after {timeout:.0f} s; "
                "see /var/log/slurm/slurmctld.log and slurmd.log"
            )
        time.sleep(0.5)


def start(args: argparse.Namespace) -> int:
    started = time.monotonic()
    install()
    if os.geteuid() != 0:
        sys.exit("slurm_cluster: starting the daemons needs root")
    write_config(args.force)
    ensure_munge_key()
    start_daemons()
    state = wait_usable(args.timeout)
    say(f"node {hostname()} {state} after {time.monotonic() - started:.1f} s")
    return 0


def stop(args: argparse.Namespace) -> int:
    for name in ("slurmd", "slurmctld", "munged"):
        pid = pid_of(name)
        if pid is None:
            continue
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while pid_of(name) == pid and time.monotonic() < deadline:
            time.sleep(0.2)
        if pid_of(name) == pid:
            os.kill(pid, signal.SIGKILL)
        say(f"stopped {name} (pid {pid})")
    return 0


def status(args: argparse.Namespace) -> int:
    pids = {name: pid_of(name) for name in PID_FILES}
    for name, pid in pids.items():
        say(f"{name}: {'pid ' + str(pid) if pid else 'not running'}")
    state = node_state() if all(pids.values()) else None
    say(f"node {hostname()}: {state or 'not reported'}")
    return 0 if state in ("idle", "mixed", "allocated", "completing") else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["start", "stop", "status"])
    parser.add_argument("--timeout", type=float, default=60, help="seconds to wait for idle")
    parser.add_argument("--force", action="store_true", help="replace a foreign slurm.conf")
    args = parser.parse_args()
    return {"start": start, "stop": stop, "status": status}[args.action](args)


if __name__ == "__main__":
    raise SystemExit(main())
