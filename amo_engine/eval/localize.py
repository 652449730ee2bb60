"""Text-layer localization (Paper A's sweep): which joint blocks' text K/V decide the rendered word.

For word pairs (A, B) rendered with the model's prompt template, every setting (a set of joint
blocks and a start step) runs one loop over [A_1..A_k ; B_1..B_k] in which each A_i takes B_i's
text K/V at those blocks (``TextSwap``), every pair from the same noise. Each edited A is read
back and compared with the plain A of the same noise:

* **flip**: OCR reads B's word exactly; **flip where B is legible**: the same over the pairs whose
  plain B image OCR reads as B (a swap cannot make B's word more legible than B's own image);
  **NED to B**: normalised edit distance of the reading to B;
* **kept**: PSNR and SSIM against the plain A, over the whole image and outside the text region
  (the image patches whose AMO span map in the plain A is above its mean), as floats (the paper's
  code took MSE on uint8 and wrapped).

Order: each block alone from step 0; then the best 2..``combine`` blocks together (blocks ranked by
NED to B: flips are rare where B's own image is hard to read, the distance moves first); then start
steps for the chosen set. Choice, as the paper's "few blocks that flip the text": among settings
whose NED to B is within ``NED_TOLERANCE`` of the best, the fewest blocks (then the latest start,
which keeps more of A), ties broken by PSNR outside the text. Written to the model's settings on
request.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

DEFAULT_TEMPLATE = "a sign that says '{word}'"
NED_TOLERANCE = 0.1  # settings this close to the best NED to B count as equally good at changing the word


@dataclass
class LocalizeConfig:
    out_dir: Path
    model: str = "glyph"
    words: str = "train"  # train | held-out | a file
    pairs: int = 24
    template: str | None = None  # default: the model's prompt template (first tone), else DEFAULT_TEMPLATE
    steps: int = 28
    sampler: str = "euler"
    seed: int = 0
    batch: int = 16  # pairs per loop
    combine: int = 3
    start_steps: tuple[int, ...] = (0, 1, 2, 4, 8)
    ocr: str = "rapidocr"
    write_settings: bool = False
    cache_dir: Path | None = None
    progress: bool = True

    def validate(self) -> None:
        if self.pairs < 1 or self.batch < 1 or self.steps < 1:
            raise ValueError("--pairs, --batch and --steps must be >= 1")
        if self.combine < 1:
            raise ValueError("--combine must be >= 1 (1: single blocks only)")
        bad = [s for s in self.start_steps if not 0 <= s < self.steps]
        if bad or not self.start_steps:
            raise ValueError(f"--start-steps must be step indices 0..{self.steps - 1}, got {list(self.start_steps)}")
        if self.template is not None and "{word}" not in self.template:
            raise ValueError(f"--template {self.template!r} has no {{word}} to fill")
        if self.words not in ("train", "held-out") and not Path(self.words).is_file():
            raise ValueError(f"--words takes train, held-out or a file of words; {self.words} is none of these")


@dataclass
class Setting:
    blocks: tuple[int, ...]
    start: int
    stage: str  # "single", "combined", "start"
    rows: list[dict] = field(default_factory=list)  # per pair: read, flip, ned, psnr..., ssim...
    images: list = field(default_factory=list, repr=False)  # the edited A images, pair order

    def summary(self) -> dict:
        def mean(key):
            return float(np.mean([r[key] for r in self.rows]))

        legible = [r["flip"] for r in self.rows if r["b_legible"]]
        return {"blocks": list(self.blocks), "start": self.start, "stage": self.stage, "pairs": len(self.rows),
                "flip": mean("flip"), "flip_b_legible": float(np.mean(legible)) if legible else float("nan"),
                "b_legible_pairs": len(legible), "kept_a_word": mean("kept_a_word"), "ned_to_b": mean("ned_to_b"),
                "psnr": mean("psnr"), "psnr_outside": mean("psnr_outside"), "ssim": mean("ssim"),
                "ssim_outside": mean("ssim_outside")}

    def rank(self) -> tuple:
        """Sort key: closest to B's word first (NED), then flips, then kept outside the text."""
        s = self.summary()
        return (s["ned_to_b"], -s["flip"], -s["psnr_outside"])


