"""Fine-tune LoRA adapters on the attention projections of chosen joint blocks of a glyph model (Paper
A's third application), on words rendered on the fly.

Only the adapters train (peft's LoRA layers through diffusers' ``add_adapter``; the model stays
frozen), with ``train-glyph``'s loss, schedule and data: a batch is a pure function of (seed, step).
The data is a fixed pool of ``samples_per_word`` renders of each word (0: a fresh render every time),
so runs can be compared at several data sizes. The adapter ships in diffusers' LoRA format
(``adapter.safetensors``: the keys ``pipe.load_lora_weights`` takes, alpha = rank so its scale is 1).

Run folder: ``checkpoint.safetensors`` + ``checkpoint.json`` (adapter, EMA, optimiser state, step),
``log.jsonl`` (loss per 25 steps), ``finetune.json`` (the settings and the command), and at the end
``adapter.safetensors``.

The settings (``FinetuneConfig``) import nothing heavy: the command line checks them before torch loads.
"""

from __future__ import annotations

import json
import shlex
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from amo_engine.model.lora import PROJECTIONS, resolve_blocks

ADAPTER = "adapter.safetensors"
CHECKPOINT = "checkpoint.safetensors"
CHECKPOINT_META = "checkpoint.json"
SETTINGS = "finetune.json"
LOG = "log.jsonl"
SAME_DATA = ("model", "words", "samples_per_word", "blocks", "projections", "rank", "batch", "seed", "warmup",
             "ema_decay", "empty_prompt_prob", "steps", "lr")  # what a resumed run must share with the first


