"""The OCR evaluation's report from its rows: a summary per (steps, c, sampler) with paired counts
against Euler, paired comparisons of AMO against overshoot at the same c, the ceilings on clean
renders, markdown tables, a plot, an image grid per c and a figure of one seed across c.

Binary outcomes (word exact, texture class right, image right = both) are compared with the exact
McNemar test on discordant pairs; the continuous texture measures (HF ratio, spectral distance)
with the Wilcoxon signed-rank test on paired differences. Pairs are (steps, word, seed): the same
prompt and initial noise.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path

from amo_engine.atomic import atomic_path
from amo_engine.stats import mcnemar_exact
from amo_engine.rules import SAMPLERS

SAMPLER_ORDER = {"euler": 0, "overshoot": 1, "amo": 2}
BINARY = ("exact", "texture_right", "image_right")  # the last two on textured models only
CONTINUOUS = ("hf_ratio", "spectral_distance")


def load_rows(path: Path) -> list[dict]:
    rows = []
    for line in Path(path).read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a kill
            continue
    return rows


def ocr_ceiling(words: list[str], settings, engine: str, seed: int = 0) -> dict:
    """Exact match and NED of the same OCR, reading the same way, on clean renders of ``words``
    (jittered like training; on a textured model each over the textures in turn)."""
    import numpy as np

    from amo_engine.model.glyph.locate import read_words
    from amo_engine.model.glyph.render import render
    from amo_engine.model.glyph.variants import GLYPH, of_settings
    from amo_engine.ocr import Reader, ned, normalise

    variant = of_settings(settings) or GLYPH
    reader = Reader(engine)
    rng = np.random.default_rng(seed)
    tones = settings.tones or ("dark",)
    textures = variant.textures or (None,)
    images = [render(w, tones[i % len(tones)], rng, variant, textures[(i // len(tones)) % len(textures)])[0]
              for i, w in enumerate(words)]
    reads = read_words(reader, images, settings)
    return {"n": len(words), "exact": sum(normalise(r) == normalise(w) for r, w in zip(reads, words)) / len(words),
            "ned": statistics.fmean(ned(normalise(r), normalise(w)) for r, w in zip(reads, words))}


def _mean(values) -> float:
    vals = [float(v) for v in values if v == v]  # drop NaN (no ground found; HF ratio of plain)
    return statistics.fmean(vals) if vals else float("nan")


def _key(r: dict) -> tuple:
    return r["steps"], r["word"], r["seed"]


def mcnemar_pair(a: list[dict], b: list[dict], field: str) -> dict:
    """Paired binary outcome ``field``: a right and b wrong (``a_only``), the reverse, McNemar p."""
    bm = {_key(r): r[field] for r in b}
    pairs = [(r[field], bm[_key(r)]) for r in a if _key(r) in bm]
    a_only = sum(1 for x, y in pairs if x and not y)
    b_only = sum(1 for x, y in pairs if y and not x)
    return {"pairs": len(pairs), "a_only": a_only, "b_only": b_only, "p": mcnemar_exact(a_only, b_only)}


def wilcoxon_pair(a: list[dict], b: list[dict], field: str) -> dict:
    """Paired continuous measure ``field``: mean of a - b over pairs where both are defined,
    the share of pairs where a > b, and the two-sided Wilcoxon signed-rank p."""
    from scipy.stats import wilcoxon

    bm = {_key(r): r[field] for r in b}
    diffs = [r[field] - bm[_key(r)] for r in a if _key(r) in bm and r[field] == r[field] and bm[_key(r)] == bm[_key(r)]]
    nonzero = [d for d in diffs if d != 0]
    p = float(wilcoxon(nonzero).pvalue) if len(nonzero) >= 2 else 1.0
    return {"pairs": len(diffs), "mean_diff": _mean(diffs), "a_higher": sum(d > 0 for d in diffs) / max(len(diffs), 1),
            "p": p}


def _arms(rows: list[dict]) -> tuple[dict, dict]:
    """Rows by (steps, c, sampler, in_vocab), and Euler's by (steps, in_vocab): Euler ignores c, so
    its rows pair with every c's at the same steps."""
    groups, euler = defaultdict(list), defaultdict(list)
    for r in rows:
        groups[r["steps"], r["c"], r["sampler"], r["in_vocab"]].append(r)
        if r["sampler"] == "euler":
            euler[r["steps"], r["in_vocab"]].append(r)
    return groups, euler


