"""Paper A's LoRA claim measured on a glyph model: adapters on the text-localized joint blocks vs on
all joint blocks, at an equal parameter budget, the same steps and the same data, at several data
sizes. Each adapter is read by OCR on three fixed sets: the new words it trained on (at seeds no
training image came from), new words it never saw, and the model's own words (what it broke).
Pairs (word, seed) match across arms; McNemar's exact test on exact match.

Everything here is fixed before any result is looked at (``StudyConfig``'s defaults); reruns keep
finished fine-tunes and evaluated arms (``rows.jsonl``) and do only what is missing.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from amo_engine.stats import mcnemar_exact

SETS = ("new", "unseen", "original")  # trained new words (held-out seeds) | new words never trained | the model's own
SET_TITLES = {"new": "new words, trained (held-out seeds)", "unseen": "new words, never trained",
              "original": "the model's own words"}


@dataclass
class StudyConfig:
    out_dir: Path
    run_root: Path = Path("runs/lora-study")
    model: str = "glyph"
    localized: tuple[int, ...] = (4, 5)  # localize's best pair on glyph (its rule kept all six blocks)
    localized_rank: int = 12  # 15 layers x 12 = 180 rank units ...
    all_rank: int = 4  # ... 47 layers x 4 = 188: the same parameter budget within 5%
    sizes: tuple[int, ...] = (2, 16, 128)  # renders per word in the data pool
    steps: int = 800
    batch: int = 32
    lr: float = 1e-3
    seed: int = 0
    new_words: int = 20  # the first N held-out words train; the rest stay unseen
    eval_seeds: tuple[int, ...] = (5000, 5001, 5002, 5003)
    original_words: int = 60
    original_seeds: tuple[int, ...] = (5000, 5001)
    sampler: str = "euler"
    eval_steps: int = 28
    ocr: str = "rapidocr"
    progress: bool = True

    def arms(self) -> list[tuple[str, int, tuple[int, ...] | str, int]]:
        """(name, data size, blocks, rank) per fine-tune, in run order."""
        return [(f"{arm}-s{n}", n, blocks, rank) for n in self.sizes
                for arm, blocks, rank in (("localized", self.localized, self.localized_rank),
                                          ("all", "all", self.all_rank))]


def eval_items(cfg: StudyConfig, settings) -> list[dict]:
    """The fixed (set, word, seed) items every arm is read on."""
    held, train = list(settings.held_out), list(settings.vocabulary)
    picks = [train[(i * 37) % len(train)] for i in range(cfg.original_words)]
    items = [{"set": "new", "word": w, "seed": s} for w in held[: cfg.new_words] for s in cfg.eval_seeds]
    items += [{"set": "unseen", "word": w, "seed": s} for w in held[cfg.new_words:] for s in cfg.eval_seeds]
    items += [{"set": "original", "word": w, "seed": s} for w in dict.fromkeys(picks) for s in cfg.original_seeds]
    return items


def run_study(cfg: StudyConfig, log: Callable[[str], None] = print) -> dict:
    from amo_engine.atomic import write_json
    from amo_engine.model.load import load_model
    from amo_engine.train.lora import FinetuneConfig, Finetuner

    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    settings = load_model(cfg.model).settings
    if not settings.held_out or settings.textures:
        raise ValueError(f"{cfg.model}: the study runs on a flat-ground glyph model with held-out words (glyph)")
    words_file = cfg.out_dir / "new-words.txt"
    words_file.write_text("\n".join(settings.held_out[: cfg.new_words]) + "\n")
    adapters = {}
    for name, size, blocks, rank in cfg.arms():
        run_dir = cfg.run_root / name
        log(f"fine-tune {name}: blocks {blocks}, rank {rank}, {size} renders per word, {cfg.steps} steps")
        adapters[name] = Finetuner(FinetuneConfig(
            run_dir, model=cfg.model, words=str(words_file), samples_per_word=size, blocks=blocks, rank=rank,
            steps=cfg.steps, batch=cfg.batch, lr=cfg.lr, seed=cfg.seed, progress=cfg.progress)).run()
    rows_path = cfg.out_dir / "rows.jsonl"
    done = {json.loads(line)["arm"] for line in rows_path.read_text().splitlines()} if rows_path.is_file() else set()
    for arm in ["base", *adapters]:
        if arm not in done:
            log(f"reading {arm} ...")
            _evaluate(cfg, arm, adapters.get(arm), rows_path)
    rows = [json.loads(line) for line in rows_path.read_text().splitlines()]
    result = {"config": _config_json(cfg), "summary": summarise(rows, cfg), "comparisons": compare(rows, cfg)}
    write_json(cfg.out_dir / "results.json", result)
    (cfg.out_dir / "table.md").write_text(markdown(result, cfg))
    return result


def _evaluate(cfg: StudyConfig, arm: str, adapter_path: Path | None, rows_path: Path) -> None:
    """Generate and read every item with ``arm``'s adapter (base: none); append its rows at once."""
    from amo_engine.model.adapters import read_adapter
    from amo_engine.model.glyph.locate import read_words
    from amo_engine.model.glyph.words import TONES, prompt_for
    from amo_engine.model.load import load_model
    from amo_engine.ocr import Reader, normalise
    from amo_engine.pipeline.generate import AmoPipeline, GenerateConfig

    model = load_model(cfg.model)
    adapter = (read_adapter(adapter_path, model.family, model.pipe.transformer.config)
               if adapter_path is not None else None)
    pipe, reader, items = AmoPipeline(model), Reader(cfg.ocr), eval_items(cfg, model.settings)
    rows = []
    for start in range(0, len(items), 40):
        chunk = items[start : start + 40]
        prompts = [prompt_for(it["word"], TONES[it["seed"] % 2]) for it in chunk]
        with warnings.catch_warnings():  # new words are the point here: no "not a training word" notes
            warnings.simplefilter("ignore")
            result = pipe(GenerateConfig(prompts, sampler=cfg.sampler, steps=cfg.eval_steps,
                                         seed=[it["seed"] for it in chunk], adapters=[adapter] if adapter else None))
        for it, read in zip(chunk, read_words(reader, result.images, model.settings)):
            rows.append({"arm": arm, **it, "read": read, "exact": normalise(read) == it["word"]})
    with rows_path.open("a") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))


