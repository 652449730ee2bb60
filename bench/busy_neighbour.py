#!/usr/bin/env python3
"""A busy neighbour: ms per denoise step of the glyph model per backend, with and without another
process holding one core, before and after the thread fixes (OMP_WAIT_POLICY=PASSIVE set by
amo_engine before torch loads; thread counts from the cores this process may use).

"before" runs the package as it was at ``--before`` (a git worktree of that commit, imported ahead
of the installed one); "after" runs this checkout. Each cell is a fresh ``amo-engine generate``
process (28 steps, AMO), whose own "ms/step" line is read; cells are interleaved round-robin and the
median of ``--rounds`` is reported. The neighbour is one Python process spinning on one core; the
bench's contention watch (other runnable tasks, from /proc/stat) is sampled before every cell, so
the table shows that the neighbour was there when it should be and nothing else was.

    python bench/busy_neighbour.py --before caeb500 --rounds 3 --out bench/results    # ~15 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "a dark sign that says 'HAPPY'"
STEP = re.compile(r"([\d.]+) ms/step")


def worktree(commit: str, where: Path) -> Path:
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "--force", str(where), commit],
                   check=True, capture_output=True)
    return where


def generate(code: Path, backend: str, engine: Path, threads: int | None, steps: int, out: Path) -> float:
    """ms/step of one fresh generate process running the package at ``code``."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    env["PYTHONPATH"] = str(code)
    argv = [sys.executable, "-m", "amo_engine.cli", "generate", "--model", "glyph", "--prompt", PROMPT, "--steps",
            str(steps), "--seed", "0", "--quiet", "--out", str(out)]
    if backend != "eager":
        argv += ["--backend", backend, "--engine", str(engine)]
    if threads is not None:
        argv += ["--threads", str(threads)]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=1800)
    match = STEP.search(done.stdout + done.stderr)
    if done.returncode != 0 or match is None:
        raise RuntimeError(f"{' '.join(argv)} failed: {done.stderr[-500:]}")
    return float(match[1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--before", default="caeb500", help="the commit before the fixes (default caeb500)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=28)
    p.add_argument("--out", type=Path, default=None, help="folder for busy_neighbour.json and .md")
    args = p.parse_args(argv)

    sys.path.insert(0, str(ROOT))
    from amo_engine.timing import cpu_facts, other_runnable

    work = Path(tempfile.mkdtemp(prefix="busy-"))
    before = worktree(args.before, work / "before")
    engine = work / "engine"
    subprocess.run([sys.executable, "-m", "amo_engine.cli", "export", "--model", "glyph", "--out", str(engine),
                    "--aoti", "--aoti-weights", "model"], check=True, capture_output=True,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})
    cells = [(version, backend, threads, busy) for busy in (False, True) for version in ("before", "after")
             for backend in ("eager", "ort", "aoti") for threads in (None, 1)]
    results: dict = {cell: [] for cell in cells}
    watch: dict = {cell: [] for cell in cells}
    neighbour = None
    try:
        for _ in range(args.rounds):
            for cell in cells:
                version, backend, threads, busy = cell
                if busy and neighbour is None:
                    neighbour = subprocess.Popen([sys.executable, "-c", "while True: pass"])
                    time.sleep(1)
                if not busy and neighbour is not None:
                    neighbour.kill()
                    neighbour.wait()
                    neighbour = None
                watch[cell].append(other_runnable())
                code = before if version == "before" else ROOT
                results[cell].append(generate(code, backend, engine, threads, args.steps, work / "o.png"))
                print(cell, results[cell][-1], flush=True)
            if neighbour is not None:
                neighbour.kill()
                neighbour.wait()
                neighbour = None
    finally:
        if neighbour is not None:
            neighbour.kill()
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(before)], capture_output=True)
    facts = cpu_facts()
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    rows = []
    for version, backend, threads, busy in cells:
        samples = results[version, backend, threads, busy]
        rows.append({"version": version, "backend": backend, "threads": threads or "default", "neighbour": busy,
                     "ms_per_step_p50": statistics.median(samples), "samples": samples,
                     "other_runnable_before": watch[version, backend, threads, busy]})
    head = (f"Machine: {facts['name']} ({facts['vendor']} family {facts['family']} model {facts['model']}), "
            f"{facts['cores']} cores; {time.strftime('%Y-%m-%d %H:%M')}, git {commit} (before = {args.before}); glyph, "
            f"AMO, {args.steps} steps, {args.rounds} rounds interleaved, median ms/step of each generate process.")
    lines = [head, "", "| backend | threads | before: idle | before: busy neighbour | after: idle | "
             "after: busy neighbour | after busy / idle |", "|---|---|---|---|---|---|---|"]
    med = {(r["version"], r["backend"], r["threads"], r["neighbour"]): r["ms_per_step_p50"] for r in rows}
    for backend in ("eager", "ort", "aoti"):
        for threads in ("default", 1):
            v = [med[version, backend, threads, busy] for version in ("before", "after") for busy in (False, True)]
            lines.append(f"| {backend} | {threads} | {v[0]:.1f} | {v[1]:.1f} | {v[2]:.1f} | {v[3]:.1f} | "
                         f"{v[3] / v[2]:.2f} |")
    others = sorted({x for r in rows if not r["neighbour"] for x in r["other_runnable_before"]})
    busy_seen = sorted({x for r in rows if r["neighbour"] for x in r["other_runnable_before"]})
    lines.append(f"\nContention watch before each cell: other runnable tasks {others} without the neighbour, "
                 f"{busy_seen} with it.")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "busy_neighbour.json").write_text(json.dumps({"machine": facts, "rows": rows}, indent=1) + "\n")
        (args.out / "busy_neighbour.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
