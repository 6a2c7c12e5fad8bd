"""Shared fixtures. The chaos pytest plugin (loaded through its entry point) supplies chaos_run,
chaos_result, chaos_settings and the session-scoped chaos_golden_cache (--chaos-golden-cache, default
<basetemp>/chaos-goldens: the same directory the real-run test modules use, so each workload's golden is
recorded at most once per session)."""

from __future__ import annotations

from pathlib import Path

import pytest

from workload_runs import small_workload

pytest_plugins = ["pytester"]


@pytest.fixture(scope="session")
def golden_cache(chaos_golden_cache) -> Path:
    return chaos_golden_cache


SMALL_WORKLOAD = small_workload()


@pytest.fixture(scope="session")
def small_golden(chaos_golden_cache) -> Path:
    """The small workload's golden, recorded here (once per session) into the session's golden cache, so
    the real-run tests compare against this tree's trainer rather than whatever goldens/ holds."""
    from chaos import golden as golden_module
    from chaos.runner import golden_file_name, record_golden
    from chaos.scenario import load_scenario_text

    scenario = load_scenario_text(f"workload: {SMALL_WORKLOAD}\n", "small-golden")
    found = golden_module.find_golden(chaos_golden_cache, golden_module.workload_fingerprint(scenario.workload),
                                      golden_module.environment_fingerprint(scenario.device, scenario.facts.cpu_pins))
    if found is not None:
        return found
    target = chaos_golden_cache / golden_file_name(scenario)
    record_golden(scenario, target, chaos_golden_cache.parent / "small-golden-run")
    return target


@pytest.fixture
def small_scenario_file(tmp_path) -> Path:
    """A 2-rank scenario with one SIGKILL mid-backward: a real run takes ~15-40 s on 2 cores."""
    path = tmp_path / "scenarios" / "small_kill.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"""description: SIGKILL rank 1 in the backward pass of step 3 (2 ranks, 6 steps).
workload: {SMALL_WORKLOAD}
restart: {{max_restarts: 3}}
faults:
  - at: {{step: 3, phase: backward}}
    target: {{rank: 1}}
    signal: SIGKILL
""")
    return path
