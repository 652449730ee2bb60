"""The fast tier (``pytest -m "not slow"``) keeps every invariant, on every family where the test
runs per family; the slow tier holds only longer end-to-end runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FAMILIES = ("sd3", "flux", "sd35", "auraflow")
INVARIANTS = {  # test -> what it shows
    "test_backbone.py::test_velocity_equals_stock_transformer": "velocity = stock transformer",
    "test_backbone.py::test_scores_equal_explicit_full_softmax_reference": "scores = explicit softmax",
    "test_pipeline.py::test_euler_matches_the_diffusers_pipeline": "Euler = diffusers",
    "test_export.py::test_export_and_inspect_verify": "ORT = eager (inspect --verify)",
    "test_pipeline.py::test_batch_mates_never_change_an_image": "batch-mates change nothing",
    "test_samplers.py::test_renoise_preserves_the_marginal": "the renoise keeps the marginal",
    "test_inputs.py::test_identity_buffers_reproduce_the_plain_backbone": "identity inputs = plain graph",
    "test_buffers.py::test_two_requests_one_binding_and_nothing_leaks": "buffers kept, nothing leaks",
    "test_layout.py::test_no_import_circles": "the layout's rules",
}


def collected(marker: str) -> list[str]:
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", marker, "-p",
                          "no:cacheprovider"], cwd=ROOT / "tests", capture_output=True, text=True, timeout=300)
    return [line for line in out.stdout.splitlines() if "::" in line]


def test_the_fast_tier_keeps_every_invariant_on_every_family():
    fast = collected("not slow")
    for test, what in INVARIANTS.items():
        ids = [t for t in fast if t.split("[")[0].endswith(test)]
        assert ids, f"{what}: {test} is not in the fast tier"
        if any("[" in t for t in ids) and test.split("::")[0] != "test_samplers.py":
            for family in FAMILIES:
                assert any(f"[{family}" in t or f"-{family}" in t for t in ids), f"{what}: no {family} case in {ids}"
    slow = collected("slow")
    assert slow and not set(slow) & set(fast)
