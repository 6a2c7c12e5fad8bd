"""Simulated hosts on one machine (`hosts: netns`): each node gets a network namespace and a UTS namespace
(its own address and hostname), a link to a bridge in a switch namespace, so that the ranks of different
nodes talk over a real network link that a fault can cut (`partition`), and a mount namespace in which its
own node-local disk is mounted (`node_loss` takes the node's processes and that disk).

The node-local disk: node N's is the directory RUN_DIR/node_disks/N on this machine, bind-mounted at
RUN_DIR/node_local inside node N's mount namespace only. Every node's processes see "their" disk under the
same path, as on a cluster where each host has its own /local; the supervisor (outside) sees each node's
under node_disks/, so both stay inside the run directory. A process entering a mount namespace starts at
its root directory, so a node's processes are started through `env --chdir` back into their directory.

Nothing is added to the machine's own network namespace: the veth pairs are created straight into the
run's namespaces, and the addresses (SUBNET.N/24) exist only there. Each namespace is held by a small
holder process that dies with the supervisor (PR_SET_PDEATHSIG); a namespace lives as long as a process is
in it, so a killed run leaves none behind (no `ip netns add` bind mounts to clean up). A node's processes
enter its namespaces with nsenter. Needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN) and iproute2 and util-linux
(ip, nsenter, unshare).

A partition takes the switch side of a node's link down: the node's interface loses its carrier, every
packet to or from it is dropped, its routes and sockets stay. TCP connections ride a short cut out
(measured here: data sent during a 3 s cut arrived 0.6 s after the link came back); a long one stalls
every collective, and hang detection takes over.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from chaos.ownership import lifeline

SUBNET = "10.213.0"
"""Addresses node N gets SUBNET.(N+1): inside the run's own namespaces only, so no clash is possible."""
HEAD_ADDRESS = f"{SUBNET}.254"
"""The head's address, on the bridge: every node reaches it (a private Slurm controller listens there)."""
INTERFACE = "eth0"
"""A node's interface, inside its namespace (what GLOO_SOCKET_IFNAME names)."""
TOOLS = ("ip", "nsenter", "unshare", "mount", "env")
NODE_LOCAL = "node_local"
"""Where a node's processes find their node-local disk: RUN_DIR/node_local (each node sees its own)."""
NODE_DISKS = "node_disks"
"""Where the node-local disks are on this machine: RUN_DIR/node_disks/N."""
ENV_NODE_LOCAL = "CHAOS_NODE_LOCAL"
"""The node-local disk's path, in every launched process's environment (for a workload's arguments)."""
LOSS_WAIT_S = 5.0
"""How long a node loss waits for its SIGKILLed processes to be gone before the disk goes."""


