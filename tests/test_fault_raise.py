"""The `raise` fault kind: an exception raised inside a rank at a planned point, by the rank's own probe on its
release. Its scenario form and plan.json round trip, the scenario errors (no hold without a phase trigger
and a probe; bad messages), the supervisor's side (a held rank released with the message, one not held
recorded missed), the probe's side (InjectedFault, the RELEASED record with `raised`), and one real run:
rank 1 raises in the backward pass of step 3, dies with a traceback, and the job resumes."""

from __future__ import annotations

import socket
from pathlib import Path
from types import SimpleNamespace

import pytest

from chaos import control, faults, history
from chaos.errors import InputError
from chaos.faults.exception import Raise
from chaos.plan import PlannedFault, Target, Trigger
from chaos.scenario import dump_scenario, load_scenario_text
from chaos.schedule import plan_faults, plan_from_json, plan_to_json
from workload_runs import small_workload

MESSAGE = "RuntimeError: CUDA error: an illegal memory access was encountered"

SCENARIO = f"""\
workload: {small_workload()}
restart: {{max_restarts: 2}}
faults:
  - at: {{step: 3, phase: backward}}
    target: {{rank: 1}}
    raise: "{MESSAGE}"
"""


# ---- the scenario and the plan -------------------------------------------------------------------------
def test_a_raise_round_trips_through_the_scenario_and_plan_json():
    scenario = load_scenario_text(SCENARIO, "raise.yaml")
    [fault] = scenario.faults
    assert fault.action == Raise(MESSAGE)
    assert load_scenario_text(dump_scenario(scenario), "again.yaml").faults == scenario.faults
    [planned] = plan_faults(scenario)
    assert plan_from_json(plan_to_json([planned])) == (planned,)
    assert faults.action_from_dict(planned.action.to_dict()) == Raise(MESSAGE)
    assert planned.action.to_dict() == {"kind": "raise", "message": MESSAGE}
    assert planned.describe() == ("f1: attempt 1, step 3 backward -> rank 1: "
                                  "raise 'RuntimeError: CUDA error: an illegal ...' (scenario)")
    assert Raise("boom").describe() == "raise 'boom'"


def test_a_raise_is_an_exception_in_the_rank_not_a_signal():
    action = Raise(MESSAGE)
    assert (action.ends_attempt, action.interrupts, action.takes_host, action.sends_signal) == (True, True, False, None)
    assert action.needs_probe and action.release_message() == {"raise": MESSAGE}
    assert all(not cls.needs_probe and cls.release_message is faults.Action.release_message
               for kind, cls in faults.KINDS.items() if kind != "raise")


@pytest.mark.parametrize("value,fragment", [
    ("3", "expected a non-empty string, got 3"),
    ('""', "expected a non-empty string"),
    ('"a\\nb"', "without control characters"),
    ('"a\\tb"', "without control characters"),
    (f'"{"x" * 301}"', "at most 300 characters"),
])
def test_a_bad_message_names_the_field(value, fragment):
    with pytest.raises(InputError) as caught:
        load_scenario_text(SCENARIO.replace(f'"{MESSAGE}"', value), "raise.yaml")
    assert caught.value.field == "faults[0].raise" and fragment in caught.value.message, caught.value


def test_a_wall_clock_raise_is_a_scenario_error():
    text = SCENARIO.replace("{step: 3, phase: backward}", "{after_s: 5}")
    with pytest.raises(InputError) as caught:
        load_scenario_text(text, "raise.yaml")
    assert caught.value.field == "faults[0].raise", caught.value
    assert "probe inside a held rank" in caught.value.message and "phase trigger" in caught.value.message
    assert "wall-clock" in caught.value.message


def test_the_action_form_names_its_own_field():
    text = SCENARIO.replace(f'raise: "{MESSAGE}"', 'action: {raise: "boom"}').replace(
        "{step: 3, phase: backward}", "{after_s: 5}")
    with pytest.raises(InputError) as caught:
        load_scenario_text(text, "raise.yaml")
    assert caught.value.field == "faults[0].action.raise", caught.value


