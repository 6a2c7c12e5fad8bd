"""The wire between the controller (the chaos supervisor) and the agent on each host: newline-delimited JSON
over one TCP connection per agent, opened by the agent, authenticated by the run token (its first message
carries it; nothing else of a connection is acted on before, and a hello must come within seconds).

    agent -> controller   {"type": "agent_hello", "token", "node", "attempt", "host", "pid", "address", "interface",
                           "port", "job_id", "swept": [{"pid", "command", "alive_after_sigkill"}],
                           "strangers": [{"pid", "uid", "command", "why"}]}
                          (swept: what of the run it found on its host before starting anything: a process of an
                           earlier attempt whose agent was lost; killed. strangers: another user's processes
                           carrying the run's token: not the run's, never signalled)
    controller -> agent   {"type": "welcome", "run_id"} or {"type": "refused", "reason"}   (then it closes)
                          (run_id: the run's public name, for this host's cgroup; the token is never a name)
    controller -> agent   {"type": "clock", "id"}          -> {"type": "reply", "id", "mono", "wall"}
    controller -> agent   {"type": "launch", "id", "attempt",
                           "ranks": [{"role": "rank" | "agent", "rank", "argv", "env", "cwd", "output"}]}
                                                           -> {"type": "reply", "id", "cgroup", "error",
                                                               "launched": [{"role", "rank", "pid"}]}
    controller -> agent   {"type": "adopt", "id", "pid", "rank", "exit_file", "connection"}
                                                                  -> {"type": "reply", "id", "adopted", "reason"}
                           (a rank that said hello: a worker of a torchrun the agent started, or a Slurm task
                            carrying the run's token and this attempt, on this host; and the process that
                            holds the hello's connection: {"rank_end": [address, port], "controller_end": [...]})
    controller -> agent   {"type": "vouch", "id", "pid", "connection"}   -> {"type": "reply", "id", "holds", "reason"}
                           (whether `pid` on this host holds that connection: a hello's pid is only a claim)
    controller -> agent   {"type": "signal", "id", "pid", "signal"}    -> {"type": "reply", "id", "delivered"}
    agent -> controller   {"type": "exit", "rank", "pid", "returncode", "signal"}   (whenever a rank exits)
    controller -> agent   {"type": "teardown", "id", "grace_s"}  -> {"type": "reply", "id", "sigterm", "sigkill",
                                                                     "survivors", "cgroup_killed", "leaked",
                                                                     "strangers", "duration_s"}
                                                                    (then the agent exits)

A rank's `env` holds only what chaos sets (its RANK, the run's variables, the workload's env): the agent
starts it with its own environment (Slurm exported the controller's) plus these. An agent whose controller
goes away (EOF) kills everything it started and exits: nothing outlives the controller on any host.

Clocks: `mono` and `wall` are the agent's CLOCK_MONOTONIC and time.time() when it answered. The controller
takes several samples and keeps the one with the shortest round trip: offset = agent clock - midpoint of
the controller's send and receive, known to within +-rtt/2. Nothing assumes two hosts' clocks agree.

Pure standard library: the agent imports this before anything heavy.
"""

from __future__ import annotations

from dataclasses import dataclass

from chaos import control

ENV_AGENT_TOKEN = "CHAOS_AGENT_TOKEN"
"""The run token as the agent gets it. Not CHAOS_RUN_TOKEN: the token sweep kills whatever carries that, and
srun (which exports its environment to the agents) may run on one of the nodes (chaos inside an sbatch
allocation), where an agent's sweep must not find it."""
ENV_CONTROLLER = "CHAOS_CONTROLLER"
"""host:port of the controller's agent listener, for agents started by hand or by a batch script."""
CLOCK_SAMPLES = 8


def split_address(text: str) -> tuple[str, int]:
    """'host:port' -> (host, port); ValueError with what was expected."""
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def token_matches(offered: object, expected: str) -> bool:
    return control.token_matches(offered, expected)


@dataclass(frozen=True)
class ClockSample:
    sent: float
    """controller clock when the request left"""
    received: float
    """controller clock when the reply came"""
    remote: float
    """agent clock when it answered"""

    @property
    def rtt_s(self) -> float:
        return self.received - self.sent

    @property
    def offset_s(self) -> float:
        """agent clock - controller clock, assuming the answer was taken halfway through the round trip."""
        return self.remote - (self.sent + self.received) / 2


def best_offset(samples: list[ClockSample]) -> ClockSample:
    """The sample with the shortest round trip: the tightest bound on the offset (NTP's clock filter)."""
    if not samples:
        raise ValueError("no clock samples")
    return min(samples, key=lambda sample: sample.rtt_s)