def choose(settings: Sequence[Setting]) -> Setting:
    """The fewest blocks, then the latest start, among settings within NED_TOLERANCE of the best NED."""
    best_ned = min(s.summary()["ned_to_b"] for s in settings)
    close = [s for s in settings if s.summary()["ned_to_b"] <= best_ned + NED_TOLERANCE]
    return min(close, key=lambda s: (len(s.blocks), -s.start, -s.summary()["psnr_outside"]))


def word_pairs(words: Sequence[str], n: int) -> list[tuple[str, str]]:
    """Consecutive words paired (w0, w1), (w2, w3), ...: ``n`` pairs of different words."""
    pairs = [(words[2 * i], words[2 * i + 1]) for i in range(len(words) // 2) if words[2 * i] != words[2 * i + 1]]
    if not pairs:
        raise ValueError("the word list needs at least two different words")
    return pairs[:n]


def prompt_template(cfg: LocalizeConfig, settings) -> str:
    if cfg.template is not None:
        return cfg.template
    if settings.prompt_template:
        return settings.prompt_template.replace("{tone}", (settings.tones or ("",))[0]).replace("  ", " ")
    return DEFAULT_TEMPLATE


def _psnr(a: np.ndarray, b: np.ndarray, where: np.ndarray) -> float:
    """PSNR in dB over the pixels ``where`` (float images in 0..255; identical: 100)."""
    mse = float(((a - b) ** 2)[where].mean()) if where.any() else 0.0
    return 100.0 if mse == 0 else 10 * np.log10(255.0**2 / mse)


def kept(edited, plain, text_region: np.ndarray) -> dict[str, float]:
    """PSNR / SSIM of ``edited`` against ``plain`` (PIL images): whole image and outside the text."""
    from skimage.metrics import structural_similarity

    a = np.asarray(edited.convert("L"), dtype=np.float64)
    b = np.asarray(plain.convert("L"), dtype=np.float64)
    _, ssim_map = structural_similarity(a, b, data_range=255.0, full=True)
    outside = ~text_region
    everywhere = np.ones_like(outside)
    return {"psnr": _psnr(a, b, everywhere), "psnr_outside": _psnr(a, b, outside),
            "ssim": float(ssim_map.mean()), "ssim_outside": float(ssim_map[outside].mean()) if outside.any() else 1.0}


def text_region(attn_map, height: int, width: int) -> np.ndarray:
    """[H, W] bool: pixels of the patches whose span map is above the map's mean."""
    import torch

    m = attn_map.float()
    patches = (m > m.mean()).float()[None, None]  # [1, 1, h, w]
    return torch.nn.functional.interpolate(patches, size=(height, width), mode="nearest")[0, 0].numpy() > 0.5


def run_localize(cfg: LocalizeConfig, log: Callable[[str], None] = print) -> dict:
    from amo_engine.pipeline.text_swap import TextSwap
    from amo_engine.eval.runner import word_list
    from amo_engine.model.load import load_model
    from amo_engine.ocr import Reader, ned, normalise
    from amo_engine.pipeline.generate import AmoPipeline, GenerateConfig

    cfg.validate()
    reader = Reader(cfg.ocr)
    model = load_model(cfg.model, cache_dir=cfg.cache_dir)
    n_blocks = model.family.joint_block_count(model.pipe.transformer.config)
    pairs = word_pairs(word_list(cfg.words, model.settings, cfg.model), cfg.pairs)
    template = prompt_template(cfg, model.settings)
    pipe = AmoPipeline(model)
    log(f"localize {cfg.model}: {n_blocks} joint blocks, {len(pairs)} pairs, template {template!r}, "
        f"{cfg.sampler} {cfg.steps} steps, seed {cfg.seed}")

    def run(blocks: tuple[int, ...], start: int, swap: bool) -> tuple[list, list, list]:
        """A images (edited, or plain without ``swap``), B images and A's span maps, over all pairs in
        batches of [A_1..A_k ; B_1..B_k], each pair from its own noise."""
        a_images, b_images, maps = [], [], []
        for first in range(0, len(pairs), cfg.batch):
            chunk = pairs[first : first + cfg.batch]
            k = len(chunk)
            prompts = [template.format(word=a) for a, _ in chunk] + [template.format(word=b) for _, b in chunk]
            donors = tuple(k + i for i in range(k)) * 2 if swap else tuple(range(2 * k))
            text_swap = TextSwap(donors, blocks, start, noise_groups=tuple(range(k)) * 2)
            result = pipe(GenerateConfig(prompts, steps=cfg.steps, sampler=cfg.sampler, seed=cfg.seed,
                                         text_swap=text_swap))
            a_images += result.images[:k]
            b_images += result.images[k:]
            maps += list(result.attn_map[:k])
        return a_images, b_images, maps

    plain_a, plain_b, maps = run((0,), 0, swap=False)  # identity donors: every pair's plain images
    regions = [text_region(m, img.height, img.width) for m, img in zip(maps, plain_a)]
    a_legible = [normalise(r) == normalise(a) for r, (a, _) in zip(reader(plain_a), pairs)]
    b_legible = [normalise(r) == normalise(b) for r, (_, b) in zip(reader(plain_b), pairs)]
    baseline = {"a_read_as_a": float(np.mean(a_legible)), "b_read_as_b": float(np.mean(b_legible))}
    log(f"plain images: OCR reads A as A {baseline['a_read_as_a']:.0%}, B as B {baseline['b_read_as_b']:.0%}")

    settings: list[Setting] = []

    def measure(blocks: tuple[int, ...], start: int, stage: str) -> Setting:
        edited, _, _ = run(blocks, start, swap=True)
        setting = Setting(blocks, start, stage, images=edited)
        for image, read, plain_img, region, (a, b), legible in zip(edited, reader(edited), plain_a, regions, pairs,
                                                                    b_legible):
            setting.rows.append({"a": a, "b": b, "read": read, "b_legible": legible,
                                 "flip": float(normalise(read) == normalise(b)),
                                 "kept_a_word": float(normalise(read) == normalise(a)), "ned_to_b": ned(read, b),
                                 **kept(image, plain_img, region)})
        settings.append(setting)
        s = setting.summary()
        log(f"  {stage:8s} blocks {','.join(map(str, blocks)):12s} start {start}: flip {s['flip']:.0%} "
            f"({s['flip_b_legible']:.0%} where B is legible), NED to B "
            f"{s['ned_to_b']:.2f}, PSNR outside {s['psnr_outside']:.1f} dB, SSIM outside {s['ssim_outside']:.3f}")
        return setting

    singles = [measure((b,), 0, "single") for b in range(n_blocks)]
    order = [s.blocks[0] for s in sorted(singles, key=Setting.rank)]
    combined = [measure(tuple(sorted(order[:k])), 0, "combined") for k in range(2, min(cfg.combine, n_blocks) + 1)]
    best_set = choose(singles + combined).blocks
    starts = [measure(best_set, s, "start") for s in cfg.start_steps if s != 0]
    at_zero = next(s for s in singles + combined if s.blocks == best_set)
    best = choose([at_zero] + starts)
    result = {"model": cfg.model, "template": template, "sampler": cfg.sampler, "steps": cfg.steps, "seed": cfg.seed,
              "pairs": [list(p) for p in pairs], "joint_blocks": n_blocks, "plain": baseline,
              "settings": [s.summary() for s in settings], "rows": [{**s.summary(), "per_pair": s.rows} for s in settings],
              "best": {"blocks": list(best.blocks), "start": best.start}}
    _write(cfg.out_dir, result, singles, plain_a, plain_b, best)
    if cfg.write_settings:
        _write_settings(model.folder, best)
        log(f"wrote edit_blocks {list(best.blocks)} and edit_start_step {best.start} to {model.folder}/amo_engine.json")
    log(f"best: --edit-blocks {','.join(map(str, best.blocks))} --edit-start {best.start}")
    return result


def _write_settings(folder: Path, best: Setting) -> None:
    from amo_engine.atomic import atomic_path
    from amo_engine.model.presets import SETTINGS_FILE

    path = Path(folder) / SETTINGS_FILE
    data = json.loads(path.read_text()) if path.is_file() else {}
    data.update(edit_blocks=list(best.blocks), edit_start_step=best.start)
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(data, indent=2) + "\n")


def markdown_table(result: dict) -> str:
    lines = [f"### text-layer localization: {result['model']} ({result['joint_blocks']} joint blocks)", "",
             f"{len(result['pairs'])} word pairs, prompt {result['template']!r}, {result['sampler']} "
             f"{result['steps']} steps, seed {result['seed']}. Plain images: OCR reads A as A "
             f"{result['plain']['a_read_as_a']:.0%}, B as B {result['plain']['b_read_as_b']:.0%}.", "",
             "| stage | blocks | start | flip to B | flip where B legible | A word kept | NED to B | PSNR dB | "
             "PSNR outside text | SSIM | SSIM outside text |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in result["settings"]:
        lines.append(f"| {s['stage']} | {','.join(map(str, s['blocks']))} | {s['start']} | {s['flip']:.0%} | "
                     f"{s['flip_b_legible']:.0%} ({s['b_legible_pairs']}) | "
                     f"{s['kept_a_word']:.0%} | {s['ned_to_b']:.2f} | {s['psnr']:.1f} | {s['psnr_outside']:.1f} | "
                     f"{s['ssim']:.3f} | {s['ssim_outside']:.3f} |")
    best = result["best"]
    lines += ["", f"Chosen: joint blocks {','.join(map(str, best['blocks']))} from step {best['start']}: the fewest "
                  f"blocks, then the latest start, within {NED_TOLERANCE} of the best NED to B (ties: PSNR outside "
                  "the text).", ""]
    return "\n".join(lines)


def _write(out: Path, result: dict, singles: list[Setting], plain_a, plain_b, best: Setting) -> None:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "table.md").write_text(markdown_table(result))
    _plot(singles, out / "plot.png", result["model"])
    _grid(plain_a, plain_b, singles, best, out / "grid.png")


def _plot(singles: list[Setting], path: Path, model: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    blocks = [s.blocks[0] for s in singles]
    summaries = [s.summary() for s in singles]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.bar([b - 0.2 for b in blocks], [s["flip"] for s in summaries], width=0.4, label="flip to B (OCR exact)")
    ax.bar([b + 0.2 for b in blocks], [1 - s["ned_to_b"] for s in summaries], width=0.4, label="1 - NED to B")
    ax.set_xlabel("joint block swapped alone (from step 0)")
    ax.set_ylim(0, 1)
    ax.set_xticks(blocks)
    twin = ax.twinx()
    twin.plot(blocks, [s["psnr_outside"] for s in summaries], "k.-", label="PSNR outside text (dB)")
    twin.set_ylabel("PSNR outside text (dB)")
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(f"text-layer localization: {model}")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _grid(plain_a, plain_b, singles: list[Setting], best: Setting, path: Path, pairs: int = 4) -> None:
    """Rows: the first pairs; columns: plain A, plain B, A edited at each single block, the best setting."""
    from PIL import Image, ImageDraw

    columns = [("A", plain_a), ("B", plain_b)] + [(f"block {s.blocks[0]}", s.images) for s in singles]
    columns.append((f"best {','.join(map(str, best.blocks))}@{best.start}", best.images))
    w, h = plain_a[0].size
    label = 14
    sheet = Image.new("RGB", (w * len(columns), label + h * min(pairs, len(plain_a))), "white")
    draw = ImageDraw.Draw(sheet)
    for c, (name, images) in enumerate(columns):
        draw.text((c * w + 2, 1), name, fill="black")
        for r, image in enumerate(images[:pairs]):
            sheet.paste(image.convert("RGB"), (c * w, label + r * h))
    sheet.save(path)