def summarise(rows: list[dict]) -> list[dict]:
    """One record per (steps, c, sampler, in_vocab): means of every measure, and the word's pairs
    against Euler at the same steps (fixed = Euler wrong and this right; broken = the reverse)."""
    groups, euler = _arms(rows)
    textured = any("texture" in r for r in rows)
    out = []
    for (steps, c, sampler, in_vocab), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][3],
                                                                                      SAMPLER_ORDER.get(kv[0][2], 9))):
        vs = mcnemar_pair(rs, euler[steps, in_vocab], "exact")
        record = {
            "steps": steps, "c": c, "sampler": sampler, "in_vocab": in_vocab, "n": len(rs),
            "exact": statistics.fmean(r["exact"] for r in rs), "ned": statistics.fmean(r["ned"] for r in rs),
            "pairs": vs["pairs"], "fixed": vs["a_only"], "broken": vs["b_only"],
            "p_mcnemar": vs["p"] if sampler != "euler" else None,
        }
        if textured:
            record |= {"texture_acc": _mean(r["texture_right"] for r in rs), "hf_ratio": _mean(r["hf_ratio"] for r in rs),
                       "spectral_distance": _mean(r["spectral_distance"] for r in rs),
                       "image_right": _mean(r["image_right"] for r in rs)}
        else:
            record |= {"ground_std": _mean(r["ground_std"] for r in rs), "ground_hf": _mean(r["ground_hf"] for r in rs)}
        out.append(record)
    return out


def comparisons(rows: list[dict]) -> list[dict]:
    """Paired comparisons per (steps, c, in_vocab): AMO vs overshoot, and each vs Euler, on every
    binary outcome and texture measure the rows carry."""
    by, euler = _arms(rows)
    out = []
    for steps, c, in_vocab in sorted({(s, c, v) for s, c, smp, v in by if smp != "euler"}):
        arms = {"overshoot": by.get((steps, c, "overshoot", in_vocab), []), "amo": by.get((steps, c, "amo", in_vocab), []),
                "euler": euler[steps, in_vocab]}
        for a, b in (("amo", "overshoot"), ("amo", "euler"), ("overshoot", "euler")):
            if not arms[a] or not arms[b]:
                continue
            fields = [f for f in BINARY if f in arms[a][0]]
            record = {"steps": steps, "c": c, "in_vocab": in_vocab, "a": a, "b": b}
            for f in fields:
                record[f] = mcnemar_pair(arms[a], arms[b], f)
            for f in CONTINUOUS:
                if f in arms[a][0]:
                    record[f] = wilcoxon_pair(arms[a], arms[b], f)
            out.append(record)
    return out


