"""Simulated hosts (`hosts: netns`): network namespaces on a bridge, one per node, and the partition fault
that cuts a node's link. The end-to-end multi-host run (torchrun over the links, a partition ridden out and
one torn down as a hang, a straggler and a kill, resumed bitwise) is the shipped scenario multihost_faults.yaml
(tests/test_scenarios_cpu.py; `pytest -k multihost` selects both)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from chaos.errors import InputError
from chaos.scenario import load_scenario_text
from chaos.supervisor import hosts

NETNS = hosts.unavailable_reason()

SERVER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 5555)); s.listen()
print("listening", flush=True)
while True:
    c, _ = s.accept(); c.sendall(socket.gethostname().encode()); c.close()
"""
CLIENT = """
import socket, sys
try:
    print(socket.create_connection((sys.argv[1], 5555), timeout=float(sys.argv[2])).recv(100).decode())
except OSError as error:
    print("unreachable", type(error).__name__)
"""


@pytest.mark.skipif(NETNS is not None, reason=str(NETNS))
def test_multihost_simulated_hosts_talk_over_their_links_and_a_cut_drops_them():
    made = hosts.SimulatedHosts.create(2, "chaos-test")
    try:
        server = subprocess.Popen([*made.enter(0), sys.executable, "-c", SERVER, made.address(0)],
                                  stdout=subprocess.PIPE, text=True)
        assert server.stdout is not None and server.stdout.readline().strip() == "listening"

        def ask(timeout: float) -> str:
            return subprocess.run([*made.enter(1), sys.executable, "-c", CLIENT, made.address(0), str(timeout)],
                                  capture_output=True, text=True, check=True).stdout.strip()

        assert ask(5) == "chaos-test-0"  # node 1 reached node 0 by its address; node 0 has its own hostname
        made.cut(1)
        assert ask(1).startswith("unreachable")
        made.heal(1)
        assert ask(5) == "chaos-test-0"
        own = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True).stdout
        assert hosts.SUBNET not in own  # the machine's own namespace never saw the run's addresses
    finally:
        server.kill()
        server.wait()
        holders = [*made.holders, made.switch]
        made.close()
    assert len(holders) == 3 and all(holder.poll() is not None for holder in holders)  # the namespaces went with them


WORKLOAD = "workload: {preset: tiny_cpu, world_size: 4, tensor_parallel: 2, nodes: 2, train_iters: 12, save_interval: 4}\n"


@pytest.mark.parametrize("body, field, expected", [
    ("launcher: direct\nhosts: netns\n", "hosts", "needs launcher: torchrun with workload nodes >= 2"),
    ("launcher: torchrun\nfaults:\n  - {at: {step: 3, phase: forward}, target: {node: 1}, partition: 3}\n",
     "faults[0].partition", "only hosts: netns gives each node one"),
    ("launcher: torchrun\nhosts: netns\nfaults:\n  - {at: {step: 3, phase: forward}, target: {rank: 1}, partition: 3}\n",
     "faults[0].target", "a partition cuts a whole node off"),
    ("launcher: torchrun\nhosts: cloud\n", "hosts", "expected one of ['local', 'netns']"),
])
def test_multihost_settings_are_validated_naming_the_field(body, field, expected):
    with pytest.raises(InputError) as raised:
        load_scenario_text(WORKLOAD + body, "multihost.yaml")
    assert f"multihost.yaml: {field}: " in str(raised.value) and expected in str(raised.value)


def test_multihost_scenario_round_trips_with_its_hosts_and_partitions():
    import yaml

    from chaos.scenario import load_scenario_mapping, scenario_to_mapping

    scenario = load_scenario_text(WORKLOAD + "launcher: torchrun\nhosts: netns\nfaults:\n"
                                  "  - {at: {step: 3, phase: backward}, target: {node: 1}, partition: 2.5}\n", "m.yaml")
    assert scenario.hosts == "netns" and scenario.faults[0].action.duration_s == 2.5
    mapping = scenario_to_mapping(scenario)
    assert mapping["hosts"] == "netns" and mapping["faults"][0]["partition"] == 2.5
    assert load_scenario_mapping(yaml.safe_load(yaml.safe_dump(mapping)), "copy.yaml") == scenario
