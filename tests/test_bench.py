"""Benchmark smoke run: every arm measured, files written. Asserts structure, never timings."""

from __future__ import annotations

import json

from amo_engine.bench import BenchConfig, run_bench


def test_bench_smoke_writes_jsonl_table_and_plot(tmp_path):
    rows = run_bench(BenchConfig("tiny-flux", calls=2, loops=1, steps=2, warmup=1, compile=False,
                                 out_dir=tmp_path, cache_dir=tmp_path / "cache"), log=lambda s: None)
    arms = [r["arm"] for r in rows]
    assert arms == ["eager-stock-euler", "eager-hook-amo", "reference-amo", "ort-euler", "ort-amo", "ort-noattn-euler"]
    lines = (tmp_path / "tiny-flux.jsonl").read_text().splitlines()
    assert len(lines) == len(arms)
    first = json.loads(lines[0])
    assert first["env"]["torch"] and first["call_s"]["n"] == 2 and len(first["call_s"]["samples"]) == 2
    assert first["speedup_call_vs_eager"] == 1.0 and first["gflop_per_call"] > 0
    table = (tmp_path / "tiny-flux.md").read_text()
    assert "| ort-amo |" in table and "reference-style AMO" in table
    assert (tmp_path / "tiny-flux.png").stat().st_size > 1000