def unavailable_reason() -> str | None:
    """None where simulated hosts can be made here; else why not, in words a user can act on."""
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        return f"hosts: netns needs {', '.join(missing)} (Debian: iproute2, util-linux)"
    if os.geteuid() != 0:
        return "hosts: netns needs root (it creates network namespaces and veth links)"
    probe = subprocess.run(["unshare", "--net", "--uts", "--mount", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"hosts: netns cannot create a network namespace here: {probe.stderr.strip() or probe.returncode}"
    return None


class HostsError(RuntimeError):
    pass


def _holder(hostname: str, disk: Path | None = None, mountpoint: Path | None = None) -> subprocess.Popen:
    """A process that holds new namespaces: a node's (network, hostname, mounts with its disk at
    `mountpoint`) or, without a disk, the head's (network and hostname: the switch, and where a private
    Slurm controller runs)."""
    if disk is None:
        command = ["unshare", "--net", "--uts", "sh", "-c", 'hostname "$1" && exec sleep 2147483647', "holder",
                   hostname]
    else:
        # propagation private: the bind mount stays in this namespace, the machine's mounts never see it
        command = ["unshare", "--net", "--uts", "--mount", "--propagation", "private", "sh", "-c",
                   'hostname "$1" && mount --bind "$2" "$3" && exec sleep 2147483647', "holder", hostname,
                   str(disk), str(mountpoint)]
    return subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            preexec_fn=lifeline.child_setup(os.getpid(), None), start_new_session=True)


@dataclass
class LostNode:
    """What a node loss took: the processes that were in the node, and its disk's contents."""
    killed: list[int]
    """Every pid that was in the node's namespaces (ranks, their agent, anything they started)."""
    survivors: list[int]
    """Still there LOSS_WAIT_S after the SIGKILL (a process stuck in the kernel): the disk went anyway."""
    files: list[str]
    """The lost disk's files, relative to it."""
    bytes: int


@dataclass
class SimulatedHosts:
    nodes: int
    run_dir: Path
    name: str = "chaos"
    """Hostnames: NAME-N for node N, NAME-head for the head."""
    holders: list[subprocess.Popen] = field(default_factory=list)
    switch: subprocess.Popen | None = None
    cut_nodes: set[int] = field(default_factory=set)

    @classmethod
    def create(cls, nodes: int, name: str, run_dir: Path) -> "SimulatedHosts":
        """`nodes` hosts named NAME-N on one switch, each with its node-local disk; raises HostsError (after
        removing what it made)."""
        hosts = cls(nodes, Path(run_dir), name)
        try:
            hosts.mountpoint.mkdir(parents=True, exist_ok=True)
            for node in range(nodes):
                hosts.disk(node).mkdir(parents=True, exist_ok=True)
            hosts.switch = _holder(hosts.head_name)
            hosts.holders = [_holder(f"{name}-{node}", hosts.disk(node), hosts.mountpoint) for node in range(nodes)]
            hosts._wait_for_namespaces()
            hosts._run(None, "link", "add", "br0", "type", "bridge")
            hosts._run(None, "link", "set", "br0", "up")
            hosts._run(None, "addr", "add", f"{HEAD_ADDRESS}/24", "dev", "br0")
            hosts._run(None, "link", "set", "lo", "up")
            for node, holder in enumerate(hosts.holders):
                subprocess.run(["ip", "link", "add", f"h{node}", "netns", str(hosts.switch.pid), "type", "veth",
                                "peer", "name", INTERFACE, "netns", str(holder.pid)],
                               check=True, capture_output=True, text=True)
                hosts._run(None, "link", "set", f"h{node}", "master", "br0", "up")
                hosts._run(node, "addr", "add", f"{hosts.address(node)}/24", "dev", INTERFACE)
                hosts._run(node, "link", "set", INTERFACE, "up")
                hosts._run(node, "link", "set", "lo", "up")
        except (OSError, subprocess.CalledProcessError, HostsError) as error:
            hosts.close()
            detail = getattr(error, "stderr", "") or str(error)
            raise HostsError(f"could not make {nodes} simulated hosts: {detail.strip()}") from error
        return hosts

    def _wait_for_namespaces(self) -> None:
        """A holder is ready once it runs `sleep`: unshare entered the namespaces, and a node's shell set the
        hostname and mounted the disk before exec()ing it."""
        own = os.readlink("/proc/self/ns/net")
        deadline = time.monotonic() + 5.0
        for holder in [self.switch, *self.holders]:
            assert holder is not None
            while True:
                if holder.poll() is not None:
                    raise HostsError(f"a namespace holder exited: {holder.stderr.read().decode() if holder.stderr else ''}")
                try:
                    with open(f"/proc/{holder.pid}/comm") as comm:
                        if os.readlink(f"/proc/{holder.pid}/ns/net") != own and comm.read().strip() == "sleep":
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise HostsError("a namespace holder was not ready within 5 s")
                time.sleep(0.005)

    def _pid(self, node: int | None) -> int:
        holder = self.switch if node is None else self.holders[node]
        assert holder is not None
        return holder.pid

    def _run(self, node: int | None, *ip_args: str) -> None:
        """`ip ARGS` inside a node's namespace (None: the switch's)."""
        subprocess.run(["nsenter", f"--net=/proc/{self._pid(node)}/ns/net", "ip", *ip_args], check=True,
                       capture_output=True, text=True)

    def address(self, node: int) -> str:
        return f"{SUBNET}.{node + 1}"

    @property
    def head_name(self) -> str:
        return f"{self.name}-head"

    @property
    def mountpoint(self) -> Path:
        return self.run_dir / NODE_LOCAL

    def disk(self, node: int) -> Path:
        """Node `node`'s local disk, as this machine (the supervisor, the checks) sees it."""
        return self.run_dir / NODE_DISKS / str(node)

    def enter(self, node: int, cwd: Path | None = None) -> list[str]:
        """The command prefix that runs a program on `node` (its network, hostname and disk), in `cwd`
        (default: ours)."""
        pid = self._pid(node)
        return ["nsenter", f"--net=/proc/{pid}/ns/net", f"--uts=/proc/{pid}/ns/uts", f"--mount=/proc/{pid}/ns/mnt",
                "--", "env", f"--chdir={cwd or os.getcwd()}"]

    def enter_head(self, cwd: Path | None = None) -> list[str]:
        """The command prefix that runs a program on the head (the switch's namespace, on the bridge): a
        login node of the simulated cluster, on no compute node, so no node fault touches it."""
        pid = self._pid(None)
        return ["nsenter", f"--net=/proc/{pid}/ns/net", f"--uts=/proc/{pid}/ns/uts", "--", "env",
                f"--chdir={cwd or os.getcwd()}"]

    def node_of(self, pid: int) -> int | None:
        """The node whose network namespace process `pid` is in (None: none of them)."""
        try:
            namespace = os.readlink(f"/proc/{pid}/ns/net")
        except OSError:
            return None
        for node, holder in enumerate(self.holders):
            if os.readlink(f"/proc/{holder.pid}/ns/net") == namespace:
                return node
        return None

    def processes(self, node: int) -> list[int]:
        """Every process in node `node`'s network namespace but its holder: what the node runs (all of it was
        started by this run, through `enter`: the namespace is the run's own)."""
        holder = self._pid(node)
        namespace = os.readlink(f"/proc/{holder}/ns/net")
        pids = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == holder:
                continue
            try:
                if os.readlink(f"/proc/{entry}/ns/net") == namespace:
                    pids.append(int(entry))
            except OSError:
                continue  # gone meanwhile
        return sorted(pids)

    def lose(self, node: int) -> LostNode:
        """The node dies at once: SIGKILL to every process in it, then (once they are gone, so nothing
        writes on) its disk is emptied, as a replaced machine comes back blank. The namespaces stay: the next
        attempt's processes on this node start on an empty disk."""
        killed, survivors = self._kill_all(node)
        files, size = [], 0
        disk = self.disk(node)
        for path in sorted(disk.rglob("*")):
            if path.is_file() and not path.is_symlink():
                files.append(str(path.relative_to(disk)))
                size += path.stat().st_size
        for child in list(disk.iterdir()):
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
        return LostNode(killed=killed, survivors=survivors, files=files, bytes=size)

    def _kill_all(self, node: int) -> tuple[list[int], list[int]]:
        """SIGKILL to every process in the node's namespaces; (killed, still there after LOSS_WAIT_S)."""
        holder = self._pid(node)
        namespace = os.readlink(f"/proc/{holder}/ns/net")
        pidfds: dict[int, int] = {}
        try:
            for pid in self.processes(node):
                try:
                    pidfd = os.pidfd_open(pid)
                except ProcessLookupError:
                    continue
                # the pidfd pins the process: a pid reused between the listing and here is caught by this check
                try:
                    same = os.readlink(f"/proc/{pid}/ns/net") == namespace
                except OSError:
                    same = False
                if not same:
                    os.close(pidfd)
                    continue
                pidfds[pid] = pidfd
                try:
                    signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + LOSS_WAIT_S
            waiting = dict(pidfds)
            while waiting and time.monotonic() < deadline:
                ready, _, _ = select.select(list(waiting.values()), [], [], 0.05)
                waiting = {pid: fd for pid, fd in waiting.items() if fd not in ready}
        finally:
            for pidfd in pidfds.values():
                os.close(pidfd)
        return sorted(pidfds), sorted(waiting)

    def cut(self, node: int) -> None:
        """Partition `node` from the others: its link's switch side goes down."""
        self._run(None, "link", "set", f"h{node}", "down")
        self.cut_nodes.add(node)

    def heal(self, node: int) -> None:
        self._run(None, "link", "set", f"h{node}", "up")
        self.cut_nodes.discard(node)

    def close(self) -> None:
        """Whatever still runs on a node goes (it can only be the run's: a Slurm step daemon waiting on a
        slurmd that is gone, say), then the holders, and with the last process in each namespace the
        namespace (veths, bridge) too."""
        for node, holder in enumerate(self.holders):
            if holder.poll() is None:
                self._kill_all(node)
        for holder in [*self.holders, self.switch]:
            if holder is None or holder.poll() is not None:
                continue
            try:
                os.killpg(holder.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            holder.wait()
        self.holders, self.switch = [], None
