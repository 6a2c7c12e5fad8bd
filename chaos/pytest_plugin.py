"""pytest plugin for chaos (registered through the `pytest11` entry point).

- fixture `chaos_run`: runs a scenario and returns its chaos.runner.RunResult::

      def test_kill(chaos_run):
          result = chaos_run("scenarios/node_kill.yaml", **{"workload.train_iters": 8})
          assert result.verdict == "pass", result.summary

      @pytest.mark.chaos("scenarios/node_kill.yaml", seed=3)
      def test_marked(chaos_result):           # or chaos_run() with no arguments
          assert chaos_result.verdict == "pass"

- scenario files as tests: `pytest scenarios/` runs every scenario (`*.yaml` under a directory named
  `scenarios`, or any YAML file with a top-level `workload:` key); a failure shows the failing checks with
  their evidence and the run directory, not a traceback.
- markers `chaos`, `soak` (runs only with --chaos-soak-minutes M > 0 or -m soak) and `gpu` (skips without
  CUDA, saying why).
- fixture `chaos_selftest` (or `@pytest.mark.chaos(..., selftest=True)` with `chaos_result`): plants resume
  bugs in the scenario's job and returns chaos.selftest.SelftestResult, so a suite can assert a score::

      def test_checks_are_strong(chaos_selftest):
          result = chaos_selftest("scenarios/my_job.yaml", bugs=["rng_not_restored", "adam_step_reset"])
          assert result.score.fraction == 1.0, result.summary

- JUnit XML: verdict, restarts, each fault (planned / landed) and each check become test properties.

Runs go through the `pytest_chaos_run_scenario` and `pytest_chaos_record_golden` hooks, so a conftest can
stand in for the real runner (the plugin's own tests do, to stay fast).
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from chaos.errors import InputError

SCENARIO_DIR_NAME = "scenarios"
GPU_DIR_NAME = "gpu"


# ---- hooks (a conftest may implement them to stand in for the real runner) -------------------------------
class ChaosHooks:
    @pytest.hookspec(firstresult=True)
    def pytest_chaos_run_scenario(self, config, scenario, out_dir, seed, golden_cache):
        """Run one scenario and return its chaos.runner.RunResult (first non-None result wins)."""

    @pytest.hookspec(firstresult=True)
    def pytest_chaos_record_golden(self, config, scenario, out_path, work_dir):
        """Record the uninterrupted run's golden into out_path (for --chaos-update-goldens)."""

    @pytest.hookspec(firstresult=True)
    def pytest_chaos_run_selftest(self, config, scenario, out_dir, bugs, seed, golden_cache):
        """Run a selftest of one scenario and return its chaos.selftest.SelftestResult."""


def pytest_addhooks(pluginmanager):
    pluginmanager.add_hookspecs(ChaosHooks)


@pytest.hookimpl(trylast=True)
def pytest_chaos_run_scenario(config, scenario, out_dir, seed, golden_cache):
    from chaos.runner import run_scenario

    return run_scenario(scenario, out_dir=out_dir, seed=seed, golden_cache=golden_cache, say=lambda text: None)


@pytest.hookimpl(trylast=True)
def pytest_chaos_record_golden(config, scenario, out_path, work_dir):
    from chaos.runner import record_golden

    return record_golden(scenario, out_path, work_dir)


@pytest.hookimpl(trylast=True)
def pytest_chaos_run_selftest(config, scenario, out_dir, bugs, seed, golden_cache):
    from chaos.selftest import run_selftest

    return run_selftest(scenario, out_dir, bugs, seed=seed, golden_cache=golden_cache, say=lambda text: None)


# ---- options and settings, resolved in one place ------------------------------------------------------------
def pytest_addoption(parser):
    group = parser.getgroup("chaos", "chaos fault-injection runs")
    group.addoption("--chaos-out", metavar="DIR", help="keep run directories under DIR (default: each test's tmp_path)")
    group.addoption("--chaos-seed", metavar="N", help="seed for random faults, overriding the scenarios' own")
    group.addoption("--chaos-update-goldens", action="store_true", default=None,
                    help="record goldens into goldens/ instead of comparing against them")
    group.addoption("--chaos-soak-minutes", metavar="M", help="run soak tests for M minutes (0 = skip them)")
    group.addoption("--chaos-golden-cache", metavar="DIR",
                    help="record goldens here once per workload and reuse them (default: the session's basetemp)")
    for name, help_text in (("chaos_out", "default for --chaos-out"), ("chaos_seed", "default for --chaos-seed"),
                            ("chaos_soak_minutes", "default for --chaos-soak-minutes"),
                            ("chaos_golden_cache", "default for --chaos-golden-cache")):
        parser.addini(name, help_text, default=None)