@pytest.fixture
def megatron_checkout(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "Megatron-LM"
    (path / "megatron").mkdir(parents=True)
    (path / "pretrain_gpt.py").write_text("# stand-in: only its path matters here\n")
    monkeypatch.setenv("MEGATRON_LM", str(path))
    return path


def test_a_raise_in_a_workload_followed_from_its_logs_is_a_scenario_error(megatron_checkout):
    shipped = sorted((Path(__file__).resolve().parents[1] / "scenarios" / "megatron_lm").glob("*.yaml"))[0]
    text = (shipped.read_text().split("faults:")[0] + "faults:\n  - at: {step: 3, phase: iteration}\n"
            "    target: {rank: 0}\n    raise: boom\n")
    with pytest.raises(InputError) as caught:
        load_scenario_text(text, "mine.yaml")
    assert caught.value.field == "faults[0].raise", caught.value
    assert "kind: gpt3" in caught.value.message and "megatron_lm" in caught.value.message


def test_random_faults_draw_signals_only():
    """A `random:` entry (and a soak) draws signals: a raise is never drawn, so never on a wall-clock time."""
    text = SCENARIO.split("faults:")[0] + "faults:\n  - random: {count: 1, signals: [raise]}\n"
    with pytest.raises(InputError) as caught:
        load_scenario_text(text, "raise.yaml")
    assert caught.value.field == "faults[0].random.signals[0]", caught.value


# ---- the supervisor's side: landing ------------------------------------------------------------------------
class _Connection:
    def __init__(self) -> None:
        self.sent: list[dict] = []

    def send(self, message: dict) -> None:
        self.sent.append(message)


def _landing(trigger: Trigger):
    from chaos.supervisor.landing import FaultLanding
    from chaos.supervisor.ranks import Rank

    planned = PlannedFault("f1", trigger, Target("rank", (1,)), Raise("boom"))
    records: list[tuple[str, dict]] = []

    def record(event, **fields):
        records.append((event, fields))
        return {"event": event, **fields}

    ctx = SimpleNamespace(launch=SimpleNamespace(checkpoint_dir=None, ranks_per_node=2), faults=[planned],
                          run_id="t", hosts=None, launcher="direct", landed=[], missed=[], record=record)
    process = SimpleNamespace(pid=4242, node=0, exited=False, alive=lambda: True)
    rank = Rank(1, _Connection(), process, SimpleNamespace(poll=lambda: False, step=3, phase="backward"))
    landing = FaultLanding(ctx, 1, {1: rank}, SimpleNamespace(ranks={1: process}, launched=[]))
    return landing, rank, records


def test_a_held_rank_is_released_with_the_message_and_awaited():
    landing, rank, records = _landing(Trigger(step=3, phase="backward"))
    assert landing.hold(rank, "f1", 3, "backward", None)
    [(event, landed)] = [(e, f) for e, f in records if e == history.FAULT_LANDED]
    assert (landed["action"], landed["signal"], landed["held"], landed["message"]) == ("raise", None, True, "boom")
    assert rank.connection.sent == [{"type": "release", "fault_id": "f1", "raise": "boom"}]
    assert rank.awaiting_death_since is not None and not rank.held


def test_a_rank_not_held_cannot_raise_and_is_recorded_missed():
    landing, rank, records = _landing(Trigger(after_s=1.0))  # as plan.json could hold it: never from a scenario
    landing.fire_wall_clock(now=10.0, launch_mono=0.0)
    assert not [e for e, _ in records if e == history.FAULT_LANDED] and rank.connection.sent == []
    assert rank.awaiting_death_since is None
    landing.record_missed("complete")
    [(event, missed)] = records
    assert event == history.FAULT_MISSED
    assert "a raise is done by the rank's probe: only a rank held at a phase trigger can raise" in missed["reason"]


# ---- the probe's side ---------------------------------------------------------------------------------------
def test_the_probe_raises_the_message_where_it_was_held(tmp_path):
    from chaos.probe import InjectedFault, Probe

    probe = Probe(tmp_path, rank=1, attempt=1, control_socket=None)
    ours, theirs = socket.socketpair()
    probe._sock, probe._reader = ours, control.LineReader(ours)
    probe._holds = [{"fault_id": "f1", "step": 3, "phase": "backward", "index": None}]
    control.send(theirs, {"type": "release", "fault_id": "f1", "raise": MESSAGE})
    with pytest.raises(InjectedFault, match="illegal memory access") as caught:
        with probe.phase("backward", 3):
            pytest.fail("the phase's body ran after the raise")
    assert isinstance(caught.value, RuntimeError) and str(caught.value) == MESSAGE
    records = history.read_jsonl(tmp_path / "rank-1.jsonl")
    assert [r["event"] for r in records][-2:] == [history.HELD, history.RELEASED]
    assert records[-1]["raised"] == MESSAGE
    ours.close()
    theirs.close()


# ---- one real run -------------------------------------------------------------------------------------------
ALWAYS_SKIPPED = {"stalls", "node_loss"}
"""What the small workload's run with one fault and no stall skips: no pause, straggler, partition or node loss."""


def test_a_rank_that_raises_dies_with_a_traceback_and_the_job_resumes(tmp_path, small_golden):
    from chaos.runner import run_scenario

    scenario = load_scenario_text(SCENARIO.replace("workload:", "name: raise-rank1\nworkload:", 1), "raise.yaml")
    result = run_scenario(scenario, out_dir=tmp_path / "run", golden_cache=small_golden.parent, say=lambda text: None)
    statuses = {c["name"]: c["status"] for c in result.checks}
    assert result.verdict == "pass", (statuses, result.failing_checks)
    assert {name for name, status in statuses.items() if status != "pass"} <= ALWAYS_SKIPPED, statuses
    assert statuses["faults_landed"] == statuses["steps_lost"] == "pass", statuses

    run_dir = result.run_dir
    supervisor = history.read_jsonl(history.supervisor_history_path(run_dir))
    [landed] = [r for r in supervisor if r["event"] == history.FAULT_LANDED]
    assert (landed["action"], landed["rank"], landed["step"], landed["phase"]) == ("raise", 1, 3, "backward")
    assert landed["signal"] is None and landed["message"] == MESSAGE
    rank1 = history.read_jsonl(history.rank_history_path(run_dir, 1, 1))
    [released] = [r for r in rank1 if r["event"] == history.RELEASED]
    assert released["raised"] == MESSAGE
    [died] = [r for r in supervisor if r["event"] == history.RANK_EXIT and r["attempt"] == 1 and r["rank"] == 1]
    assert died["returncode"] == 1 and died["signal"] is None, died
    output = (run_dir / "attempts" / "01" / "rank-1.out").read_text(errors="replace")
    assert "InjectedFault" in output and MESSAGE in output
    rank0_attempt2 = history.read_jsonl(history.rank_history_path(run_dir, 2, 0))
    loaded = [r for r in rank0_attempt2 if r["event"] == history.CHECKPOINT_LOADED]
    assert loaded and loaded[0]["iteration"] == 2, loaded  # save_interval 2: resumed from iter 2
