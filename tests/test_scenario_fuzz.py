"""Hostile scenario files (tests/scenario_fuzz.py) through `chaos validate` and `chaos run`: every one exits
0 or 2, promptly, with the file named and no traceback; none that `validate` refuses ever launches a rank."""

from __future__ import annotations

import contextlib
import io
import signal
import time
from pathlib import Path

import pytest

from chaos import cli
from tests.scenario_fuzz import generate

FUZZ_SEED = 20261203
FUZZ_COUNT = 1200
PER_FILE_S = 10.0
"""Generous for one file (they take milliseconds); what it catches is a validation that never ends."""


class _TooSlow(Exception):
    pass


def _call(argv: list[str]) -> tuple[int | None, str, BaseException | None, float]:
    """cli.main in-process: (exit code, stderr+stdout, the exception that escaped if any, seconds)."""
    out = io.StringIO()

    def on_alarm(signum, frame):
        raise _TooSlow(f"no answer within {PER_FILE_S} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, PER_FILE_S)
    start = time.monotonic()
    try:
        with contextlib.redirect_stderr(out), contextlib.redirect_stdout(out):
            code = cli.main(argv)
        return code, out.getvalue(), None, time.monotonic() - start
    except BaseException as error:  # noqa: BLE001 - the test reports whatever escaped
        return None, out.getvalue(), error, time.monotonic() - start
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="module")
def fuzz_files(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("fuzz")
    paths = []
    for case in generate(FUZZ_SEED, FUZZ_COUNT):
        path = folder / f"{case.name}.yaml"
        case.write(path)
        paths.append(path)
    return paths


def test_generator_makes_enough_distinct_files(fuzz_files):
    assert len(fuzz_files) >= 1000
    contents = {p.read_bytes() for p in fuzz_files if p.is_file() and not p.is_symlink() and p.stat().st_size < 1e6}
    assert len(contents) >= 900, "the mutations repeat themselves: the fuzzer tries less than it claims"


@pytest.fixture(scope="module")
def validated(fuzz_files) -> dict[Path, tuple]:
    """`chaos validate FILE` for every file, once: {path: (exit code, output, escaped exception, seconds)}."""
    return {path: _call(["validate", str(path)]) for path in fuzz_files}


def test_validate_answers_every_file_with_exit_0_or_2_and_no_traceback(fuzz_files, validated):
    problems, refused, accepted = [], 0, 0
    for path in fuzz_files:
        code, output, error, seconds = validated[path]
        if error is not None or code not in (0, 2):
            problems.append(f"{path.name}: exit {code}, {type(error).__name__ if error else ''} {error or ''}"[:300])
        elif code == 2:
            refused += 1
            if str(path) not in output:
                problems.append(f"{path.name}: the error does not name the file: {output[:200]!r}")
            if len(output) > 20_000:
                problems.append(f"{path.name}: a {len(output)}-character error message")
        else:
            accepted += 1
    assert not problems, f"{len(problems)} of {len(fuzz_files)} files:\n" + "\n".join(problems[:40])
    # the generator is hostile: most files must be refused, or it is not testing the loader
    assert refused > 0.6 * len(fuzz_files), (refused, accepted)


def test_validate_reports_every_file_of_a_batch(fuzz_files):
    """One call with many files answers for each of them, not only up to the first bad one."""
    batch = [p for p in fuzz_files if p.name.startswith("mutation-")][:60]
    good = Path(__file__).resolve().parents[1] / "scenarios" / "random_seeded.yaml"
    code, output, error, _ = _call(["validate", *map(str, batch), str(good)])
    assert error is None
    assert code == 2
    for path in batch + [good]:
        assert str(path) in output, f"{path} not reported"
    assert f"{good}: ok" in output


def test_run_refuses_what_validate_refuses_without_launching(fuzz_files, validated, tmp_path, monkeypatch):
    """`chaos run` on a refused file exits 2 before any rank exists (a launch would fail the test)."""
    from chaos.supervisor import launcher

    def no_launch(*args, **kwargs):
        raise AssertionError("a rank was launched for a scenario that validate refuses")

    monkeypatch.setattr(launcher, "_spawn", no_launch)  # every launcher starts its processes here
    refused = [path for path in fuzz_files if validated[path][0] == 2]
    for i, path in enumerate(refused[:: max(1, len(refused) // 150)]):
        code, output, error, _ = _call(["run", str(path), "--out", str(tmp_path / f"run-{i}")])
        assert error is None and code == 2, f"{path.name}: exit {code}, {error!r}, {output[-300:]}"
        assert not (tmp_path / f"run-{i}").exists(), f"{path.name}: a run directory was made for refused input"


MUST_REFUSE = (
    # what the ranks would reject (or train nonsense with) half a minute after launching
    "hidden-dropout-1.5", "attention-dropout-neg", "lr-negative", "lr-nan", "lr-inf", "seed-negative", "seed-huge",
    "beta-2", "eps-zero", "min-lr-above-lr", "warmup-not-below-decay", "data-path-missing", "data-path-nul", "world-size-huge",
    # settings that check nothing or never end
    "empty-faults-map", "null-workload", "false-workload", "inf-mtbf", "nan-mtbf", "inf-grace", "inf-after-s",
    "inf-tolerance", "many-restarts", "tiny-mtbf-many-restarts",
    # names that would leave the runs/ folder or hide the run directory
    "slash-name", "nul-name", "empty-name", "bidi-name",
    # not a scenario file
    "huge-file", "fifo", "dev-zero", "dev-null", "directory", "latin1", "utf16", "lone-surrogate", "random-bytes",
    "huge-int-seed", "list-key", "list-preset", "deep-list", "alias-bomb-in-preset", "alias-bomb-in-faults",
)


@pytest.mark.parametrize("name", MUST_REFUSE)
def test_named_hazards_are_refused_with_the_file_named(fuzz_files, name):
    path = next(p for p in fuzz_files if p.name == f"{name}.yaml")
    code, output, error, _ = _call(["validate", str(path)])
    assert error is None and code == 2, (code, error, output[-300:])
    assert str(path) in output


def test_a_cuda_scenario_is_refused_before_launch_on_a_machine_without_gpus(fuzz_files, tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # no GPU visible, also on a GPU machine
    path = next(p for p in fuzz_files if p.name == "cuda-on-cpu.yaml")
    code, output, error, _ = _call(["run", str(path), "--out", str(tmp_path / "run")])
    assert error is None and code == 2, (code, error, output[-300:])
    assert "0 visible" in output and not (tmp_path / "run").exists()
