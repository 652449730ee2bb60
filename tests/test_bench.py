"""Benchmark: every arm measured and files written (structure, never timings); the contention
watch flags a run that shares its cores with busy processes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from amo_engine import timing
from amo_engine.bench.cpu import BenchConfig, run_bench


@pytest.mark.slow
def test_bench_smoke_writes_jsonl_table_and_plot(tmp_path):
    import importlib.util

    from amo_engine.engine.aoti import cpp_compiler

    have_aoti = cpp_compiler() is not None
    have_openvino = importlib.util.find_spec("openvino") is not None
    rows = run_bench(BenchConfig("tiny-flux", calls=2, loops=1, steps=2, warmup=1, compile=False, aoti=have_aoti, threads=1,
                                 out_dir=tmp_path, cache_dir=tmp_path / "cache"), log=lambda s: None)
    arms = [r["arm"] for r in rows]
    assert arms == ["eager-stock-euler", "eager-hook-amo", "reference-amo", "ort-euler", "ort-amo", "ort-noattn-euler",
                    *(["aoti-euler", "aoti-amo"] if have_aoti else []),
                    *(["openvino-euler", "openvino-amo"] if have_openvino else []), "ort-stages-amo"]
    lines = (tmp_path / "tiny-flux.jsonl").read_text().splitlines()
    assert len(lines) == len(arms)
    first = json.loads(lines[0])
    assert first["env"]["torch"] and first["env"]["cpu"]["cores"] and first["env"]["gemm_gflops"] > 0
    assert first["call_s"]["n"] == 2 and len(first["call_s"]["samples"]) == 2
    assert first["speedup_call_vs_eager"] == 1.0 and first["gflop_per_call"] > 0
    assert first["harness"]["alone_p50_s"] > 0 and "contended" in first["contention"]
    by = {r["arm"]: r for r in rows}
    assert by["ort-amo"]["call_s"] is None and by["ort-amo"]["call_same_as"] == "ort-euler"  # one call, timed once
    table = (tmp_path / "tiny-flux.md").read_text()
    assert "| ort-amo | same call as ort-euler" in table and "reference-style AMO" in table
    assert "GEMM" in table and "harness check" in table and "AOTInductor vs ORT" in table
    stages = by["ort-stages-amo"]  # the whole pipeline on engines: end-to-end only
    assert stages["e2e_s"]["n"] == 1 and stages["loop_s"] is None and stages["speedup_e2e_vs_eager"] > 0
    assert "| ort-stages-amo | same call as ort-euler | | | | — |" in table
    if have_openvino:  # the same graph on OpenVINO, judged against ORT by the fp32 gates
        assert any(n.startswith("openvino vs ORT parity (fp32 gates)") and n.endswith("PASS") for n in first["notes"])
        assert "OpenVINO vs ORT" in table
    if have_aoti:  # the AOTInductor arm needs a C++ compiler
        assert by["aoti-amo"]["e2e_s"]["n"] == 1 and any("AOTInductor compile" in n for n in first["notes"])
    assert (tmp_path / "tiny-flux.png").stat().st_size > 1000


def test_contention_watch_flags_busy_cores():
    """Two busy processes per core our threads need: the watch must say so, before and per round."""
    cores = timing.ContentionWatch(threads=1).cores
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2 * cores)]
    try:
        watch = timing.ContentionWatch(threads=cores)
        watch.sample_before(seconds=0.5)
        for _ in range(3):
            watch.mark_round()
        verdict = watch.verdict()
    finally:
        for p in busy:
            p.kill()
            p.wait()
    assert watch.busy_before and verdict["contended"]
    assert verdict["contended_rounds"] == [0, 1, 2]
    assert any("runnable" in reason for reason in verdict["reasons"])


def test_spread_and_contended_samples_are_marked():
    timed = timing.Timed()
    for i, wall in enumerate([1.0, 1.0, 1.0, 1.0, 2.0]):
        timed.add(wall, wall, round_index=i)
    summary = timed.summary(contended_rounds={4})
    assert summary["wide"] and summary["contended_samples"] == 1
    steady = timing.Timed()
    for i in range(5):
        steady.add(1.0, 2.0, i)
    assert not steady.summary(set())["wide"] and steady.summary(set())["cpu_per_wall"] == 2.0


@pytest.mark.slow
def test_gpu_scale_script_runs_on_the_cpu(tmp_path):
    """bench/gpu_scale.py shares the harness, zoo and family code; its CPU smoke run writes results."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[1] / "bench" / "gpu_scale.py"
    spec = importlib.util.spec_from_file_location("gpu_scale", path)
    gpu_scale = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_scale)
    out = tmp_path / "gpu_scale.json"
    assert gpu_scale.main(["--families", "sd3", "--device", "cpu", "--scale", "medium", "--size", "64", "--calls", "1",
                           "--warmup", "0", "--steps", "1", "--out", str(out)]) == 0
    (result,) = json.loads(out.read_text())
    assert result["family"] == "sd3" and result["rows"] == 2 and result["image_tokens"] == 16
    assert set(result["p50_ms"]) == {"eager-stock", "eager-hook-amo", "reference-amo"}
