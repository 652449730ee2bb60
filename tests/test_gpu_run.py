"""The prepared GPU run is checked before any GPU minute: its smoke mode runs every arm on the CPU at
tiny scale and writes a record per arm (nothing timed is asserted), the wrapper names the command the
device runs, and the tree plus the carried wheels fit the device tool's 64 MiB."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CARRY_LIMIT = 64 * 2**20


@pytest.mark.slow
def test_smoke_runs_every_arm_on_the_cpu_and_writes_each_as_it_finishes(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_run.py"), "--smoke", "--out", str(tmp_path),
                           "--commit", "test"], capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "gpu_run.jsonl").read_text().splitlines()]
    assert records[0]["arm"] == "env" and records[0]["commit"] == "test" and records[-1]["arm"] == "end"
    status = {(r.get("family"), r["arm"]): r.get("status") for r in records}
    for family in ("flux", "sd3"):
        for arm in ("setup", "eager-stock", "compile-stock", "aoti-hook", "loops"):
            assert status[family, arm] == "ok", (family, arm, records)
        assert status[family, "aoti-hook-graph"] == "skipped"  # no CUDA here: said, not failed
    assert status["flux", "fp8-compile-stock"] == "skipped"
    loops = next(r for r in records if r["arm"] == "loops" and r["family"] == "flux")["loops"]
    assert {"compile-euler", "aoti-euler", "aoti-amo"} <= set(loops) and loops["amo_over_euler"] > 0
    assert all(len(r["samples_ms"]) == 2 for r in records if "samples_ms" in r)


def test_an_arm_over_its_limit_or_the_budget_is_written_and_the_next_runs(tmp_path, monkeypatch):
    sys.path.insert(0, str(ROOT / "bench"))
    import gpu_run

    run = gpu_run.Run(tmp_path, budget=600, device="cpu", scale="tiny", size=64, calls=1, warmup=0, steps=2,
                      text_tokens=16)
    monkeypatch.setitem(gpu_run.ARMS, "eager-stock", 1)
    monkeypatch.setattr(gpu_run, "MIN_ARM_S", 0.5)

    def forever():
        while True:
            pass

    assert run.arm("flux", "eager-stock", forever) is None
    assert run.arm("flux", "setup", lambda: {"x": 1}) == {"x": 1}
    assert run.arm("flux", "loops", lambda: 1 / 0) is None
    run.budget = 0
    assert run.arm("flux", "compile-stock", lambda: {"never": True}) is None
    records = [json.loads(line) for line in (tmp_path / "gpu_run.jsonl").read_text().splitlines()]
    assert [r["status"] for r in records] == ["timeout", "ok", "failed", "skipped"]
    assert "ZeroDivisionError" in records[2]["note"] and "budget spent" in records[3]["note"]


def test_the_wrapper_names_the_run_and_the_carry_fits():
    wrapper = (ROOT / "bench" / "gpu_run.sh").read_text()
    assert "bench/gpu_run.py --out \"$OUT\" --budget 520" in wrapper and "timeout 560" in wrapper
    wheels = {}
    for line in (ROOT / "bench" / "gpu_carry.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, size = line.split()
            wheels[name] = int(size)
    assert {n.split("-")[0] for n in wheels} == {"diffusers", "importlib_metadata", "torchao"}
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True).stdout.split(b"\0")
    tree = sum((ROOT / f.decode()).stat().st_size for f in tracked if f and (ROOT / f.decode()).is_file())
    assert tree + sum(wheels.values()) <= CARRY_LIMIT, f"tree {tree} + wheels {sum(wheels.values())} bytes"
