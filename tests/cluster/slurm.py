"""A throwaway Slurm cluster on loopback, for tests.

One slurmctld, one private munged and N slurmd daemons run on this machine as the current user
(root or not). Each slurmd plays a node (node1, node2, ...) with its own port and spool directory,
so ``srun -w node2 ...`` runs a step "on node2" — really on this machine, but with the node's
SLURMD_NODENAME, as a multi-host launch would see it. Install Slurm with scripts/install_slurm.sh.

    with SlurmCluster(tmp_path, nodes=3) as cluster:
        out = cluster.run(["srun", "-N1", "-w", "node2", "printenv", "SLURMD_NODENAME"]).stdout
        agent = cluster.popen(["srun", "-N1", "-w", "node1", "sleep", "30"])  # killed on exit

Every process the cluster starts (daemons, srun, job steps and their tasks) carries this
cluster's SLURM_CONF in its environment; stop() kills each of them and their children, so no
process outlives the ``with`` block.
"""

from __future__ import annotations

import ctypes
import getpass
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

PARTITION = "debug"
# Slurm client commands retry for about a minute when the controller is unreachable: every
# command gets a timeout, so a broken cluster fails a test instead of hanging it.
COMMAND_TIMEOUT = 30.0
# Environment that makes srun believe it already runs inside a job (as when pytest itself is a
# Slurm job step): dropped, so that commands talk to this cluster only.
_INHERITED_PREFIXES = ("SLURM_", "SBATCH_", "SALLOC_", "SRUN_")