@dataclass(frozen=True)
class ChaosSettings:
    out: Path | None
    seed: int | None
    update_goldens: bool
    soak_minutes: float
    golden_cache: Path | None
    """None = <basetemp>/chaos-goldens, decided when the session's temporary directory exists."""
    goldens_dir: Path


settings_key = pytest.StashKey[ChaosSettings]()
recorded_key = pytest.StashKey[dict]()


def resolve_settings(config: pytest.Config) -> ChaosSettings:
    """Command line first, then the ini file; a bad value is a UsageError naming where it came from."""

    def raw(option: str, ini: str) -> tuple[Any, str]:
        value = config.getoption(option.lstrip("-").replace("-", "_"))
        if value is not None:
            return value, option
        value = config.getini(ini)
        return (value if value not in ("", None) else None), f"{ini} (ini file)"

    def number(option: str, ini: str, kind: type, low: float | None = None):
        value, where = raw(option, ini)
        if value is None:
            return None
        try:
            parsed = kind(value)
        except (TypeError, ValueError):
            raise pytest.UsageError(f"{where}: expected {'an integer' if kind is int else 'a number'}, got {value!r}") from None
        if low is not None and parsed < low:
            raise pytest.UsageError(f"{where}: expected a value >= {low}, got {value!r}")
        return parsed

    def path(option: str, ini: str) -> Path | None:
        value, _ = raw(option, ini)
        return None if value is None else Path(value).expanduser().resolve()

    return ChaosSettings(
        out=path("--chaos-out", "chaos_out"),
        seed=number("--chaos-seed", "chaos_seed", int),
        update_goldens=bool(config.getoption("chaos_update_goldens")),
        soak_minutes=number("--chaos-soak-minutes", "chaos_soak_minutes", float, low=0) or 0.0,
        golden_cache=path("--chaos-golden-cache", "chaos_golden_cache"),
        goldens_dir=config.rootpath / "goldens",
    )


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "chaos(scenario, seed=None, selftest=False, bugs=None, min_score=None, **overrides): run a chaos "
                   "scenario for this test's chaos_run / chaos_result fixtures (with selftest=True: plant resume bugs "
                   "in it, chaos_selftest); overrides are dotted keys. Example: "
                   "@pytest.mark.chaos('scenarios/node_kill.yaml', seed=3, **{'workload.train_iters': 8})")
    config.addinivalue_line(
        "markers", "soak: long soak test; runs only with --chaos-soak-minutes M > 0 or -m soak. "
                   "Example: @pytest.mark.soak")
    config.addinivalue_line("markers", "gpu: needs CUDA; skipped without it, saying why. Example: @pytest.mark.gpu")
    config.stash[settings_key] = resolve_settings(config)
    config.stash[recorded_key] = {}


def settings(config: pytest.Config) -> ChaosSettings:
    return config.stash[settings_key]


# ---- gpu and soak gates --------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def cuda_missing_reason() -> str | None:
    """Why CUDA tests cannot run here, or None when they can (imports torch only when first asked)."""
    try:
        import torch
    except ImportError as error:
        return f"needs CUDA: torch is not importable ({error})"
    if not torch.cuda.is_available():
        return (f"needs CUDA: torch.cuda.is_available() is False (torch {torch.__version__}, "
                f"built for CUDA {torch.version.cuda or 'none'})")
    return None


def soak_requested(config: pytest.Config) -> bool:
    markexpr = config.getoption("markexpr", default="") or ""
    return settings(config).soak_minutes > 0 or bool(re.search(r"\bsoak\b", markexpr))


def pytest_runtest_setup(item):
    if item.get_closest_marker("gpu") is not None:
        reason = cuda_missing_reason()
        if reason:
            pytest.skip(reason)
    if item.get_closest_marker("soak") is not None and not soak_requested(item.config):
        pytest.skip("soak test: runs only with --chaos-soak-minutes M > 0 or -m soak")


# ---- running a scenario ----------------------------------------------------------------------------------------
class ChaosRunFailed(Exception):
    """A scenario's verdict was not the one expected; pytest shows `text`, not a traceback."""

    def __init__(self, result, expected: str) -> None:
        self.result = result
        self.expected = expected
        super().__init__(describe_failure(result, expected))


