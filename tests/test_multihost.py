"""Simulated hosts (`hosts: netns`): network namespaces on a bridge, one per node, each with its node-local
disk; the partition fault that cuts a node's link and the node loss that takes its processes and disk. The
end-to-end multi-host run (torchrun over the links, a straggler, a partition ridden out, a kill, a partition
torn down as a hang and a node loss, resumed bitwise) is the shipped scenario multihost_faults.yaml
(tests/test_scenarios_cpu.py); a job keeping its checkpoints on node-local disks is caught here.
`pytest -k multihost` selects them all."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from chaos.errors import InputError
from chaos.scenario import load_scenario_text
from chaos.ownership import lifeline
from chaos.supervisor.hosts import netns as hosts, slurm, slurm_task

NETNS = hosts.unavailable_reason()
SLURM = NETNS or slurm.unavailable_reason()

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
def test_multihost_simulated_hosts_talk_over_their_links_and_a_cut_drops_them(tmp_path):
    made = hosts.SimulatedHosts.create(2, "chaos-test", tmp_path)
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
    ("launcher: direct\nhosts: netns\n", "hosts", "needs launcher: torchrun or slurm with workload nodes >= 2"),
    ("launcher: torchrun\nfaults:\n  - {at: {step: 3, phase: forward}, target: {node: 1}, partition: 3}\n",
     "faults[0].partition", "only hosts: netns gives each node a network link"),
    ("launcher: torchrun\nhosts: netns\nfaults:\n  - {at: {step: 3, phase: forward}, target: {rank: 1}, partition: 3}\n",
     "faults[0].target", "a partition acts on a whole node"),
    ("launcher: torchrun\nfaults:\n  - {at: {step: 3, phase: forward}, target: {node: 1}, node_loss: true}\n",
     "faults[0].node_loss", "only hosts: netns gives each node a local disk"),
    ("launcher: torchrun\nhosts: netns\nfaults:\n  - {at: {step: 3, phase: forward}, target: all, node_loss: true}\n",
     "faults[0].target", "a node_loss acts on a whole node: expected {node: N}, got all"),
    ("launcher: torchrun\nhosts: netns\nfaults:\n  - {at: {step: 3, phase: forward}, target: {node: 1}, node_loss: 1}\n",
     "faults[0].node_loss", "expected true"),
    ("launcher: torchrun\nhosts: cloud\n", "hosts", "expected one of ['local', 'netns', 'cluster']"),
    ("launcher: slurm\n", "hosts", "runs either on the Slurm cluster this machine submits to (hosts: cluster)"),
    ("launcher: direct\nhosts: cluster\n", "hosts", "needs launcher: slurm or torchrun with workload nodes >= 2"),
    ("launcher: slurm\nhosts: cluster\nfaults:\n  - {at: {step: 3, phase: forward}, target: {node: 1}, partition: 3}\n",
     "faults[0].partition", "never to a real cluster's nodes"),
    ("launcher: slurm\nhosts: cluster\nfaults:\n  - {at: {step: 3, phase: forward}, target: {node: 1}, "
     "straggler: {cpus: 0.5, duration_s: 2}}\n", "faults[0].straggler", "only to simulated hosts (hosts: netns)"),
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


def test_multihost_node_local_checkpoints_need_simulated_hosts():
    body = WORKLOAD.replace("}", ", checkpoint_storage: node_local}") + "launcher: torchrun\n"
    with pytest.raises(InputError) as raised:
        load_scenario_text(body, "local.yaml")
    assert "local.yaml: workload.checkpoint_storage: node-local storage needs a disk per node" in str(raised.value)


SLEEPER = """
import os, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])  # a process it started
open("node_local/state.bin", "wb").write(b"x" * 1000)
os.makedirs("node_local/checkpoints/.tmp_iter_0000008", exist_ok=True)
open("node_local/checkpoints/.tmp_iter_0000008/__2_0.distcp", "wb").write(b"y" * 24)
print(os.getcwd(), child.pid, flush=True)
time.sleep(600)
"""


@pytest.mark.skipif(NETNS is not None, reason=str(NETNS))
def test_multihost_node_loss_takes_every_process_of_the_node_and_its_disk_only(tmp_path):
    made = hosts.SimulatedHosts.create(2, "chaos-test", tmp_path)
    started = []
    try:
        for node in (0, 1):
            started.append(subprocess.Popen([*made.enter(node, tmp_path), sys.executable, "-c", SLEEPER],
                                            stdout=subprocess.PIPE, text=True))
        lines = [p.stdout.readline().split() for p in started]
        assert [line[0] for line in lines] == [str(tmp_path)] * 2  # each started in its directory
        # each wrote under the same path, each onto its own node's disk; the machine's mount point stays empty
        assert (made.disk(0) / "state.bin").is_file() and (made.disk(1) / "state.bin").is_file()
        assert list(made.mountpoint.iterdir()) == []
        node1 = made.processes(1)
        # nsenter exec()s env exec()s python: one pid, in the node; with it the process it started
        assert node1 == sorted([started[1].pid, int(lines[1][1])])

        lost = made.lose(1)
        assert sorted(lost.killed) == sorted(node1) and lost.survivors == []
        assert lost.files == ["checkpoints/.tmp_iter_0000008/__2_0.distcp", "state.bin"] and lost.bytes == 1024
        assert list(made.disk(1).iterdir()) == [] and (made.disk(0) / "state.bin").is_file()
        assert started[1].wait(timeout=5) == -9 and started[0].poll() is None  # node 0 untouched
        assert made.processes(1) == [] and len(made.processes(0)) == 2
    finally:
        for process in started:
            process.kill()
            process.wait()
        for pid in made.processes(0):
            os.kill(pid, 9)
        made.close()


@pytest.mark.skipif(NETNS is not None, reason=str(NETNS))
def test_multihost_node_loss_catches_checkpoints_kept_on_node_local_disks(tmp_path, golden_cache):
    """The job writes its checkpoint shards to each node's local disk, with no copy elsewhere: node 1's loss
    after iteration 4 was committed takes its shards, and the check names what was lost."""
    from chaos.runner import run_scenario

    text = (WORKLOAD.replace("}", ", checkpoint_storage: node_local}") +
            "launcher: torchrun\nhosts: netns\nrestart: {max_restarts: 1, hang_timeout_s: 10}\n"
            "faults:\n  - {at: {step: 6, phase: forward}, target: {node: 1}, node_loss: true}\n")
    result = run_scenario(load_scenario_text(text, "node_local.yaml"), out_dir=tmp_path / "run",
                          golden_cache=golden_cache, say=lambda text: None)
    checks = {c["name"]: c for c in result.checks}
    assert result.verdict == "fail", result.summary
    node_loss = checks["node_loss"]
    assert node_loss["status"] == "fail", node_loss
    assert "committed checkpoint(s) [4] had files on node 1's local disk only" in node_loss["detail"], node_loss
    loss = node_loss["evidence"]["losses"][0]
    assert loss["lost_iterations"] == [4] and loss["lost_files"] >= 2 and loss["survivors"] == []
    assert any(name.startswith("checkpoints/iter_0000004/") or "iter_0000004/" in name for name in loss["lost_listed"])
    assert checks["faults_landed"]["status"] == "pass", checks["faults_landed"]


def test_multihost_slurm_task_gives_each_rank_torchruns_environment():
    env = {"SLURM_PROCID": "3", "SLURM_NTASKS": "4", "SLURM_LOCALID": "1", "SLURM_NODEID": "1", "SLURM_NNODES": "2"}
    assert slurm_task.torchrun_env(env) == {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1",
                                            "LOCAL_WORLD_SIZE": "2", "GROUP_RANK": "1"}


@pytest.mark.skipif(SLURM is not None, reason=str(SLURM))
def test_multihost_slurm_private_cluster_runs_steps_and_a_lost_node_comes_back(tmp_path):
    """The real daemons on the simulated hosts: a job step spans both nodes; a node loss takes the node's
    slurmd too, and once it is started again the node is back in service for the next job. The run directory
    is deep, as a pytest one is: the daemons' Unix sockets under it must still fit."""
    run_dir = tmp_path / ("deep-" * 16) / "run"
    run_dir.mkdir(parents=True)
    made = hosts.SimulatedHosts.create(2, "chaos-test", run_dir)
    cluster, stepds = None, []
    try:
        slurm_cgroup, _ = lifeline.create_cgroup("chaos-multihost-test-slurm")
        cluster = slurm.PrivateSlurm.start(made, run_dir / "slurm", slurm_cgroup)
        assert set(cluster.states().values()) == {"idle"}

        def srun() -> subprocess.CompletedProcess:
            return subprocess.run([*made.enter_head(tmp_path), "srun", "--nodes=2", "--ntasks=4",
                                   "--ntasks-per-node=2", "--overcommit", "sh", "-c", "echo $(hostname) $SLURM_PROCID"],
                                  env={**os.environ, **cluster.env()}, capture_output=True, text=True, timeout=60)

        first = srun()
        assert first.returncode == 0, first.stderr
        assert sorted(first.stdout.split("\n")[:-1]) == ["chaos-test-0 0", "chaos-test-0 1", "chaos-test-1 2",
                                                         "chaos-test-1 3"]
        # through chaos's task shim: torchrun's environment from Slurm's, and the task in the attempt's cgroup
        cgroup, why_not = lifeline.create_attempt_cgroup("multihost-test", 99)
        if cgroup is not None:
            try:
                shim = subprocess.run(
                    [*made.enter_head(tmp_path), "srun", "--nodes=2", "--ntasks=4", "--ntasks-per-node=2",
                     "--overcommit", sys.executable, "-m", "chaos.supervisor.hosts.slurm_task", "sh", "-c",
                     'echo "$RANK/$WORLD_SIZE $LOCAL_RANK/$LOCAL_WORLD_SIZE $GROUP_RANK $(grep ^0:: /proc/self/cgroup)"'],
                    env={**os.environ, **cluster.env(), slurm_task.ENV_CGROUP_PROCS: cgroup.procs_file},
                    capture_output=True, text=True, timeout=60)
            finally:
                cgroup.kill()
                cgroup.remove()
            assert shim.returncode == 0, shim.stderr
            lines = sorted(shim.stdout.split("\n")[:-1])
            assert [line.split()[:3] for line in lines] == [["0/4", "0/2", "0"], ["1/4", "1/2", "0"],
                                                           ["2/4", "0/2", "1"], ["3/4", "1/2", "1"]]
            assert all(line.endswith(cgroup.path.name) for line in lines), lines
        slurmd = cluster.daemons["slurmd-1"].pid
        lost = made.lose(1)
        assert slurmd in lost.killed  # the node's slurmd went with it
        assert cluster.revive() == [1] and cluster.revive() == []
        cluster.wait_idle()
        again = srun()
        assert again.returncode == 0 and again.stdout.count("chaos-test-1") == 2, again.stderr

        # a step whose srun is killed (chaos interrupted mid-attempt): its step daemons must not outlive the run
        step = subprocess.Popen([*made.enter_head(tmp_path), "srun", "--nodes=2", "--ntasks=2", "sleep", "600"],
                                env={**os.environ, **cluster.env()}, start_new_session=True)
        deadline = time.monotonic() + 20
        while len(stepds := step_daemons(made)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(stepds) == 2
        os.killpg(step.pid, 9)
        step.wait()
    finally:
        if cluster is not None:
            cluster.close()
        made.close()
    leftovers = subprocess.run(["pgrep", "-f", str(run_dir / "slurm")], capture_output=True, text=True).stdout
    assert leftovers == "", f"daemons left running: {leftovers}"
    assert not [pid for pid in stepds if os.path.exists(f"/proc/{pid}") and _state(pid) != "Z"], "step daemons left"


def step_daemons(made) -> list[int]:
    return [pid for node in range(made.nodes) for pid in made.processes(node) if _comm(pid) == "slurmstepd"]


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as handle:
            return handle.read().strip()
    except OSError:
        return ""


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


@pytest.mark.skipif(SLURM is not None, reason=str(SLURM))
def test_multihost_slurm_killed_chaos_leaves_no_daemon_step_or_rank(tmp_path):
    """SIGKILL to chaos while a Slurm job step runs: the daemons die with it (PR_SET_PDEATHSIG), and the
    watchdog kills the run's Slurm cgroup (the step daemons) and the attempt's (the ranks, which joined it)."""
    import signal as signals

    scenario = Path(__file__).resolve().parents[1] / "scenarios" / "multihost_slurm.yaml"
    chaos = subprocess.Popen([sys.executable, "-m", "chaos.cli", "run", str(scenario), "--out", str(tmp_path / "run"),
                              "--golden-cache", str(Path(__file__).resolve().parents[1] / "goldens")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    history = tmp_path / "run" / "supervisor.jsonl"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (history.exists() and '"rank_hello"' in history.read_text()):
            time.sleep(0.2)
        assert history.exists() and '"rank_hello"' in history.read_text(), "no rank said hello within 120 s"
        ours = [pid for pid in map(int, filter(str.isdigit, os.listdir("/proc")))
                if str(tmp_path) in _cmdline(pid) or _comm(pid) == "slurmstepd"]
        assert any(_comm(pid) == "slurmstepd" for pid in ours)
    finally:
        chaos.send_signal(signals.SIGKILL)
        chaos.wait()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and [pid for pid in ours if _state(pid) not in ("gone", "Z")]:
        time.sleep(0.2)
    left = {pid: _cmdline(pid)[:120] for pid in ours if _state(pid) not in ("gone", "Z")}
    assert not left, f"outlived a killed chaos: {left}"


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


REPO = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def existing_cluster(tmp_path: Path):
    """A Slurm cluster chaos did not start: the private one on simulated hosts, started here. chaos runs on
    its login node (the head namespace) and knows only what srun and scontrol tell it."""
    made = hosts.SimulatedHosts.create(2, "chaos-cl", tmp_path / "cluster")
    cluster = None
    try:
        cluster = slurm.PrivateSlurm.start(made, tmp_path / "cluster" / "slurm")
        yield made, cluster
    finally:
        if cluster is not None:
            cluster.close()
        made.close()


def chaos_on_login_node(made, cluster, *args: str, run_dir: Path) -> subprocess.Popen:
    return subprocess.Popen([*made.enter_head(REPO), sys.executable, "-m", "chaos.cli", "run", *args, "--out",
                             str(run_dir)],
                            env={**os.environ, **cluster.env()}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def supervisor_records(run_dir: Path) -> list[dict]:
    import json

    path = run_dir / "supervisor.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")] if path.exists() else []


@pytest.mark.skipif(SLURM is not None, reason=str(SLURM))
def test_multihost_existing_slurm_cluster_runs_the_scenario_through_agents(tmp_path):
    """scenarios/slurm_cluster.yaml as a user runs it on their cluster: chaos on the login node finds the
    cluster through srun and scontrol alone; every attempt an agent per node dials back over TCP, the ranks
    start as Slurm tasks of a second step of the same job and each node's agent adopts and owns them; the
    ranks' probes reach chaos over TCP with the run token. A pause, SIGKILL mid-backward and a node's ranks
    killed, each checked."""
    import json

    run_dir = tmp_path / "run"
    with existing_cluster(tmp_path) as (made, cluster):
        chaos = chaos_on_login_node(made, cluster, str(REPO / "scenarios" / "slurm_cluster.yaml"),
                                    "--golden-cache", str(REPO / "goldens"), run_dir=run_dir)
        output, _ = chaos.communicate(timeout=400)
    assert chaos.returncode == 0, output
    report = json.loads((run_dir / "report.json").read_text())
    assert report["verdict"] == "pass" and report["restarts"] == 2
    records = supervisor_records(run_dir)
    (where,) = [r for r in records if r["event"] == "cluster"]
    assert where["controller"] == hosts.HEAD_ADDRESS and where["control"].startswith(f"tcp://{hosts.HEAD_ADDRESS}:")
    for attempt in (1, 2, 3):
        agents = sorted((r["node"], r["host"], r["address"]) for r in records
                        if r["event"] == "agent_hello" and r["attempt"] == attempt)
        assert agents == [(0, "chaos-cl-0", made.address(0)), (1, "chaos-cl-1", made.address(1))]
        for rank in range(4):
            start = json.loads((run_dir / "attempts" / f"{attempt:02d}" / f"rank-{rank}.jsonl").read_text()
                               .splitlines()[0])
            assert start["event"] == "start" and start["host"] == f"chaos-cl-{rank // 2}"
        # every rank a Slurm task of a second step of the agents' job
        assert (run_dir / "attempts" / f"{attempt:02d}" / "srun-ranks.out").is_file()
    teardowns = [r for r in records if r["event"] == "teardown"]
    assert len(teardowns) == 3 and all(len(r["hosts"]) == 2 for r in teardowns)
    assert not [r for r in records if r["event"] in ("agent_refused", "agent_lost", "rank_rejected")]


@pytest.mark.skipif(SLURM is not None, reason=str(SLURM))
def test_multihost_existing_slurm_cluster_torchrun_rides_out_a_lost_agent(tmp_path):
    """torchrun launched by srun (one per node, started by chaos's agent there, its workers adopted at their
    hello) and node 1's chaos agent SIGKILLed mid-training, as when its host stops answering: the attempt
    ends, nothing of it is left on node 1 (verified by the next agent there, which sweeps its host before
    starting anything; that the agent's watchdog kills what its ranks started is proven in
    test_multihost_agents.py, here the workers' broken collectives may end them first), and the run resumes
    bitwise, against a golden recorded first on the cluster itself (`chaos golden record` on the login node)."""
    import json

    scenario = tmp_path / "lost_agent.yaml"
    scenario.write_text("workload: {preset: tiny_cpu, world_size: 4, tensor_parallel: 2, nodes: 2, train_iters: 12, "
                        "save_interval: 4}\nlauncher: torchrun\nhosts: cluster\n"
                        "restart: {max_restarts: 1, hang_timeout_s: 15}\n")
    run_dir, golden = tmp_path / "run", tmp_path / "golden.json"
    with existing_cluster(tmp_path) as (made, cluster):
        record = subprocess.run([*made.enter_head(tmp_path), sys.executable, "-m", "chaos.cli", "golden", "record",
                                 str(scenario), "--out", str(golden)], env={**os.environ, **cluster.env()},
                                capture_output=True, text=True, timeout=300)
        assert record.returncode == 0, record.stdout + record.stderr
        golden_run = tmp_path / record.stdout.rsplit("run directory ", 1)[1].strip()  # relative to its cwd
        chaos = chaos_on_login_node(made, cluster, str(scenario), "--golden", str(golden), run_dir=run_dir)
        try:
            rank2 = run_dir / "attempts" / "01" / "rank-2.jsonl"
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not (rank2.exists() and '"step": 5' in rank2.read_text()):
                time.sleep(0.1)
            assert rank2.exists() and '"step": 5' in rank2.read_text(), "rank 2 never reached step 5"
            (agent,) = [r for r in supervisor_records(run_dir)
                        if r["event"] == "agent_hello" and r["attempt"] == 1 and r["node"] == 1]
            os.kill(agent["pid"], 9)
            output, _ = chaos.communicate(timeout=300)
        finally:
            chaos.kill()
            chaos.wait()
    assert chaos.returncode == 0, output
    report = json.loads((run_dir / "report.json").read_text())
    assert report["verdict"] == "pass" and report["restarts"] == 1
    records = supervisor_records(run_dir)
    (lost,) = [r for r in records if r["event"] == "agent_lost"]
    assert lost["attempt"] == 1 and lost["node"] == 1 and lost["host"] == "chaos-cl-1"
    first = next(r for r in records if r["event"] == "teardown" and r["attempt"] == 1)
    assert [h.get("lost") is not None for h in first["hosts"]] == [False, True]
    (again,) = [r for r in records if r["event"] == "agent_hello" and r["attempt"] == 2 and r["node"] == 1]
    assert again["host"] == "chaos-cl-1" and again["swept"] == []
    recorded = supervisor_records(golden_run)  # on the cluster, through its agents
    assert {r["host"] for r in recorded if r["event"] == "agent_hello"} == {"chaos-cl-0", "chaos-cl-1"}
    assert report["golden"]["path"] == str(golden)
    no_survivors = next(c for c in report["checks"] if c["name"] == "no_survivors")
    assert no_survivors["status"] == "pass"


@pytest.mark.skipif(SLURM is not None, reason=str(SLURM))
def test_multihost_existing_slurm_cluster_that_refuses_the_step_is_an_infrastructure_error(tmp_path):
    """srun fails before any agent connects (here: CHAOS_SRUN_ARGS names no partition of the cluster): the
    run stops at once saying what srun said, instead of spending restarts on a job the cluster refuses."""
    scenario = tmp_path / "refused.yaml"
    scenario.write_text("workload: {preset: tiny_cpu, world_size: 4, tensor_parallel: 2, nodes: 2, train_iters: 12, "
                        "save_interval: 4}\nlauncher: slurm\nhosts: cluster\nrestart: {max_restarts: 3}\n")
    with existing_cluster(tmp_path) as (made, cluster):
        chaos = subprocess.run([*made.enter_head(REPO), sys.executable, "-m", "chaos.cli", "run", str(scenario),
                                "--out", str(tmp_path / "run"), "--golden-cache", str(REPO / "goldens")],
                               env={**os.environ, **cluster.env(), "CHAOS_SRUN_ARGS": "--partition=nosuch"},
                               capture_output=True, text=True, timeout=120)
    assert chaos.returncode == 3, chaos.stdout + chaos.stderr
    assert "srun exited before an agent connected for node(s) [0, 1]" in chaos.stdout
    assert "invalid partition specified: nosuch" in chaos.stdout
    assert '"attempts": 1' in (tmp_path / "run" / "supervisor.jsonl").read_text()  # no restart was spent


def test_multihost_srun_args_that_do_not_parse_are_named(monkeypatch):
    from chaos.supervisor.hosts import slurm_cluster

    monkeypatch.setenv("CHAOS_SRUN_ARGS", "--partition='train")
    with pytest.raises(slurm_cluster.ClusterError) as raised:
        slurm_cluster.srun_extra_args()
    assert "CHAOS_SRUN_ARGS: No closing quotation" in str(raised.value)
    monkeypatch.setenv("CHAOS_SRUN_ARGS", "--partition='train a' --exclusive")
    assert slurm_cluster.srun_extra_args() == ["--partition=train a", "--exclusive"]


def test_multihost_golden_is_recorded_where_the_numbers_are_made():
    from chaos.runner import golden_launch

    def scenario(body: str):
        return load_scenario_text(WORKLOAD + body, "g.yaml")

    assert golden_launch(scenario("launcher: slurm\nhosts: cluster\n")) == ("slurm", "cluster")
    assert golden_launch(scenario("launcher: torchrun\nhosts: cluster\n")) == ("torchrun", "cluster")
    # simulated hosts: loopback; a private Slurm cluster only exists on them, so torchrun stands in
    assert golden_launch(scenario("launcher: slurm\nhosts: netns\n")) == ("torchrun", "local")
    assert golden_launch(scenario("launcher: torchrun\nhosts: netns\n")) == ("torchrun", "local")


def test_multihost_cluster_scenario_without_a_cluster_is_refused_naming_hosts(tmp_path):
    """Where no Slurm cluster answers (no srun here, or scontrol finds no slurmctld), nothing starts."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    (tmp_path / "slurm.conf").write_text("")  # a cluster configuration that names no cluster
    env["SLURM_CONF"] = str(tmp_path / "slurm.conf")
    result = subprocess.run([sys.executable, "-m", "chaos.cli", "run", str(REPO / "scenarios" / "slurm_cluster.yaml"),
                             "--out", str(tmp_path / "run")], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    said = result.stdout + result.stderr
    assert "slurm_cluster.yaml: hosts: " in said
    assert "hosts: cluster found no Slurm cluster to run on from here" in said or "needs srun" in said
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(SLURM is not None, reason=str(SLURM))
def test_multihost_existing_slurm_cluster_runs_an_unmodified_trainer(tmp_path):
    """Your own job on your cluster: a trainer that knows nothing of chaos (kind: megatron_lm, the CPU
    stand-in of the Megatron-LM tests) as Slurm tasks on 2 nodes, started by the exec shim (its hello over
    TCP), followed from its output, SIGKILLed once it logged iteration 3, resumed; its golden recorded on the
    cluster first, by the same run."""
    import json

    standin = REPO / "tests" / "trainers" / "megatron_like.py"
    scenario = tmp_path / "my_job.yaml"
    scenario.write_text(f"""
name: my_job_on_the_cluster
workload:
  kind: megatron_lm
  script: {standin}
  nproc_per_node: 2
  nodes: 2
  device: cpu
  env: {{OMP_NUM_THREADS: "1"}}
  args: [--tensor-model-parallel-size, 2, --num-layers, 4, --hidden-size, 128, --num-attention-heads, 4,
         --seq-length, 128, --micro-batch-size, 2, --global-batch-size, 8, --ckpt-format, fsdp_dtensor, --mock-data]
  train_iters: 8
  save_interval: 2
launcher: slurm
hosts: cluster
restart: {{max_restarts: 1}}
faults:
  - at: {{step: 3}}
    target: {{rank: 2}}
    signal: SIGKILL
""")
    run_dir = tmp_path / "run"
    with existing_cluster(tmp_path) as (made, cluster):
        chaos = chaos_on_login_node(made, cluster, str(scenario), "--golden-cache", str(tmp_path / "goldens"),
                                    run_dir=run_dir)
        output, _ = chaos.communicate(timeout=400)
    assert chaos.returncode == 0, output
    report = json.loads((run_dir / "report.json").read_text())
    assert report["verdict"] == "pass" and report["restarts"] == 1 and report["golden"]["recorded_here"]
    records = supervisor_records(run_dir)
    hellos = [r for r in records if r["event"] == "rank_hello" and r["attempt"] == 1]
    assert sorted((r["rank"], r["node"]) for r in hellos) == [(0, 0), (1, 0), (2, 1), (3, 1)]
    (landed,) = [r for r in records if r["event"] == "fault_landed"]
    assert landed["rank"] == 2 and landed["step"] == 3 and landed["node"] == 1
