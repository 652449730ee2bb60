"""Render a word list x seeds with each sampler at equal model evaluations, read every image with
OCR, and append one JSON line per image as it comes (an interrupted run keeps its rows; a rerun
skips what is done).

Pairing: the image of word ``w`` (its index in the list) and seed ``s`` draws its noise from its own
generator seeded ``1000 * s + w``, so every sampler starts from the same initial noise for the same
word, whatever chunk it runs in (chunks run at a fixed batch, padded); Euler, overshoot and AMO all
make ``steps`` model evaluations per image. (Results written before per-row generators drew one
generator per chunk: a rerun gives other images with the same statistics.)
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from amo_engine.rules import SAMPLERS, check_sampler

ROWS_FILE = "rows.jsonl"
DEFAULT_TEMPLATE = "A sign that says '{word}'"


@dataclass
class EvalConfig:
    model: str = "glyph"
    out_dir: Path = Path("eval-out")
    words: str = "train"  # "train" | "held-out" | a text file with one word per line
    max_words: int | None = None
    seeds: int = 3
    first_seed: int = 0  # seeds first_seed .. first_seed + seeds - 1 (a split of seeds apart from the report's)
    samplers: tuple[str, ...] = SAMPLERS
    c: float = 2.0
    steps: int = 28
    guidance: float | None = None
    batch: int = 16  # prompts per call (an ORT engine must be exported with --batch equal to this)
    ocr: str = "rapidocr"
    backend: str = "eager"
    engine: Path | None = None
    device: str = "cpu"
    cache_dir: Path | None = None
    progress: bool = True
    _word_list: list[str] = field(default_factory=list, repr=False)

    def validate(self) -> None:
        for sampler in self.samplers:
            check_sampler(sampler)
        if self.seeds < 1 or self.steps < 1 or self.batch < 1 or self.first_seed < 0:
            raise ValueError("--seeds, --steps and --batch must be >= 1, --first-seed >= 0")
        if not self.c >= 0:
            raise ValueError(f"--c must be >= 0, got {self.c}")
        if self.words not in ("train", "held-out") and not Path(self.words).is_file():
            raise ValueError(f"--words takes train, held-out or a file of words; {self.words} is none of these")
        if self.backend != "eager" and self.engine is None:
            from amo_engine.engine.hints import engine_folder_for, export_command

            raise ValueError(f"--backend {self.backend} needs --engine DIR, exported with: "
                             f"{export_command(self.model, engine_folder_for(self.model), batch=self.batch)}")


def word_list(source: str, settings, model: str, max_words: int | None = None) -> list[str]:
    """``source``: train | held-out (the model's lists, from its settings) | a file, one word a line."""
    if source == "train":
        words = list(settings.vocabulary or ())
        if not words:
            raise ValueError(f"{model} names no training vocabulary: pass --words FILE")
    elif source == "held-out":
        words = list(settings.held_out or ())
        if not words:
            raise ValueError(f"{model} names no held-out words: pass --words FILE")
    else:
        words = [w.strip() for w in Path(source).read_text().splitlines() if w.strip()]
    return words[:max_words] if max_words else words


def prompt_of(settings, word: str, index: int) -> tuple[str, str | None, str | None]:
    """(prompt, tone, texture) for the ``index``-th image of ``word``: tones alternate over words and
    seeds, and on a textured model the textures cycle every len(tones) images, so every (tone,
    texture) pair comes up equally often."""
    template = settings.prompt_template or DEFAULT_TEMPLATE
    tones, textures = settings.tones or (), settings.textures or ()
    tone = tones[index % len(tones)] if tones else None
    texture = textures[(index // max(len(tones), 1)) % len(textures)] if textures else None
    return template.format(word=word, tone=tone or "", texture=texture or ""), tone, texture


def done_keys(path: Path) -> set[tuple]:
    keys = set()
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                r = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a kill: redo that image
                continue
            keys.add((r["word"], r["seed"], r["sampler"], r["c"], r["steps"]))
    return keys


def run_eval(cfg: EvalConfig) -> Path:
    """Generate, OCR and append rows; returns the rows file."""
    from amo_engine.model.backbone import HookConfig
    from amo_engine.engine.backends import open_backend
    from amo_engine.engine.folder import open_engine
    from amo_engine.model.load import load_model
    from amo_engine.ocr import Reader
    from amo_engine.pipeline.generate import AmoPipeline

    cfg.validate()
    reader = Reader(cfg.ocr)  # fails early with the install line when OCR is missing
    model = load_model(cfg.model, "fp32", cfg.device, cfg.cache_dir)
    settings = model.settings
    words = word_list(cfg.words, settings, cfg.model, cfg.max_words)
    vocab = set(settings.vocabulary or words)
    out_of_vocab = sorted(set(words) - vocab)
    if out_of_vocab:
        print(f"amo-engine eval: note: {len(out_of_vocab)} of {len(words)} words are out of {cfg.model}'s vocabulary "
              f"(e.g. {', '.join(out_of_vocab[:5])}); they measure generalisation", flush=True)
    engine = None if cfg.backend == "eager" else open_engine(cfg.engine, model)
    hook = HookConfig() if engine is None else engine.hook
    with open_backend(cfg.backend, engine, model, hook, device=cfg.device) as backend:
        return _render_and_read(cfg, AmoPipeline(model, hook, backend), reader, words, vocab)


def _render_and_read(cfg: EvalConfig, pipe, reader, words: list[str], vocab: set[str]) -> Path:
    """Generate every (seed, word chunk, sampler) job not yet in the rows file, OCR it, append rows."""
    import numpy as np
    from tqdm.auto import tqdm

    from amo_engine.model.glyph.locate import read_words
    from amo_engine.model.glyph.variants import of_settings
    from amo_engine.ocr import ned, normalise
    from amo_engine.pipeline.generate import GenerateConfig, save_png
    from amo_engine.eval.metrics import outside_text
    from amo_engine.eval.texture import fit_reference

    settings = pipe.model.settings
    textured = of_settings(settings) if settings.textures else None
    if settings.textures and textured is None:
        raise ValueError(f"{cfg.model} names ground textures but is not a glyph model this version knows")
    reference = fit_reference(textured.name) if textured else None
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    rows_path = cfg.out_dir / ROWS_FILE
    done = done_keys(rows_path)
    chunks = [words[i : i + cfg.batch] for i in range(0, len(words), cfg.batch)]
    jobs = [(seed, ci, chunk, sampler) for seed in range(cfg.first_seed, cfg.first_seed + cfg.seeds) for ci, chunk in enumerate(chunks)
            for sampler in cfg.samplers
            if any((w, seed, sampler, cfg.c, cfg.steps) not in done for w in chunk)]
    bar = tqdm(total=sum(len(j[2]) for j in jobs), desc=f"eval c={cfg.c:g} steps={cfg.steps}", unit="img",
               disable=not cfg.progress)
    with rows_path.open("a") as out:
        if rows_path.stat().st_size and not rows_path.read_bytes().endswith(b"\n"):
            out.write("\n")  # a line cut by a kill stays alone (and is skipped when read)
        for seed, ci, chunk, sampler in jobs:
            first = ci * cfg.batch  # index of the chunk's first word in the list
            prompts, tones, textures = zip(*(prompt_of(settings, w, first + j + seed) for j, w in enumerate(chunk)))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # out-of-vocabulary notes: said once above
                result = pipe(GenerateConfig(prompts=list(prompts), sampler=sampler, c=cfg.c, steps=cfg.steps,
                                             guidance=cfg.guidance, seed=[1000 * seed + first + j for j in range(len(chunk))],
                                             pad_images_to=cfg.batch))
            images = result.images[: len(chunk)]
            reads = read_words(reader, images, settings)
            for word, tone, texture, image, read in zip(chunk, tones, textures, images, reads):
                rel = Path("images") / f"c{cfg.c:g}-s{cfg.steps}" / sampler / f"{word}-{seed}.png"
                save_png(image, cfg.out_dir / rel)
                grey = np.asarray(image.convert("L"))
                exact = normalise(read) == normalise(word)
                row = {"word": word, "tone": tone, "seed": seed, "sampler": sampler, "c": cfg.c, "steps": cfg.steps,
                       "ran": result.sampler, "read": read, "exact": exact,
                       "ned": ned(normalise(read), normalise(word)), "in_vocab": word in vocab, "image": str(rel)}
                if reference is None:
                    row |= outside_text(grey)
                else:
                    texture_row = reference.measure(grey, texture, tone)
                    row |= {"texture": texture, **texture_row,
                            "image_right": exact and texture_row["texture_right"]}
                out.write(json.dumps(row) + "\n")
                out.flush()
            bar.update(len(chunk))
    bar.close()
    return rows_path