def describe_failure(result, expected: str = "pass") -> str:
    """The failing checks with their evidence (first diverging step, golden vs actual) and the run dir."""
    report = getattr(result, "report", {}) or {}
    lines = [f"chaos verdict {result.verdict!r} (expected {expected!r}) for scenario {report.get('scenario')}"]
    infra = (report.get("extra") or {}).get("infrastructure_error")
    if infra:
        lines.append(f"  infrastructure: {infra}")
    for fault in report.get("faults") or []:
        if not fault.get("landed"):
            lines.append(f"  fault {fault['planned'].get('id')} did not land: {fault.get('missed') or 'no record'}")
    for check in report.get("checks") or []:
        if check.get("status") not in ("fail", "error"):
            continue
        lines.append(f"  {check['status'].upper()} {check['name']}: {check.get('detail')}")
        evidence = check.get("evidence") or {}
        divergence = evidence.get("first_divergence")
        if isinstance(divergence, dict):
            lines.append(f"      first diverging step {divergence.get('step')}: golden={divergence.get('golden')!r} "
                         f"actual={divergence.get('actual')!r} (attempt {divergence.get('attempt')})")
        elif "golden" in evidence and "actual" in evidence:
            lines.append(f"      golden={evidence['golden']!r} actual={evidence['actual']!r}"
                         + (f" (step {evidence['step']})" if "step" in evidence else ""))
        else:
            text = json.dumps({k: v for k, v in evidence.items() if k != "traceback"}, default=str)
            lines.append(f"      evidence: {text[:600]}{'...' if len(text) > 600 else ''}")
    lines.append(f"  run directory: {result.run_dir}")
    lines.append(f"  re-check: chaos report {result.run_dir}    replay: chaos replay {result.run_dir}")
    return "\n".join(lines)


def record_run_properties(node, result, prefix: str = "chaos") -> None:
    """JUnit properties (what record_property writes): verdict, restarts, faults, checks."""
    report = getattr(result, "report", {}) or {}
    add = node.user_properties.append
    add((f"{prefix}.verdict", result.verdict))
    add((f"{prefix}.restarts", report.get("restarts")))
    add((f"{prefix}.run_dir", str(result.run_dir)))
    for fault in report.get("faults") or []:
        planned = fault.get("planned") or {}
        landed = fault.get("landed")
        add((f"{prefix}.fault.{planned.get('id')}.planned", json.dumps(planned, sort_keys=True, default=str)))
        add((f"{prefix}.fault.{planned.get('id')}.landed",
             "not landed" if not landed else json.dumps(landed, sort_keys=True, default=str)))
    for check in report.get("checks") or []:
        add((f"{prefix}.check.{check.get('name')}", f"{check.get('status')}: {check.get('detail')}"))


def _load(scenario, overrides: dict[str, Any], base: Path):
    """A Scenario, or a scenario file (relative to the cwd, else to the rootdir), with the overrides applied."""
    from chaos.scenario import Scenario, apply_overrides, load_scenario

    if isinstance(scenario, Scenario):
        return apply_overrides(scenario, overrides)
    path = Path(scenario)
    if not path.is_absolute() and not path.is_file() and (base / path).is_file():
        path = base / path
    return load_scenario(path, overrides)


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)[:80].strip("_") or "run"


class ChaosRunner:
    """What the chaos_run fixture returns: call it to run a scenario (one test may run several)."""

    def __init__(self, node, config: pytest.Config, default_dir, golden_cache: Path, marker=None) -> None:
        self.node = node
        self.config = config
        self.default_dir = default_dir
        self.golden_cache = golden_cache
        self.marker = marker
        self.results: list = []

    def __call__(self, scenario=None, *, seed: int | None = None, out: Path | None = None,
                 expect: str | None = None, **overrides):
        marker_overrides: dict[str, Any] = {}
        marker_seed = None
        if self.marker is not None:
            if scenario is None and self.marker.args:
                scenario = self.marker.args[0]
            marker_overrides = {k: v for k, v in self.marker.kwargs.items() if k not in SELFTEST_KWARGS}
            marker_seed = marker_overrides.pop("seed", None)
        if scenario is None:
            raise pytest.UsageError(f"{self.node.nodeid}: chaos_run() needs a scenario: chaos_run('scenarios/x.yaml') "
                                    "or @pytest.mark.chaos('scenarios/x.yaml')")
        try:
            loaded = _load(scenario, {**marker_overrides, **overrides}, self.config.rootpath)
        except InputError as error:
            pytest.fail(f"chaos: bad scenario: {error}", pytrace=False)
        chosen = seed if seed is not None else marker_seed if marker_seed is not None else settings(self.config).seed
        index = len(self.results) + 1
        run_dir = Path(out) if out else self._run_dir(loaded.name, index)
        result = run_or_record(self.config, loaded, run_dir, chosen, self.golden_cache)
        self.results.append(result)
        record_run_properties(self.node, result, "chaos" if index == 1 else f"chaos[{index}]")
        if expect is not None and result.verdict != expect:
            raise ChaosRunFailed(result, expect)
        return result

    def _run_dir(self, name: str, index: int) -> Path:
        chosen = settings(self.config).out
        leaf = _safe_name(name) + (f"-{index}" if index > 1 else "")
        if chosen is not None:
            return chosen / _safe_name(self.node.nodeid) / leaf
        return Path(self.default_dir()) / leaf