def markdown(summary: list[dict], ceiling: dict | None, texture_ceiling: dict | None = None) -> str:
    textured = bool(summary) and "texture_acc" in summary[0]
    extra = ["texture class", "HF ratio", "spectral dist", "image right"] if textured else ["ground std", "ground HF"]
    head = ["steps", "c", "sampler", "words", "images", "exact match", "NED", "fixed / broken vs Euler", "McNemar p", *extra]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in summary:
        vs = "—" if s["sampler"] == "euler" else f"{s['fixed']} / {s['broken']}"
        p = "—" if s["p_mcnemar"] is None else f"{s['p_mcnemar']:.3g}"
        c = "—" if s["sampler"] == "euler" else f"{s['c']:g}"
        cells = [str(s["steps"]), c, s["sampler"], "train" if s["in_vocab"] else "held-out", str(s["n"]),
                 f"{100 * s['exact']:.1f}%", f"{s['ned']:.3f}", vs, p]
        if textured:
            cells += [f"{100 * s['texture_acc']:.1f}%", f"{s['hf_ratio']:.3f}", f"{s['spectral_distance']:.2f}",
                      f"{100 * s['image_right']:.1f}%"]
        else:
            cells += [f"{s['ground_std']:.2f}", f"{s['ground_hf']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    if ceiling:
        lines.append(f"\nOCR ceiling on clean renders of the same {ceiling['n']} words: exact match "
                     f"{100 * ceiling['exact']:.1f}%, NED {ceiling['ned']:.3f}.")
    if textured and texture_ceiling:
        lines.append(f"Texture ceiling on {texture_ceiling['n']} clean renders the classifier was not fitted on: "
                     f"class {100 * texture_ceiling['texture_acc']:.1f}%, HF ratio {texture_ceiling['hf_ratio']:.3f}, "
                     f"spectral distance {texture_ceiling['spectral_distance']:.2f}. Texture measures are on the "
                     "ground band (the cell rows above and below the sign); HF ratio = mean |Laplacian| over clean "
                     "renders of the class and tone (1 = as sharp, < 1 smoothed; textured classes only); spectral "
                     "distance to the class's clean spectrum (about 1 for a clean render); image right = word exact "
                     "and texture class right.")
    elif not textured:
        lines.append("Ground std / HF: noise and mean |Laplacian| (grey levels) left and right of the sign; clean "
                     "renders have 0 / 0.")
    return "\n".join(lines) + "\n"


def comparisons_markdown(comps: list[dict]) -> str:
    """One row per comparison: for binary outcomes a-only / b-only (McNemar p), for measures the
    mean difference a - b (Wilcoxon p)."""
    if not comps:
        return ""
    fields = [f for f in (*BINARY, *CONTINUOUS) if f in comps[0]]
    names = {"exact": "word exact", "texture_right": "texture class", "image_right": "image right",
             "hf_ratio": "HF ratio", "spectral_distance": "spectral dist"}
    head = ["steps", "c", "words", "a vs b", "pairs", *[names[f] for f in fields]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for comp in comps:
        cells = [str(comp["steps"]), f"{comp['c']:g}", "train" if comp["in_vocab"] else "held-out",
                 f"{comp['a']} vs {comp['b']}", str(comp[fields[0]]["pairs"])]
        for f in fields:
            v = comp[f]
            cells.append(f"{v['a_only']} / {v['b_only']} (p {v['p']:.2g})" if f in BINARY
                         else f"{v['mean_diff']:+.3f} (p {v['p']:.2g})")
        lines.append("| " + " | ".join(cells) + " |")
    return ("\nPaired (same word, seed and noise): binary outcomes as a-only / b-only right (exact McNemar p); "
            "texture measures as mean a - b (Wilcoxon signed-rank p).\n\n" + "\n".join(lines) + "\n")


def plot(summary: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    textured = bool(summary) and "texture_acc" in summary[0]
    panels = ([("exact", "word exact match (%)", 100), ("texture_acc", "texture class right (%)", 100),
               ("hf_ratio", "ground HF ratio (1 = clean)", 1), ("image_right", "image right (%)", 100)] if textured
              else [("exact", "OCR exact match (%)", 100), ("ground_hf", "ground high-frequency energy", 1)])
    settings = sorted({(s["steps"], s["c"]) for s in summary if s["in_vocab"] and s["sampler"] != "euler"})
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.8), dpi=100)
    width = 0.8 / 3
    for k, sampler in enumerate(SAMPLERS):
        xs = [i + (k - 1) * width for i in range(len(settings))]
        for ax, (field, _, scale) in zip(axes, panels):
            values = []
            for steps, c in settings:
                match = [s for s in summary if s["in_vocab"] and s["steps"] == steps and s["sampler"] == sampler
                         and (sampler == "euler" or s["c"] == c)]
                values.append(scale * match[0][field] if match else 0)
            ax.bar(xs, values, width, label=sampler)
    labels = [f"{steps} st, c={c:g}" for steps, c in settings]
    for ax, (_, title, _) in zip(axes, panels):
        ax.set_xticks(range(len(settings)), labels, fontsize=8)
        ax.set_title(title)
    axes[0].legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def _label(r: dict) -> tuple[str, bool]:
    """The caption of an image cell and whether it is right (word, and texture where measured)."""
    if "texture" in r:
        return f"{r['read'] or '-'} / {r['texture_read']}", r["image_right"]
    return f"OCR: {r['read'] or '-'}", r["exact"]


def _paste_grid(columns: list[tuple[str, dict]], words: list[str], out_dir: Path, path: Path, title: str) -> None:
    """Rows = words, columns = (header, {word: row}); each cell the image and its reading (green right, red wrong)."""
    from PIL import Image, ImageDraw

    first = next(r for _, cells in columns for r in cells.values())
    size = Image.open(out_dir / first["image"]).size
    scale, label_w, label_h = 2, 70, 12
    cw, ch = size[0] * scale, size[1] * scale + label_h
    canvas = Image.new("RGB", (label_w + cw * len(columns), 28 + ch * len(words)), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 2), title, fill="black")
    for j, (header, _) in enumerate(columns):
        draw.text((label_w + j * cw + 4, 15), header, fill="black")
    for i, word in enumerate(words):
        y = 28 + i * ch
        draw.text((4, y + ch // 3), word, fill="black")
        for j, (_, cells) in enumerate(columns):
            r = cells.get(word)
            if r is None:
                continue
            img = Image.open(out_dir / r["image"]).convert("RGB").resize((cw, ch - label_h), Image.NEAREST)
            canvas.paste(img, (label_w + j * cw, y))
            text, right = _label(r)
            draw.text((label_w + j * cw + 2, y + ch - label_h), text, fill=(0, 140, 0) if right else (200, 0, 0))
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG")


def _pick_words(rows: list[dict], n_words: int) -> list[str]:
    """Words for a grid: on a textured model one per texture class in turn, else alphabetical."""
    words = sorted({r["word"] for r in rows})
    if not any("texture" in r for r in rows):
        return words[:n_words]
    by_texture = defaultdict(list)
    for r in sorted(rows, key=lambda r: r["word"]):
        if r["word"] not in by_texture[r["texture"]]:
            by_texture[r["texture"]].append(r["word"])
    picked, k = [], 0
    while len(picked) < min(n_words, len(words)):
        for texture in sorted(by_texture):
            if k < len(by_texture[texture]) and by_texture[texture][k] not in picked and len(picked) < n_words:
                picked.append(by_texture[texture][k])
        k += 1
    return picked


def grid(rows: list[dict], out_dir: Path, path: Path, steps: int, c: float, seed: int = 0, n_words: int = 16) -> None:
    """Rows = words, columns = samplers at (steps, c), each image with its reading; failures shown as they are."""
    rows = [r for r in rows if r["steps"] == steps and r["seed"] == seed and (r["sampler"] == "euler" or r["c"] == c)
            and r["in_vocab"]]
    if not rows:
        return
    words = _pick_words(rows, n_words)
    columns = []
    for sampler in SAMPLERS:
        cells = {r["word"]: r for r in rows if r["sampler"] == sampler}
        if cells:
            columns.append((sampler if sampler == "euler" else f"{sampler}, c = {c:g}", cells))
    _paste_grid(columns, words, out_dir, path, f"{steps} steps, seed {seed}")


def figure_across_c(rows: list[dict], out_dir: Path, path: Path, steps: int, seed: int = 0, n_words: int = 7) -> bool:
    """The same seed under Euler, then overshoot and AMO at every c the rows hold (train words)."""
    rows = [r for r in rows if r["steps"] == steps and r["seed"] == seed and r["in_vocab"]]
    cs = sorted({r["c"] for r in rows if r["sampler"] != "euler"})
    columns = [("euler", {r["word"]: r for r in rows if r["sampler"] == "euler"})]
    for c in cs:
        for sampler in ("overshoot", "amo"):
            columns.append((f"{sampler} c={c:g}", {r["word"]: r for r in rows if r["sampler"] == sampler and r["c"] == c}))
    columns = [col for col in columns if col[1]]
    words = [w for w in _pick_words(rows, 64) if all(w in cells for _, cells in columns)][:n_words]
    if len(columns) < 2 or not words:
        return False
    _paste_grid(columns, words, out_dir, path, f"{steps} steps, seed {seed}: the same noise under every sampler")
    return True


def write_report(out_dir: Path, settings, ocr: str = "rapidocr") -> str:
    """summary.json, summary.md, plot.png, grid.png (the setting with the most images), a grid per
    (steps, c) and figure.png (one seed across every c) in ``out_dir`` from its rows; returns the tables."""
    from amo_engine.model.glyph.variants import of_settings
    from amo_engine.eval.texture import ceiling as texture_ceiling

    rows = load_rows(out_dir / "rows.jsonl")
    if not rows:
        raise ValueError(f"{out_dir / 'rows.jsonl'} has no rows: run amo-engine eval first")
    summary = summarise(rows)
    comps = comparisons(rows)
    words = sorted({r["word"] for r in rows})
    ceiling = ocr_ceiling(words, settings, ocr)
    variant = of_settings(settings)
    tex = texture_ceiling(variant.name) if variant is not None and variant.textures else None
    table = markdown(summary, ceiling, tex) + comparisons_markdown(comps)
    with atomic_path(out_dir / "summary.json") as tmp:
        tmp.write_text(json.dumps({"summary": summary, "comparisons": comps, "ocr_ceiling": ceiling,
                                   "texture_ceiling": tex}, indent=2) + "\n")
    with atomic_path(out_dir / "summary.md") as tmp:
        tmp.write_text(table)
    plot(summary, out_dir / "plot.png")
    settings_run = sorted({(r["steps"], r["c"]) for r in rows if r["sampler"] != "euler"})
    for steps, c in settings_run:
        grid(rows, out_dir, out_dir / f"grid-s{steps}-c{c:g}.png", steps, c)
    main_steps = max(r["steps"] for r in rows)
    main_c = max(settings_run, key=lambda sc: (sc[0] == main_steps, sum(_key(r)[0] == sc[0] and r["c"] == sc[1]
                                                                         for r in rows)))[1] if settings_run else 2.0
    grid(rows, out_dir, out_dir / "grid.png", main_steps, main_c)
    figure_across_c(rows, out_dir, out_dir / "figure.png", main_steps)
    return table