_libc = ctypes.CDLL(None, use_errno=True)
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # If the test process is killed outright (no `with` exit), its daemons go with it. The
    # signal comes when the starting *thread* ends: only used when started on the main thread.
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _free_ports(count: int) -> list[int]:
    # Held open together so the kernel hands out distinct ports; slurmd binds all addresses.
    socks = [socket.socket() for _ in range(count)]
    try:
        for s in socks:
            s.bind(("", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class SlurmError(RuntimeError):
    pass


class SlurmCluster:
    def __init__(self, workdir: str | os.PathLike, nodes: int = 2, cpus_per_node: int = 4):
        self.workdir = Path(workdir).resolve()
        self.nodes = [f"node{i}" for i in range(1, nodes + 1)]
        self.cpus_per_node = cpus_per_node
        self.conf = self.workdir / "slurm.conf"
        self.logs = self.workdir / "log"
        # Unix sockets (munged's, slurmstepd's in the spool) must fit in 108 bytes, which a
        # pytest tmp_path does not promise: they live in a short directory under /tmp instead.
        self._sockdir: Path | None = None
        self._daemons: dict[str, subprocess.Popen] = {}
        env = {k: v for k, v in os.environ.items() if not k.startswith(_INHERITED_PREFIXES)}
        self.env = {**env, "SLURM_CONF": str(self.conf)}

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> "SlurmCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self, timeout: float = 30.0) -> "SlurmCluster":
        tools = ("munged", "slurmctld", "slurmd", "srun", "sinfo")
        missing = [tool for tool in tools if not shutil.which(tool)]
        if missing:
            raise SlurmError(f"not installed: {', '.join(missing)} (run scripts/install_slurm.sh)")
        try:
            self._write_config()
            self._spawn("munged", ["munged", "--foreground", "--force", *self._munge_args()])
            self._wait_for(lambda: (self._sockdir / "munge.sock").exists(), 5.0, "munged socket")
            self._spawn("slurmctld", ["slurmctld", "-D", "-i", "-f", str(self.conf)])
            # sinfo blocks for seconds on a controller that is not listening yet: wait for the
            # port first, which also notices at once a slurmctld that died.
            self._wait_for(self._controller_listens, 10.0, "slurmctld to listen")
            for node in self.nodes:
                (self._sockdir / node).mkdir()
                self._spawn(node, ["slurmd", "-D", "-N", node, "-f", str(self.conf)])
            self._wait_for(self._all_idle, timeout, f"nodes {self.nodes} idle in sinfo")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Kill every process of this cluster: daemons first (so that no new step starts), then
        srun clients, job steps and their tasks."""
        deadline = time.monotonic() + timeout
        for proc in self._daemons.values():
            if proc.poll() is None:
                proc.kill()
        for proc in self._daemons.values():
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        while (pids := self.pids()) and time.monotonic() < deadline:
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.05)
        if self._sockdir is not None:
            shutil.rmtree(self._sockdir, ignore_errors=True)
            self._sockdir = None
        if pids := self.pids():
            raise SlurmError(f"processes left after stopping the cluster: {pids}")

    # -- commands ----------------------------------------------------------------------------

    def run(self, args: list[str], timeout: float = COMMAND_TIMEOUT, check: bool = True,
            **kwargs) -> subprocess.CompletedProcess:
        """Run a Slurm command (srun, sinfo, squeue, ...) against this cluster and return its
        completed process, with text stdout/stderr."""
        result = subprocess.run(args, env=self.env, capture_output=True, text=True,
                                timeout=timeout, **kwargs)
        if check and result.returncode != 0:
            raise SlurmError(f"{args} exited {result.returncode}: {result.stderr.strip()}")
        return result

    def popen(self, args: list[str], **kwargs) -> subprocess.Popen:
        """Start a command in the background (e.g. ``srun -w node1 forge agent``); stop() kills
        it and its job step if it is still running."""
        kwargs.setdefault("stdout", subprocess.DEVNULL)
        kwargs.setdefault("stderr", subprocess.DEVNULL)
        return subprocess.Popen(args, env=self.env, start_new_session=True, **kwargs)

    def node_states(self, timeout: float = 5.0) -> dict[str, str]:
        """{"node1": "idle", ...} as sinfo reports them."""
        out = self.run(["sinfo", "--noheader", "--Node", "--format=%N %T"], timeout=timeout).stdout
        return dict(line.split() for line in out.splitlines())

    def pids(self) -> list[int]:
        """Live processes of this cluster: those with its SLURM_CONF in their environment and
        all their descendants (a task may have scrubbed its environment)."""
        marker = f"SLURM_CONF={self.conf}".encode()
        children: dict[int, list[int]] = {}
        ours = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                environ = (entry / "environ").read_bytes()
            except OSError:  # exited meanwhile, or not ours to read
                continue
            if stat[stat.rindex(")") + 2] == "Z":  # zombies are dead already
                continue
            pid, ppid = int(entry.name), int(stat[stat.rindex(")") + 2:].split()[1])
            children.setdefault(ppid, []).append(pid)
            if marker in environ.split(b"\0"):
                ours.append(pid)
        found, todo = set(), list(ours)
        while todo:
            pid = todo.pop()
            if pid not in found and pid != os.getpid():
                found.add(pid)
                todo.extend(children.get(pid, []))
        return sorted(found)

    def log(self, name: str) -> str:
        """A daemon's output: "munged", "slurmctld" or a node name."""
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # -- internals ---------------------------------------------------------------------------

    def _munge_args(self) -> list[str]:
        d = self._sockdir
        return [f"--socket={d}/munge.sock", f"--key-file={self.workdir}/munge.key",
                f"--pid-file={d}/munged.pid", f"--seed-file={d}/munged.seed"]

    def _write_config(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        (self.workdir / "state").mkdir(exist_ok=True)
        self._sockdir = Path(tempfile.mkdtemp(prefix="slurm-"))
        self._sockdir.chmod(0o755)  # munged wants its socket reachable by every user
        key = self.workdir / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)  # munged refuses a key that others can read

        user = getpass.getuser()
        self._ctld_port, *node_ports = _free_ports(1 + len(self.nodes))
        lines = [
            "ClusterName=forgetest",
            # The controller is named localhost: the config does not depend on the hostname.
            "SlurmctldHost=localhost(127.0.0.1)",
            f"SlurmctldPort={self._ctld_port}",
            f"SlurmUser={user}",
            f"SlurmdUser={user}",
            # Munge, Slurm's standard auth, works with every version (auth/none is a testing
            # plugin that not every build ships); this cluster's munged has its own key.
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={self._sockdir}/munge.sock",
            f"StateSaveLocation={self.workdir}/state",
            f"SlurmdSpoolDir={self._sockdir}/%n",
            f"SlurmctldPidFile={self._sockdir}/slurmctld.pid",
            f"SlurmdPidFile={self._sockdir}/slurmd.%n.pid",
            # No cgroups: processes are tracked by parent pid, tasks are not bound to CPUs.
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "MpiDefault=none",
            "MailProg=/bin/true",
            "SchedulerType=sched/builtin",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            # Nodes declare more CPUs than a small CI machine has; slurmd trusts the config.
            "SlurmdParameters=config_overrides",
            "ReturnToService=2",
            "KillWait=1",
        ]
        for node, port in zip(self.nodes, node_ports):
            # Every node is this machine; the port tells the controller which slurmd is which.
            lines.append(f"NodeName={node} NodeHostname=localhost NodeAddr=127.0.0.1 Port={port}"
                         f" CPUs={self.cpus_per_node} State=UNKNOWN")
        lines.append(f"PartitionName={PARTITION} Nodes=ALL Default=YES MaxTime=INFINITE State=UP")
        self.conf.write_text("\n".join(lines) + "\n")

    def _spawn(self, name: str, args: list[str]) -> None:
        # Foreground daemons (-D / --foreground) log to stderr: one file per daemon.
        on_main_thread = threading.current_thread() is threading.main_thread()
        with open(self.logs / f"{name}.log", "wb") as out:
            self._daemons[name] = subprocess.Popen(
                args, env=self.env, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                start_new_session=True, preexec_fn=_die_with_parent if on_main_thread else None)

    def _controller_listens(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self._ctld_port), timeout=1).close()
            return True
        except OSError:
            return False

    def _all_idle(self) -> bool:
        try:
            states = self.node_states(timeout=2)
        except (SlurmError, subprocess.TimeoutExpired):
            return False
        return all(states.get(node) == "idle" for node in self.nodes)

    def _wait_for(self, ready, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            dead = [f"{n} exited {p.returncode}" for n, p in self._daemons.items()
                    if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                why = ", ".join(dead) or f"timed out after {timeout:.0f} s"
                raise SlurmError(f"waiting for {what}: {why}\n{self._log_tails()}")
            time.sleep(0.05)

    def _log_tails(self, lines: int = 8) -> str:
        return "\n".join(f"--- {name}.log, last lines:\n"
                         + "\n".join(self.log(name).splitlines()[-lines:])
                         for name in self._daemons)