def run_or_record(config: pytest.Config, scenario, run_dir: Path, seed, golden_cache: Path):
    """Runs the scenario, or with --chaos-update-goldens records its golden (once per workload per session)
    and skips the test, naming the file."""
    hook = config.hook
    if settings(config).update_goldens:
        from chaos.runner import golden_file_name

        target = settings(config).goldens_dir / golden_file_name(scenario)
        recorded = config.stash[recorded_key]
        if target not in recorded:
            target.parent.mkdir(parents=True, exist_ok=True)
            hook.pytest_chaos_record_golden(config=config, scenario=scenario, out_path=target,
                                            work_dir=run_dir / "golden_run")
            recorded[target] = scenario.name
        pytest.skip(f"--chaos-update-goldens: golden recorded to {target}; run again without it to compare")
    run_dir.mkdir(parents=True, exist_ok=True)
    return hook.pytest_chaos_run_scenario(config=config, scenario=scenario, out_dir=run_dir, seed=seed,
                                          golden_cache=golden_cache)


@pytest.fixture(scope="session")
def chaos_golden_cache(request, tmp_path_factory) -> Path:
    """Where recorded goldens are kept for the session: each workload's golden is recorded at most once."""
    return golden_cache_dir(request.config, tmp_path_factory)


def golden_cache_dir(config: pytest.Config, tmp_path_factory) -> Path:
    # <basetemp>/chaos-goldens by default: the same directory the suite's own real-run tests share.
    path = settings(config).golden_cache or tmp_path_factory.getbasetemp() / "chaos-goldens"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def chaos_settings(request) -> ChaosSettings:
    return settings(request.config)


@pytest.fixture
def chaos_run(request, chaos_golden_cache) -> ChaosRunner:
    """Call it with a scenario file (or Scenario) and dotted overrides; returns the RunResult."""
    return ChaosRunner(request.node, request.config, lambda: request.getfixturevalue("tmp_path"),
                       chaos_golden_cache, request.node.get_closest_marker("chaos"))


@pytest.fixture
def chaos_result(request, chaos_run):
    """The RunResult of the scenario named by the test's @pytest.mark.chaos marker; with `selftest=True` in the
    marker, the SelftestResult of that scenario (chaos_selftest)."""
    marker = request.node.get_closest_marker("chaos")
    if marker is None:
        raise pytest.UsageError(f"{request.node.nodeid}: chaos_result needs @pytest.mark.chaos('scenarios/x.yaml')")
    if marker.kwargs.get("selftest"):
        return request.getfixturevalue("chaos_selftest")()
    return chaos_run()


SELFTEST_KWARGS = ("selftest", "bugs", "min_score")
"""Marker keywords that configure a selftest (chaos_selftest), not scenario overrides."""