@dataclass
class FinetuneConfig:
    run_dir: Path
    model: str = "glyph"  # a glyph model: preset name or folder
    words: str = "held-out"  # train | held-out (the model's lists) | a file, one word a line
    samples_per_word: int = 0  # renders per word in the pool (0: a new render every draw)
    blocks: str | tuple[int, ...] = "localized"  # all | localized | joint block indices
    projections: tuple[str, ...] = PROJECTIONS
    rank: int = 8
    steps: int = 600
    batch: int = 32
    lr: float = 1e-3
    warmup: int = 50
    ema_decay: float = 0.0  # 0: no EMA (the trained adapter ships)
    empty_prompt_prob: float = 0.1
    seed: int = 0
    threads: int | None = None
    checkpoint_every: int = 200
    progress: bool = True
    phases: tuple = ()  # lr_at's: one phase, (steps, lr)

    def validate(self) -> None:
        for name in ("steps", "batch", "rank", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
        if self.samples_per_word < 0:
            raise ValueError("--samples-per-word must be >= 0 (0: a new render every draw)")
        if not 0 < self.lr < 1:
            raise ValueError("--lr must be in (0, 1)")
        if not 0 <= self.ema_decay < 1:
            raise ValueError("--ema-decay must be in [0, 1) (0: no EMA)")
        if self.words not in ("train", "held-out") and not Path(self.words).is_file():
            raise ValueError(f"--words {self.words}: not train, held-out or a file (one word a line)")


def word_list(choice: str, settings) -> tuple[str, ...]:
    """``--words``: the model's training or held-out words, or a file with one word a line."""
    if choice in ("train", "held-out"):
        words = settings.vocabulary if choice == "train" else settings.held_out
        if not words:
            raise ValueError(f"this model names no {choice} words: pass --words FILE (one word a line)")
        return tuple(words)
    path = Path(choice)
    if not path.is_file():
        raise ValueError(f"--words {choice}: not train, held-out or a file (one word a line)")
    words = tuple(w.strip().upper() for w in path.read_text().splitlines() if w.strip())
    if not words:
        raise ValueError(f"--words {choice} has no words: one word a line")
    return words


def target_modules(family, config, blocks: tuple[int, ...] | None, projections) -> list[str]:
    """The transformer's module names peft adapts: ``projections`` of the joint ``blocks``."""
    from amo_engine.model.lora import layout_for

    layout = layout_for(family, config, 1, blocks, projections)
    return [f"{family.joint_block_path}.{b}.attn.{p}" for b, p in layout.layers]


class Finetuner:
    def __init__(self, cfg: FinetuneConfig):
        import torch
        from peft import LoraConfig

        from amo_engine.model.glyph.variants import VARIANTS, of_settings
        from amo_engine.model.load import load_model

        self.cfg = cfg
        self.loaded = load_model(cfg.model)
        pipe, settings = self.loaded.pipe, self.loaded.settings
        if type(pipe).__name__ != "StableDiffusion3Pipeline" or of_settings(settings) is None:
            raise ValueError(f"{cfg.model} is not a glyph model: finetune trains adapters for the glyph models "
                             f"({', '.join(VARIANTS)}) or folders written by amo-engine train-glyph")
        self.words = word_list(cfg.words, settings)
        self.blocks = resolve_blocks(cfg.blocks, settings.edit_blocks, self.loaded.source)
        pipe.transformer.requires_grad_(False)
        for name in ("text_encoder", "text_encoder_2", "text_encoder_3", "vae"):
            getattr(pipe, name).requires_grad_(False)
        self.lora_config = LoraConfig(r=cfg.rank, lora_alpha=cfg.rank, init_lora_weights=True,
                                      target_modules=target_modules(self.loaded.family, pipe.transformer.config,
                                                                    self.blocks, cfg.projections))
        with torch.random.fork_rng(devices=[]):  # the adapter's init from the seed: a run is reproducible
            torch.manual_seed(cfg.seed)
            pipe.transformer.add_adapter(self.lora_config)
        self.params = {n: p for n, p in pipe.transformer.named_parameters() if p.requires_grad}
        self.ema = {n: p.detach().clone() for n, p in self.params.items()} if cfg.ema_decay else None
        self.opt = torch.optim.AdamW(list(self.params.values()), lr=cfg.lr, weight_decay=0.0)
        self.step = 0
        cfg.phases = ((cfg.steps, cfg.lr),)
        self.variant = of_settings(settings)

    # ---------------------------------------------------------------- data

    def render(self, word_index: int, k: int, rng: np.random.Generator):
        """One sample: the k-th render of word ``word_index`` (a fixed pool), or with k < 0 a fresh one from ``rng``."""
        from amo_engine.model.glyph.render import render_batch

        own = rng if k < 0 else np.random.default_rng([self.cfg.seed, 7, word_index, k])
        tone = self.variant_tones[int(own.integers(0, len(self.variant_tones)))]
        texture = (self.variant.textures[int(own.integers(0, len(self.variant.textures)))]
                   if self.variant.textures else None)
        pixels = render_batch([self.words[word_index]], [tone], own, self.variant,
                              [texture] if texture else None)  # [1, 1, H, W]
        return tone, texture, pixels

    @property
    def variant_tones(self):
        return self.loaded.settings.tones or ("dark", "light")

    def batch_at(self, step: int):
        """(prompts, pixels [B, 3, H, W]) of step ``step``: a pure function of (seed, step)."""
        import torch

        from amo_engine.model.glyph.words import prompt_for

        cfg = self.cfg
        rng = np.random.default_rng([cfg.seed, step])
        prompts, images = [], []
        for _ in range(cfg.batch):
            w = int(rng.integers(0, len(self.words)))
            k = int(rng.integers(0, cfg.samples_per_word)) if cfg.samples_per_word else -1
            tone, texture, pixels = self.render(w, k, rng)
            empty = rng.random() < cfg.empty_prompt_prob
            prompts.append("" if empty else prompt_for(self.words[w], tone, self.variant, texture))
            images.append(pixels)
        return prompts, torch.from_numpy(np.concatenate(images)).expand(-1, 3, -1, -1)

    # ---------------------------------------------------------------- state

    def adapter_state(self, ema: bool = True) -> dict:
        """The adapter's tensors in peft's names (the EMA's when there is one and ``ema``)."""
        from peft.utils import get_peft_model_state_dict

        state = get_peft_model_state_dict(self.loaded.pipe.transformer)
        if ema and self.ema is not None:
            by_peft = {n.replace(".default", ""): t for n, t in self.ema.items()}
            state = {k: by_peft[k] for k in state}
        return {k: v.detach().contiguous() for k, v in state.items()}

    def save_checkpoint(self) -> None:
        from safetensors.torch import save_file

        from amo_engine.atomic import atomic_path

        out = {f"model.{n}": p.detach() for n, p in self.params.items()}
        out.update({f"ema.{n}": t for n, t in (self.ema or {}).items()})
        for i, p in enumerate(self.params.values()):
            for n, t in self.opt.state.get(p, {}).items():
                out[f"opt.{i}.{n}"] = t.reshape(1) if t.ndim == 0 else t
        run = self.cfg.run_dir
        with atomic_path(run / CHECKPOINT) as tmp:
            save_file({k: v.contiguous() for k, v in out.items()}, str(tmp))
        with atomic_path(run / CHECKPOINT_META) as tmp:
            tmp.write_text(json.dumps({"step": self.step, "config": self.settings()}, indent=2))

    def load_checkpoint(self) -> bool:
        import torch
        from safetensors.torch import load_file

        run = self.cfg.run_dir
        if not (run / CHECKPOINT).is_file() or not (run / CHECKPOINT_META).is_file():
            return False
        meta = json.loads((run / CHECKPOINT_META).read_text())
        mine = self.settings()
        for key in SAME_DATA:
            if meta["config"].get(key) != mine[key]:
                raise ValueError(f"{run} was trained with {key}={meta['config'].get(key)}, not {mine[key]}: "
                                 f"pass the same settings to resume, or use a new --run-dir")
        state = load_file(str(run / CHECKPOINT))
        with torch.no_grad():
            for n, p in self.params.items():
                p.copy_(state[f"model.{n}"])
            for n in self.ema or {}:
                self.ema[n].copy_(state[f"ema.{n}"])
        for i, p in enumerate(self.params.values()):
            head = f"opt.{i}."
            entries = {n[len(head):]: t for n, t in state.items() if n.startswith(head)}
            if entries:
                entries["step"] = entries["step"].reshape(())
                self.opt.state[p] = entries
        self.step = int(meta["step"])
        return True

    def settings(self) -> dict:
        cfg = asdict(self.cfg)
        cfg.update(run_dir=str(self.cfg.run_dir), blocks=list(self.blocks) if self.blocks else "all",
                   projections=list(self.cfg.projections), phases=[list(p) for p in self.cfg.phases])
        return cfg

    # ---------------------------------------------------------------- training

    def run(self) -> Path:
        import torch
        from tqdm.auto import tqdm

        from amo_engine.atomic import write_json
        from amo_engine.train.glyph import LossLog, ema_update, flow_loss, lr_at, optimise

        cfg = self.cfg
        cfg.run_dir.mkdir(parents=True, exist_ok=True)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        if self.load_checkpoint():
            print(f"resuming {cfg.run_dir} at step {self.step}", flush=True)
        write_json(cfg.run_dir / SETTINGS, {**self.settings(), "words_list": list(self.words),
                                            "command": " ".join(shlex.quote(a) for a in ["amo-engine", *sys.argv[1:]])})
        pipe = self.loaded.pipe
        pipe.transformer.train()
        bar = tqdm(total=cfg.steps, initial=self.step, desc="finetune", unit="step", disable=not cfg.progress,
                   mininterval=5)
        with (cfg.run_dir / LOG).open("a") as log:
            losses = LossLog(bar, log, every=25, keep=0.95)
            while self.step < cfg.steps:
                for group in self.opt.param_groups:
                    group["lr"] = lr_at(self.step, cfg)
                prompts, pixels = self.batch_at(self.step)
                loss = flow_loss(pipe, prompts, pixels, cfg.seed * 1_000_003 + self.step, self.variant.text_length)
                optimise(self.opt, loss)
                self.step += 1
                if self.ema is not None:
                    ema_update(list(self.ema.values()), list(self.params.values()), cfg.ema_decay, self.step)
                losses.update(self.step, loss, lr_at(self.step - 1, cfg))
                if self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps:
                    self.save_checkpoint()
        bar.close()
        return self.save_adapter()

    def save_adapter(self) -> Path:
        """adapter.safetensors in diffusers' LoRA format (written whole, then renamed into place)."""
        from amo_engine.atomic import temp_dir_beside

        run = self.cfg.run_dir
        tmp = temp_dir_beside(run / ADAPTER, ".adapter-")
        try:
            type(self.loaded.pipe).save_lora_weights(
                tmp, transformer_lora_layers=self.adapter_state(), weight_name=ADAPTER,
                transformer_lora_adapter_metadata=self.lora_config.to_dict())
            (tmp / ADAPTER).replace(run / ADAPTER)
        finally:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
        return run / ADAPTER