def summarise(rows: list[dict], cfg: StudyConfig) -> list[dict]:
    out = []
    for arm in ["base", *(a for a, *_ in cfg.arms())]:
        mine = [r for r in rows if r["arm"] == arm]
        entry = {"arm": arm}
        for s in SETS:
            hits = [r["exact"] for r in mine if r["set"] == s]
            entry[s] = {"n": len(hits), "exact": sum(hits) / max(len(hits), 1)}
        out.append(entry)
    return out


def _paired(rows: list[dict], a: str, b: str, s: str) -> dict:
    by = {(r["word"], r["seed"]): r["exact"] for r in rows if r["arm"] == b and r["set"] == s}
    pairs = [(r["exact"], by[(r["word"], r["seed"])]) for r in rows
             if r["arm"] == a and r["set"] == s and (r["word"], r["seed"]) in by]
    a_only = sum(1 for x, y in pairs if x and not y)
    b_only = sum(1 for x, y in pairs if y and not x)
    return {"pairs": len(pairs), "a_only": a_only, "b_only": b_only, "p": mcnemar_exact(a_only, b_only)}


def compare(rows: list[dict], cfg: StudyConfig) -> list[dict]:
    """Localized vs all at each data size, and each adapter vs the base model, per set."""
    out = []
    for n in cfg.sizes:
        for a, b in ((f"localized-s{n}", f"all-s{n}"), (f"localized-s{n}", "base"), (f"all-s{n}", "base")):
            out += [{"a": a, "b": b, "set": s, **_paired(rows, a, b, s)} for s in SETS]
    return out


def markdown(result: dict, cfg: StudyConfig) -> str:
    c = cfg
    lines = [f"### LoRA on the localized blocks vs on all blocks: {c.model}", "",
             f"Adapters on every attention projection of joint blocks {','.join(map(str, c.localized))} (rank "
             f"{c.localized_rank}) vs of all joint blocks (rank {c.all_rank}): the same parameter budget within 5%. "
             f"{c.steps} steps, batch {c.batch}, lr {c.lr:g}, seed {c.seed}; data: the first {c.new_words} held-out words, "
             f"N renders per word. Read by {c.ocr} after {c.sampler} {c.eval_steps} steps; seeds "
             f"{','.join(map(str, c.eval_seeds))} (new words) and {','.join(map(str, c.original_seeds))} (own words).", "",
             "| arm | renders per word | " + " | ".join(f"{SET_TITLES[s]} (n)" for s in SETS) + " |",
             "|---|---|" + "---|" * len(SETS)]
    for e in result["summary"]:
        size = e["arm"].rsplit("-s", 1)[1] if "-s" in e["arm"] else "—"
        lines.append(f"| {e['arm'].rsplit('-s', 1)[0]} | {size} | "
                     + " | ".join(f"{100 * e[s]['exact']:.1f}% ({e[s]['n']})" for s in SETS) + " |")
    lines += ["", "Paired (same word and seed), exact McNemar: a right & b wrong / the reverse, p.", "",
              "| a | b | " + " | ".join(SET_TITLES[s] for s in SETS) + " |", "|---|---|" + "---|" * len(SETS)]
    by = {}
    for comp in result["comparisons"]:
        by.setdefault((comp["a"], comp["b"]), {})[comp["set"]] = comp
    for (a, b), sets in by.items():
        lines.append(f"| {a} | {b} | " + " | ".join(
            f"{sets[s]['a_only']} / {sets[s]['b_only']}, p={sets[s]['p']:.3g}" for s in SETS) + " |")
    return "\n".join(lines) + "\n"


def _config_json(cfg: StudyConfig) -> dict:
    from dataclasses import asdict

    return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()}
