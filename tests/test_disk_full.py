"""A run directory that fills up or turns read-only mid-run (a real tmpfs of 1.5 MiB mounted as --out, or
remounted read-only): `chaos run` stops with verdict error naming the cause, exit 3, no traceback, no process
left, and the report is still written (the supervisor's reserve file makes room for it) or, when nothing can
be written, the summary printed says so. Needs root to mount; skipped elsewhere, saying why."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from test_ctrl_c import finish, start
from test_supervisor_lifeline import wait_for


def _mount_tmpfs(path: Path, size: str) -> None:
    path.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        path.rmdir()
        pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {done.stderr.strip()}")


@pytest.fixture
def small_disk(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs as the run directory needs root")
    out = tmp_path / "out"
    _mount_tmpfs(out, "1536k")
    yield out
    subprocess.run(["umount", "-l", str(out)], check=False)


def test_a_full_run_directory_stops_the_run_with_error_and_a_report(tmp_path, small_disk):
    process = start(tmp_path, "disk_full")
    code, output = finish(process, tmp_path, timeout_s=120)
    assert "Traceback" not in output, output
    assert code == 3, output
    report = json.loads((small_disk / "report.json").read_text())
    assert report["verdict"] == "error"
    assert "filesystem" in report["extra"]["infrastructure_error"], report["extra"]
    assert (small_disk / "summary.txt").is_file()
    lines = (small_disk / "supervisor.jsonl").read_bytes().split(b"\n")
    assert json.loads(lines[-2])["event"] == "run_end", "the supervisor's history does not end with run_end"
    assert not (small_disk / ".chaos-reserve").exists()


def test_a_read_only_run_directory_is_refused_before_training(tmp_path, small_disk):
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    process = start(tmp_path, "read_only")
    code, output = finish(process, tmp_path, timeout_s=60)
    assert code == 2 and "Traceback" not in output, output
    assert "is not writable" in output, output
    assert not list(tmp_path.glob("fake/attempts")), "a rank was launched"


def test_when_the_report_cannot_be_written_the_summary_says_so(tmp_path, monkeypatch, capsys):
    """EROFS or ENOSPC at the report itself (the reserve already spent): the verdict still reaches the user."""
    import errno

    from chaos import cli, report
    from test_run_dir import _checkable_run

    def read_only(report_dict, run_dir):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(run_dir / "report.json"))

    monkeypatch.setattr(report, "write_report", read_only)
    _checkable_run(tmp_path / "run")
    assert cli.main(["report", str(tmp_path / "run")]) == 3
    out = capsys.readouterr().out
    assert "could not be written into the run directory (Read-only file system" in out and "ERROR" in out, out
