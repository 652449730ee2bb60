"""The OCR evaluation's report from its rows: a summary per (steps, c, sampler) with paired counts
against Euler, the OCR ceiling on clean renders, a markdown table, a plot and an image grid."""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path

from ..atomic import atomic_path
from .metrics import mcnemar_exact


def load_rows(path: Path) -> list[dict]:
    rows = []
    for line in Path(path).read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a kill
            continue
    return rows


def ocr_ceiling(words: list[str], tones, engine: str, seed: int = 0) -> dict:
    """Exact match and NED of the same OCR on clean renders of ``words`` (jittered like training)."""
    import numpy as np

    from ..glyph.render import render
    from ..ocr import Reader, ned, normalise

    reader = Reader(engine)
    rng = np.random.default_rng(seed)
    tones = tones or ("dark",)
    images = [render(w, tones[i % len(tones)], rng)[0] for i, w in enumerate(words)]
    reads = reader(images)
    return {"n": len(words), "exact": sum(normalise(r) == normalise(w) for r, w in zip(reads, words)) / len(words),
            "ned": statistics.fmean(ned(normalise(r), normalise(w)) for r, w in zip(reads, words))}


def summarise(rows: list[dict]) -> list[dict]:
    """One record per (steps, c, sampler, in_vocab): EM, NED, outside-text measures, and the pairs
    against Euler at the same steps (fixed = Euler wrong and this right; broken = the reverse)."""
    groups = defaultdict(list)
    for r in rows:
        groups[r["steps"], r["c"], r["sampler"], r["in_vocab"]].append(r)
    euler = {(r["steps"], r["word"], r["seed"]): r["exact"] for r in rows if r["sampler"] == "euler"}
    out = []
    for (steps, c, sampler, in_vocab), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][3],
                                                                                      _ORDER.get(kv[0][2], 9))):
        paired = [(euler[steps, r["word"], r["seed"]], r["exact"]) for r in rs if (steps, r["word"], r["seed"]) in euler]
        fixed = sum(1 for e, s in paired if not e and s)
        broken = sum(1 for e, s in paired if e and not s)
        out.append({
            "steps": steps, "c": c, "sampler": sampler, "in_vocab": in_vocab, "n": len(rs),
            "exact": statistics.fmean(r["exact"] for r in rs), "ned": statistics.fmean(r["ned"] for r in rs),
            "ground_std": _mean(r["ground_std"] for r in rs), "ground_hf": _mean(r["ground_hf"] for r in rs),
            "pairs": len(paired), "fixed": fixed, "broken": broken,
            "p_mcnemar": mcnemar_exact(fixed, broken) if sampler != "euler" else None,
        })
    return out


_ORDER = {"euler": 0, "overshoot": 1, "amo": 2}


def _mean(values) -> float:
    vals = [v for v in values if v == v]  # drop NaN (no ground found)
    return statistics.fmean(vals) if vals else float("nan")