class ChaosSelftest:
    """What the chaos_selftest fixture returns: call it with a scenario to plant resume bugs in it and learn
    which the checks catch (chaos.selftest.SelftestResult: .score, .outcomes, .outcome(bug))."""

    def __init__(self, node, config: pytest.Config, default_dir, golden_cache: Path, marker=None) -> None:
        self.node, self.config, self.default_dir = node, config, default_dir
        self.golden_cache, self.marker = golden_cache, marker

    def __call__(self, scenario=None, *, bugs=None, seed: int | None = None, out: Path | None = None,
                 min_score: float | None = None, **overrides):
        from chaos.selftest import bug_names

        marker_kwargs = dict(self.marker.kwargs) if self.marker is not None else {}
        if scenario is None and self.marker is not None and self.marker.args:
            scenario = self.marker.args[0]
        if scenario is None:
            raise pytest.UsageError(f"{self.node.nodeid}: chaos_selftest() needs a scenario: "
                                    "chaos_selftest('scenarios/x.yaml') or @pytest.mark.chaos('scenarios/x.yaml', selftest=True)")
        bugs = bugs if bugs is not None else marker_kwargs.get("bugs")
        seed = seed if seed is not None else marker_kwargs.get("seed", settings(self.config).seed)
        min_score = min_score if min_score is not None else marker_kwargs.get("min_score", 1.0)
        marker_overrides = {k: v for k, v in marker_kwargs.items() if k not in (*SELFTEST_KWARGS, "seed")}
        try:
            loaded = _load(scenario, {**marker_overrides, **overrides}, self.config.rootpath)
            names = bug_names(",".join(bugs) if isinstance(bugs, (list, tuple)) else bugs, "bugs")
        except InputError as error:
            pytest.fail(f"chaos: bad selftest: {error}", pytrace=False)
        chosen = settings(self.config).out
        out = Path(out) if out else (chosen / _safe_name(self.node.nodeid) if chosen is not None
                                     else Path(self.default_dir()) / f"selftest-{_safe_name(loaded.name)}")
        result = self.config.hook.pytest_chaos_run_selftest(config=self.config, scenario=loaded, out_dir=out,
                                                            bugs=names, seed=seed, golden_cache=self.golden_cache)
        result.min_score = min_score
        add = self.node.user_properties.append
        add(("chaos.selftest.score", str(result.score)))
        for outcome in result.outcomes:
            add((f"chaos.selftest.{outcome.bug}", f"{outcome.verdict}: {outcome.why}"))
        return result


@pytest.fixture
def chaos_selftest(request, chaos_golden_cache) -> ChaosSelftest:
    """Call it with a scenario file (or Scenario): returns the SelftestResult (score, one outcome per bug)."""
    return ChaosSelftest(request.node, request.config, lambda: request.getfixturevalue("tmp_path"),
                         chaos_golden_cache, request.node.get_closest_marker("chaos"))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if call.excinfo is not None and isinstance(call.excinfo.value, ChaosRunFailed):
        report.longrepr = str(call.excinfo.value)
    return report


# ---- scenario files as test items ------------------------------------------------------------------------------
def pytest_collect_file(file_path: Path, parent):
    if file_path.suffix not in (".yaml", ".yml") or _is_run_directory(file_path.parent):
        return None
    if SCENARIO_DIR_NAME in file_path.parts[:-1] or _has_workload_key(file_path):
        return ScenarioFile.from_parent(parent, path=file_path)
    return None


def _is_run_directory(directory: Path) -> bool:
    """A chaos run directory holds a copy of its scenario; it is evidence, not a test."""
    return (directory / "plan.json").is_file() or (directory / "report.json").is_file()


def _peek(path: Path) -> str:
    """A YAML file's text for a look at collection time; '' for anything not a small regular UTF-8 file (a
    FIFO named x.yaml must not hang collection, /dev/zero linked as one must not fill memory)."""
    from chaos.scenario.yaml_text import read_scenario_text

    try:
        return read_scenario_text(Path(path))
    except InputError:
        return ""


def _has_workload_key(path: Path) -> bool:
    return re.search(r"^workload\s*:", _peek(path), re.MULTILINE) is not None


class ScenarioFile(pytest.File):
    def collect(self):
        yield ScenarioItem.from_parent(self, name=self.path.stem)


class ScenarioItem(pytest.Item):
    """One scenario file run as one test: it passes when the verdict is `pass`."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_marker("chaos")
        if (self.path.parent.name == GPU_DIR_NAME and SCENARIO_DIR_NAME in self.path.parts) or self._wants_cuda():
            self.add_marker("gpu")

    def _wants_cuda(self) -> bool:
        text = _peek(self.path)
        return re.search(r"\bdevice\s*:\s*['\"]?cuda", text) is not None or "upstream_gpu" in text

    def runtest(self) -> None:
        from chaos.scenario import load_scenario

        config = self.config
        try:
            scenario = load_scenario(self.path)
        except InputError as error:
            raise ScenarioInputError(str(error)) from None
        chosen = settings(config).out
        if chosen is not None:
            run_dir = chosen / _safe_name(self.nodeid)
        else:
            run_dir = config._tmp_path_factory.mktemp(_safe_name(self.path.stem), numbered=True)
        result = run_or_record(config, scenario, run_dir, settings(config).seed,
                               golden_cache_dir(config, config._tmp_path_factory))
        record_run_properties(self, result)
        if result.verdict != "pass":
            raise ChaosRunFailed(result, "pass")

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, (ChaosRunFailed, ScenarioInputError)):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self):
        return self.path, None, f"chaos scenario {self.path.name}"


class ScenarioInputError(Exception):
    """A scenario file that does not validate: shown as the InputError's one line."""
