"""report.html renders in a real browser: Debian's chromium, headless, screenshots the page of a synthetic
run (no training) analysed by chaos.runner.analyze; the PNG must show more than one colour and the DOM
must hold the loss plot (<svg>) and the checks table (<table>). Skips, saying why, without chromium."""

from __future__ import annotations

import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest

from chaos import golden as golden_module
from synthetic_runs import SyntheticRun, golden_loss
from chaos.runner import analyze
from chaos.schedule import plan_to_json

CHROMIUM = next((shutil.which(name) for name in ("chromium", "chromium-browser") if shutil.which(name)), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (Debian: apt-get install chromium)")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def synthetic_run_dir(run_dir: Path) -> Path:
    """A failing run (resumed from an older checkpoint, diverging from step 7), with what analyze reads."""
    run = SyntheticRun(run_dir)
    kill = run.fault("f1", step=10, phase="backward", ranks=(1,))
    run.attempt(1, resume_from=0, last_step=9, end="killed", fault=kill)
    run.attempt(2, resume_from=8, last_step=12, end="complete", loss=lambda s: golden_loss(s) + (0.25 if s >= 10 else 0))
    run.finish()
    (run_dir / "plan.json").write_text(plan_to_json(run.plan))
    (run_dir / "scenario.yaml").write_text(
        "name: synthetic-browser\nworkload: {world_size: 2, tensor_parallel: 2, train_iters: 12, save_interval: 4}\n"
        "restart: {max_restarts: 3, hang_timeout_s: 10}\n")
    golden_path = run_dir / "golden" / "synthetic.json"
    golden_module.write_golden(golden_module.Golden(metrics=run.golden_metrics()), golden_path)
    (run_dir / "golden.json").write_text(f'{{"path": "{golden_path}", "mode": "exact", "recorded_here": false}}')
    return run_dir


def png_colours(path: Path, sample_rows: int = 200) -> set[bytes]:
    """Distinct pixel values in a sample of rows of an 8-bit RGB/RGBA PNG (a tiny decoder: zlib + filters)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, chunks, header = 8, [], None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            chunks.append(body)
        pos += 12 + length
    width, height, depth, colour_type = header[:4]
    assert depth == 8 and colour_type in (2, 6), f"unexpected PNG format depth={depth} colour type={colour_type}"
    channels = 3 if colour_type == 2 else 4
    raw = zlib.decompress(b"".join(chunks))
    stride = width * channels
    previous = bytearray(stride)
    colours: set[bytes] = set()
    every = max(1, height // sample_rows)
    for y in range(height):
        kind = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for x in range(stride):
            a = line[x - channels] if x >= channels else 0
            b = previous[x]
            c = previous[x - channels] if x >= channels else 0
            if kind == 1:
                line[x] = (line[x] + a) & 0xFF
            elif kind == 2:
                line[x] = (line[x] + b) & 0xFF
            elif kind == 3:
                line[x] = (line[x] + (a + b) // 2) & 0xFF
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[x] = (line[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        if y % every == 0:
            colours.update(bytes(line[x:x + channels]) for x in range(0, stride, channels * 4))
        previous = line
    return colours


def chromium(*arguments: str, user_data_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={user_data_dir}", *arguments],
                          capture_output=True, text=True, timeout=120)


def test_report_html_renders_in_headless_chromium(tmp_path):
    run_dir = synthetic_run_dir(tmp_path / "run")
    result = analyze(run_dir)
    assert result.verdict == "fail"  # the synthetic run diverges: the page shows a failing check
    page = run_dir / "report.html"
    assert page.is_file(), "chaos.runner.analyze did not write report.html"

    screenshot = tmp_path / "report.png"
    shot = chromium(f"--screenshot={screenshot}", "--window-size=1200,1600", page.as_uri(),
                    user_data_dir=tmp_path / "profile")
    assert screenshot.is_file(), f"chromium wrote no screenshot (exit {shot.returncode}): {shot.stderr[-2000:]}"
    assert screenshot.stat().st_size > 10_000, "screenshot too small to show a report"
    assert len(png_colours(screenshot)) > 8, "the screenshot is (almost) a single colour: nothing rendered"

    dom = chromium("--dump-dom", page.as_uri(), user_data_dir=tmp_path / "profile-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "<svg" in dom.stdout and "<table" in dom.stdout
    assert "trajectory" in dom.stdout  # the checks table names the failing check