def markdown(summary: list[dict], ceiling: dict | None) -> str:
    lines = ["| steps | c | sampler | words | images | exact match | NED | fixed / broken vs Euler | McNemar p | "
             "ground std | ground HF |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in summary:
        vs = "—" if s["sampler"] == "euler" else f"{s['fixed']} / {s['broken']}"
        p = "—" if s["p_mcnemar"] is None else f"{s['p_mcnemar']:.3g}"
        c = "—" if s["sampler"] == "euler" else f"{s['c']:g}"
        lines.append(f"| {s['steps']} | {c} | {s['sampler']} | {'train' if s['in_vocab'] else 'held-out'} | {s['n']} | "
                     f"{100 * s['exact']:.1f}% | {s['ned']:.3f} | {vs} | {p} | {s['ground_std']:.2f} | "
                     f"{s['ground_hf']:.2f} |")
    if ceiling:
        lines.append(f"\nOCR ceiling on clean renders of the same {ceiling['n']} words: exact match "
                     f"{100 * ceiling['exact']:.1f}%, NED {ceiling['ned']:.3f}. Ground std / HF: noise and mean "
                     "|Laplacian| (grey levels) left and right of the sign; clean renders have 0 / 0.")
    return "\n".join(lines) + "\n"


def plot(summary: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = sorted({(s["steps"], s["c"]) for s in summary if s["in_vocab"] and s["sampler"] != "euler"})
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), dpi=100)
    width = 0.8 / 3
    for k, sampler in enumerate(("euler", "overshoot", "amo")):
        em, hf = [], []
        for steps, c in settings:
            match = [s for s in summary if s["in_vocab"] and s["steps"] == steps and s["sampler"] == sampler
                     and (sampler == "euler" or s["c"] == c)]
            em.append(100 * match[0]["exact"] if match else 0)
            hf.append(match[0]["ground_hf"] if match else 0)
        xs = [i + (k - 1) * width for i in range(len(settings))]
        axes[0].bar(xs, em, width, label=sampler)
        axes[1].bar(xs, hf, width, label=sampler)
    labels = [f"{steps} steps, c={c:g}" for steps, c in settings]
    for ax, title in zip(axes, ("OCR exact match (%)", "ground high-frequency energy")):
        ax.set_xticks(range(len(settings)), labels)
        ax.set_title(title)
    axes[0].legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def grid(rows: list[dict], out_dir: Path, path: Path, steps: int, c: float, seed: int = 0, n_words: int = 16) -> None:
    """Rows = words, columns = samplers at (steps, c), each cell the image with its OCR reading
    (green exact, red wrong); failures are shown as they are."""
    from PIL import Image, ImageDraw

    cells = {(r["word"], r["sampler"]): r for r in rows
             if r["steps"] == steps and r["seed"] == seed and (r["sampler"] == "euler" or r["c"] == c)}
    words = sorted({w for w, _ in cells})[:n_words]
    samplers = [s for s in ("euler", "overshoot", "amo") if any((w, s) in cells for w in words)]
    if not words:
        return
    scale, label_w, label_h = 2, 70, 12
    first = Image.open(out_dir / cells[words[0], samplers[0]]["image"])
    cw, ch = first.width * scale, first.height * scale + label_h
    canvas = Image.new("RGB", (label_w + cw * len(samplers), 14 + ch * len(words)), "white")
    draw = ImageDraw.Draw(canvas)
    for j, sampler in enumerate(samplers):
        header = sampler if sampler == "euler" else f"{sampler}, c = {c:g}"
        draw.text((label_w + j * cw + 4, 2), f"{header} ({steps} steps)", fill="black")
    for i, word in enumerate(words):
        y = 14 + i * ch
        draw.text((4, y + ch // 3), word, fill="black")
        for j, sampler in enumerate(samplers):
            r = cells.get((word, sampler))
            if r is None:
                continue
            img = Image.open(out_dir / r["image"]).convert("RGB").resize((cw, ch - label_h), Image.NEAREST)
            canvas.paste(img, (label_w + j * cw, y))
            draw.text((label_w + j * cw + 2, y + ch - label_h), f"OCR: {r['read'] or '-'}",
                      fill=(0, 140, 0) if r["exact"] else (200, 0, 0))
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG")


def write_report(out_dir: Path, ocr: str = "rapidocr", grid_steps: int | None = None, grid_c: float | None = None,
                 tones=None) -> str:
    """summary.json, summary.md, plot.png and grid.png in ``out_dir`` from its rows; returns the table."""
    rows = load_rows(out_dir / "rows.jsonl")
    if not rows:
        raise ValueError(f"{out_dir / 'rows.jsonl'} has no rows: run amo-engine eval first")
    summary = summarise(rows)
    words = sorted({r["word"] for r in rows})
    ceiling = ocr_ceiling(words, tones, ocr)
    table = markdown(summary, ceiling)
    with atomic_path(out_dir / "summary.json") as tmp:
        tmp.write_text(json.dumps({"summary": summary, "ocr_ceiling": ceiling}, indent=2) + "\n")
    with atomic_path(out_dir / "summary.md") as tmp:
        tmp.write_text(table)
    plot(summary, out_dir / "plot.png")
    steps = grid_steps if grid_steps is not None else rows[0]["steps"]
    c = grid_c if grid_c is not None else next((r["c"] for r in rows if r["sampler"] != "euler"), 2.0)
    grid(rows, out_dir, out_dir / "grid.png", steps, c)
    return table
