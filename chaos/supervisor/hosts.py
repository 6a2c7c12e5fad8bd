"""Simulated hosts on one machine (`hosts: netns`): each node gets a network namespace and a UTS namespace
(its own address and hostname), and a link to a bridge in a switch namespace, so that the ranks of
different nodes talk over a real network link that a fault can cut (`partition`).

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
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field

from chaos.supervisor import lifeline

SUBNET = "10.213.0"
"""Addresses node N gets SUBNET.(N+1): inside the run's own namespaces only, so no clash is possible."""
INTERFACE = "eth0"
"""A node's interface, inside its namespace (what GLOO_SOCKET_IFNAME names)."""
TOOLS = ("ip", "nsenter", "unshare")


def unavailable_reason() -> str | None:
    """None where simulated hosts can be made here; else why not, in words a user can act on."""
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        return f"hosts: netns needs {', '.join(missing)} (Debian: iproute2, util-linux)"
    if os.geteuid() != 0:
        return "hosts: netns needs root (it creates network namespaces and veth links)"
    probe = subprocess.run(["unshare", "--net", "--uts", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"hosts: netns cannot create a network namespace here: {probe.stderr.strip() or probe.returncode}"
    return None


class HostsError(RuntimeError):
    pass


def _holder(hostname: str | None) -> subprocess.Popen:
    command = ["unshare", "--net"] + (["--uts", "sh", "-c", f"hostname {hostname} && exec sleep 2147483647"]
                                      if hostname else ["sleep", "2147483647"])
    return subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            preexec_fn=lifeline.child_setup(os.getpid(), None), start_new_session=True)


@dataclass
class SimulatedHosts:
    nodes: int
    holders: list[subprocess.Popen] = field(default_factory=list)
    switch: subprocess.Popen | None = None
    cut_nodes: set[int] = field(default_factory=set)

    @classmethod
    def create(cls, nodes: int, name: str) -> "SimulatedHosts":
        """`nodes` hosts named NAME-N on one switch; raises HostsError (after removing what it made)."""
        hosts = cls(nodes)
        try:
            hosts.switch = _holder(None)
            hosts.holders = [_holder(f"{name}-{node}") for node in range(nodes)]
            hosts._wait_for_namespaces()
            hosts._run(None, "link", "add", "br0", "type", "bridge")
            hosts._run(None, "link", "set", "br0", "up")
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
        """unshare has entered its namespaces once it exec()ed what it runs (its namespace is no longer ours)."""
        own = os.readlink("/proc/self/ns/net")
        deadline = time.monotonic() + 5.0
        for holder in [self.switch, *self.holders]:
            assert holder is not None
            while True:
                if holder.poll() is not None:
                    raise HostsError(f"a namespace holder exited: {holder.stderr.read().decode() if holder.stderr else ''}")
                try:
                    if os.readlink(f"/proc/{holder.pid}/ns/net") != own:
                        break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise HostsError("a namespace holder did not enter its namespace within 5 s")
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

    def enter(self, node: int) -> list[str]:
        """The command prefix that runs a program on `node` (its network and hostname)."""
        pid = self._pid(node)
        return ["nsenter", f"--net=/proc/{pid}/ns/net", f"--uts=/proc/{pid}/ns/uts", "--"]

    def cut(self, node: int) -> None:
        """Partition `node` from the others: its link's switch side goes down."""
        self._run(None, "link", "set", f"h{node}", "down")
        self.cut_nodes.add(node)

    def heal(self, node: int) -> None:
        self._run(None, "link", "set", f"h{node}", "up")
        self.cut_nodes.discard(node)

    def close(self) -> None:
        """The holders go, and with the last process in each namespace the namespace (veths, bridge) too."""
        for holder in [*self.holders, self.switch]:
            if holder is None or holder.poll() is not None:
                continue
            try:
                os.killpg(holder.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            holder.wait()
        self.holders, self.switch = [], None
