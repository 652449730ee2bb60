"""Train the glyph model: rectified flow in diffusers' conventions on words rendered on the fly.

``x_sigma = (1 - sigma) * x0 + sigma * noise``, the transformer predicts ``noise - x0`` at
``timestep = 1000 * sigma``, sigma drawn logit-normal (SD3's training recipe). The transformer and
the T5 encoder train; the CLIP encoders stay frozen at their seeded init. 10% of prompts are empty
so classifier-free guidance works. Every batch is drawn from (seed, step) alone, so a resumed run
sees the same data as an uninterrupted one. EMA weights are what ship.

Run folder: ``checkpoint.safetensors`` + ``checkpoint.json`` (weights, EMA, optimiser state, step),
``log.jsonl`` (loss per 50 steps, OCR checks), and at the end the pipeline folder ``model/``.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from amo_engine.model.glyph.model import GUIDANCE
from amo_engine.model.glyph.render import render_batch
from amo_engine.model.glyph.variants import GLYPH, Variant, variant
from amo_engine.model.glyph.words import TONES, TRAIN_WORDS, prompt_for

CHECKPOINT = "checkpoint.safetensors"
CHECKPOINT_META = "checkpoint.json"
LOG = "log.jsonl"


@dataclass
class TrainConfig:
    run_dir: Path
    model: str = "glyph"  # which glyph model: glyph | glyph-scene (variants.py)
    init_from: str | None = None  # a glyph pipeline folder (or "glyph": the shipped one) to start from
    steps: int = 5000  # what the shipped weights used
    batch: int = 64
    lr: float = 7e-4
    warmup: int = 200
    ema_decay: float = 0.999
    empty_prompt_prob: float = 0.1
    seed: int = 0
    threads: int | None = None  # torch threads (default: torch's choice)
    workers: int = 0  # processes that render batches ahead of the optimiser (0: render in the training loop)
    device: str = "cpu"  # cpu | cuda[:N]: batches are drawn on the CPU either way, so a run is the same data on both
    checkpoint_every: int = 500
    check_every: int = 500  # OCR check of sampled images (0: never)
    check_images: int = 16
    progress: bool = True
    extend: bool = False  # resume a finished run and train on to ``steps`` in a new phase at ``lr``
    phases: tuple[tuple[int, float], ...] = ()  # (end step, peak lr) per phase; set from steps/lr

    def validate(self) -> None:
        for name in ("steps", "batch", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
        if not 0 < self.lr < 1:
            raise ValueError("--lr must be in (0, 1)")
        if not 0 <= self.empty_prompt_prob < 1:
            raise ValueError("--empty-prompt-prob must be in [0, 1)")
        if self.device != "cpu" and not (self.device.startswith("cuda") and torch.cuda.is_available()):
            raise ValueError(f"--device {self.device}: no CUDA device here; use --device cpu")
        variant(self.model)  # names the choices when unknown

    @property
    def variant(self) -> Variant:
        return variant(self.model)


def sample_batch(seed: int, step: int, batch: int, empty_prob: float, model: Variant = GLYPH):
    """(prompts, pixels [B, 3, H, W] in [-1, 1]) for one step, a pure function of (seed, step)."""
    rng = np.random.default_rng([seed, step])
    words = [TRAIN_WORDS[i] for i in rng.integers(0, len(TRAIN_WORDS), batch)]
    tones = [TONES[i] for i in rng.integers(0, len(TONES), batch)]
    textures = [model.textures[i] for i in rng.integers(0, len(model.textures), batch)] if model.textures else None
    pixels = torch.from_numpy(render_batch(words, tones, rng, model, textures)).expand(-1, 3, -1, -1)  # [B, 3, H, W]
    empty = rng.random(batch) < empty_prob
    prompts = ["" if e else prompt_for(w, t, model, x) for w, t, x, e in
               zip(words, tones, textures or [None] * batch, empty)]
    return prompts, pixels


def flow_loss(pipe, prompts: list[str], pixels: torch.Tensor, noise_seed: int, text_length: int) -> torch.Tensor:
    """The rectified-flow loss of one batch on ``pipe`` (an SD3 pipeline): noise and sigmas from
    ``noise_seed``, drawn on the CPU so a run is the same on every device."""
    device = pipe.transformer.device
    gen = torch.Generator().manual_seed(noise_seed)
    vae = pipe.vae
    pixels = pixels.to(device)
    x0 = (vae.encode(pixels).latent_dist.mode() - vae.config.shift_factor) * vae.config.scaling_factor  # [B, 16, h, w]
    noise = torch.randn(x0.shape, generator=gen).to(device)
    sigma = torch.sigmoid(torch.randn(x0.shape[0], generator=gen)).to(device)  # [B] logit-normal
    s = sigma[:, None, None, None]
    x_t = (1 - s) * x0 + s * noise
    embeds, _, pooled, _ = pipe.encode_prompt(prompt=prompts, prompt_2=None, prompt_3=None, device=device,
                                              do_classifier_free_guidance=False, max_sequence_length=text_length)
    pred = pipe.transformer(hidden_states=x_t, encoder_hidden_states=embeds, pooled_projections=pooled,
                            timestep=sigma * pipe.scheduler.config.num_train_timesteps, return_dict=False)[0]
    return torch.nn.functional.mse_loss(pred, noise - x0)


def optimise(opt: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    """One optimiser step on ``loss``, gradients clipped to norm 1 (every trainer here)."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], 1.0)
    opt.step()


def ema_update(ema: list[torch.Tensor], params: list[torch.Tensor], decay: float, step: int) -> None:
    """The EMA after ``step`` optimiser steps, its decay warming up as (1 + step) / (10 + step)."""
    with torch.no_grad():
        torch._foreach_lerp_(ema, params, 1 - min(decay, (1 + step) / (10 + step)))


class LossLog:
    """A trainer's smoothed loss (EMA ``keep``) on its progress bar, and every ``every`` steps in log.jsonl."""

    def __init__(self, bar, log, every: int, keep: float):
        self.bar, self.log, self.every, self.keep = bar, log, every, keep
        self.running, self.start = None, time.time()

    def update(self, step: int, loss: torch.Tensor, lr: float) -> None:
        value = float(loss.detach())
        self.running = value if self.running is None else self.keep * self.running + (1 - self.keep) * value
        self.bar.set_postfix(loss=f"{self.running:.4f}", lr=f"{lr:.1e}", refresh=False)
        self.bar.update(1)
        if step % self.every == 0:
            self.log.write(json.dumps({"step": step, "loss": self.running, "seconds": time.time() - self.start}) + "\n")
            self.log.flush()


class StepBatches(torch.utils.data.Dataset):
    """Batch ``step`` of a run, for a DataLoader whose workers render ahead of the optimiser."""

    def __init__(self, cfg: "TrainConfig"):
        self.seed, self.batch, self.empty_prob, self.model = cfg.seed, cfg.batch, cfg.empty_prompt_prob, cfg.variant

    def __getitem__(self, step: int):
        return sample_batch(self.seed, step, self.batch, self.empty_prob, self.model)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Per phase: linear warm-up, then cosine decay to 10% of the phase's peak. A run has one phase
    unless it was extended (``--extend``); each phase is fixed by its (end step, peak lr)."""
    phases = cfg.phases or ((cfg.steps, cfg.lr),)
    start = 0
    for end, peak in phases:
        if step < end or end == phases[-1][0]:
            break
        start = end
    warmup = cfg.warmup if start == 0 else min(cfg.warmup, max(1, (end - start) // 10))
    if step - start < warmup:
        return peak * (step - start + 1) / warmup
    t = (step - start - warmup) / max(1, end - start - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))


class Trainer:
    def __init__(self, cfg: TrainConfig):
        from amo_engine.model.glyph.model import build_glyph_pipeline

        self.cfg = cfg
        cfg.phases = cfg.phases or ((cfg.steps, cfg.lr),)
        self.device = torch.device(cfg.device)
        self.pipe = build_glyph_pipeline(cfg.seed, cfg.variant)
        if cfg.init_from:
            warm_start(self.pipe, cfg.init_from)
        self.pipe.to(self.device)
        for name in ("text_encoder", "text_encoder_2", "vae"):
            getattr(self.pipe, name).requires_grad_(False)
        self.trained = {"transformer": self.pipe.transformer, "text_encoder_3": self.pipe.text_encoder_3}
        self.ema = {k: copy.deepcopy(m).requires_grad_(False) for k, m in self.trained.items()}
        params = [p for m in self.trained.values() for p in m.parameters()]
        self.opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0, fused=self.device.type == "cuda")
        self.step = 0

    # ---------------------------------------------------------------- state

    def state(self) -> dict[str, torch.Tensor]:
        out = {}
        for prefix, modules in (("model", self.trained), ("ema", self.ema)):
            for k, m in modules.items():  # tied weights (T5's shared embedding) once
                out.update({f"{prefix}.{k}.{n}": t for n, t in m.named_parameters()})
                out.update({f"{prefix}.{k}.{n}": t for n, t in m.named_buffers()})
        params = [p for g in self.opt.param_groups for p in g["params"]]
        for i, p in enumerate(params):
            for n, t in self.opt.state.get(p, {}).items():
                out[f"opt.{i}.{n}"] = t.reshape(1) if t.ndim == 0 else t
        return {k: v.detach().contiguous() for k, v in out.items()}

    def save_checkpoint(self) -> None:
        from safetensors.torch import save_file

        from amo_engine.atomic import atomic_path

        run = self.cfg.run_dir
        with atomic_path(run / CHECKPOINT) as tmp:
            save_file(self.state(), str(tmp))
        with atomic_path(run / CHECKPOINT_META) as tmp:
            tmp.write_text(json.dumps({"step": self.step, "config": _jsonable(asdict(self.cfg))}, indent=2))

    def load_checkpoint(self) -> bool:
        from safetensors.torch import load_file

        run = self.cfg.run_dir
        if not (run / CHECKPOINT).is_file() or not (run / CHECKPOINT_META).is_file():
            return False
        meta = json.loads((run / CHECKPOINT_META).read_text())
        saved = meta["config"]
        saved.setdefault("model", "glyph")  # runs from before the scene model
        saved.setdefault("init_from", None)
        for key in ("model", "init_from", "seed", "batch", "warmup", "ema_decay", "empty_prompt_prob"):
            if saved[key] != getattr(self.cfg, key):
                raise ValueError(f"{run} was trained with {key}={saved[key]}, not {getattr(self.cfg, key)}: "
                                 f"pass --{key.replace('_', '-')} {saved[key]} or use a new --run-dir")
        phases = tuple(tuple(p) for p in saved.get("phases") or ((saved["steps"], saved["lr"]),))
        last_end, last_lr = phases[-1]
        if self.cfg.extend and self.cfg.steps > last_end:
            if int(meta["step"]) < last_end:
                raise ValueError(f"{run} has not finished its {last_end} steps: resume it first (drop --extend)")
            phases = phases + ((self.cfg.steps, self.cfg.lr),)
        elif (self.cfg.steps, self.cfg.lr) != (last_end, last_lr):
            raise ValueError(f"{run} was trained to {last_end} steps at lr {last_lr:g}: pass --steps {last_end} "
                             f"--lr {last_lr:g} to resume, or --extend --steps N (N > {last_end}) to train on")
        self.cfg.phases = phases
        state = load_file(str(run / CHECKPOINT), device=str(self.device))
        for prefix, modules in (("model", self.trained), ("ema", self.ema)):
            for k, m in modules.items():
                head = f"{prefix}.{k}."
                missing, unexpected = m.load_state_dict(
                    {n[len(head):]: t for n, t in state.items() if n.startswith(head)}, strict=False)
                tied = {n for n, _ in m.named_parameters(remove_duplicate=False)} - {n for n, _ in m.named_parameters()}
                if unexpected or set(missing) - tied:
                    raise ValueError(f"{run / CHECKPOINT} does not match the glyph model: retrain in a new --run-dir")
        params = [p for g in self.opt.param_groups for p in g["params"]]
        for i, p in enumerate(params):
            head = f"opt.{i}."
            entries = {n[len(head):]: t for n, t in state.items() if n.startswith(head)}
            if entries:
                fused = self.opt.defaults.get("fused")  # fused AdamW keeps its step count on the device, plain on the CPU
                entries["step"] = entries["step"].reshape(()).to(self.device if fused else "cpu")
                self.opt.state[p] = entries
        self.step = int(meta["step"])
        return True

    # ---------------------------------------------------------------- training

    def loss(self, step: int, batch=None) -> torch.Tensor:
        """The loss of batch ``step`` (``batch``: that batch, already drawn by a worker)."""
        cfg = self.cfg
        prompts, pixels = batch or sample_batch(cfg.seed, step, cfg.batch, cfg.empty_prompt_prob, cfg.variant)
        return flow_loss(self.pipe, prompts, pixels, cfg.seed * 1_000_003 + step, cfg.variant.text_length)

    def update_ema(self) -> None:
        for k, m in self.trained.items():
            ema_update(list(self.ema[k].parameters()), list(m.parameters()), self.cfg.ema_decay, self.step)

    def ema_pipeline(self):
        """A pipeline over the EMA weights (shares the frozen parts)."""
        from diffusers import StableDiffusion3Pipeline

        return StableDiffusion3Pipeline(**{**self.pipe.components, **self.ema})

    def check(self, reader) -> dict:
        """Euler samples of a fixed word set with the EMA weights, read by OCR."""
        from amo_engine.model.families.sd3 import SD3
        from amo_engine.model.load import LoadedModel
        from amo_engine.pipeline.generate import AmoPipeline, GenerateConfig
        from amo_engine.ocr import normalise

        from amo_engine.model.glyph.locate import read_words

        n, model = self.cfg.check_images, self.cfg.variant
        words = [TRAIN_WORDS[(i * 37) % len(TRAIN_WORDS)] for i in range(n)]
        textures = [model.textures[i % len(model.textures)] if model.textures else None for i in range(n)]
        prompts = [prompt_for(w, TONES[i % 2], model, x) for i, (w, x) in enumerate(zip(words, textures))]
        settings = glyph_settings(model)
        loaded = LoadedModel(self.ema_pipeline(), SD3, f"{model.name} (training)", None, settings)
        result = AmoPipeline(loaded)(GenerateConfig(prompts=prompts, sampler="euler", steps=20, seed=self.step))
        reads = read_words(reader, result.images, settings)
        hits = sum(normalise(r) == w for r, w in zip(reads, words))
        return {"step": self.step, "ocr_exact": hits / n, "reads": reads[:8], "words": words[:8]}

    def run(self, export_to: Path | None = None) -> Path:
        from tqdm.auto import tqdm

        cfg = self.cfg
        cfg.run_dir.mkdir(parents=True, exist_ok=True)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        resumed = self.load_checkpoint()
        reader = None
        if cfg.check_every:
            from amo_engine.ocr import Reader

            reader = Reader("rapidocr")
        log = (cfg.run_dir / LOG).open("a")
        if resumed:
            print(f"resuming {cfg.run_dir} at step {self.step}", flush=True)
        bar = tqdm(total=cfg.steps, initial=self.step, desc="train-glyph", unit="step", disable=not cfg.progress,
                   mininterval=5)
        losses = LossLog(bar, log, every=50, keep=0.98)
        for m in self.trained.values():
            m.train()
        batches = iter(torch.utils.data.DataLoader(StepBatches(cfg), batch_size=None, num_workers=cfg.workers,
                                                   sampler=range(self.step, cfg.steps), prefetch_factor=4 if cfg.workers else None))
        while self.step < cfg.steps:
            for group in self.opt.param_groups:
                group["lr"] = lr_at(self.step, cfg)
            loss = self.loss(self.step, next(batches))
            optimise(self.opt, loss)
            self.step += 1
            self.update_ema()
            losses.update(self.step, loss, lr_at(self.step - 1, cfg))
            if self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps:
                self.save_checkpoint()  # before the check: a failing check never costs trained steps
            if reader is not None and (self.step % cfg.check_every == 0 or self.step == cfg.steps):
                record = self.check(reader)
                bar.write(f"step {self.step}: OCR exact {record['ocr_exact']:.0%} on {cfg.check_images} Euler samples")
                log.write(json.dumps(record) + "\n")
                log.flush()
        bar.close()
        log.close()
        plot_training_log(cfg.run_dir)
        return self.export(export_to or cfg.run_dir / "model")

    def export(self, folder: Path) -> Path:
        """Write the EMA pipeline as a diffusers folder (fp16 safetensors) with its amo_engine.json."""
        return save_glyph_folder(self.ema_pipeline(), folder, self.cfg.variant)


def plot_training_log(run_dir: Path, path: Path | None = None) -> Path:
    """loss.png from a run's log.jsonl: the smoothed loss and the OCR checks against steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from amo_engine.atomic import atomic_path

    records = [json.loads(line) for line in (Path(run_dir) / LOG).read_text().splitlines() if line.strip()]
    losses = [(r["step"], r["loss"]) for r in records if "loss" in r]
    checks = [(r["step"], 100 * r["ocr_exact"]) for r in records if "ocr_exact" in r]
    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=100)
    if losses:
        ax.plot(*zip(*losses), label="training loss (EMA 0.98)")
    ax.set_xlabel("step")
    ax.set_ylabel("rectified-flow MSE")
    if checks:
        ax2 = ax.twinx()
        ax2.plot(*zip(*checks), "o-", color="tab:green", label="OCR exact match, 16 Euler samples (%)")
        ax2.set_ylabel("OCR exact match (%)")
        ax2.set_ylim(0, 100)
        ax2.legend(loc="center right")
    if losses:
        ax.legend(loc="upper right")
    fig.tight_layout()
    path = path or Path(run_dir) / "loss.png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def glyph_settings(model: Variant = GLYPH):
    """The amo_engine.json of a glyph model folder: size, text length, guidance, vocabulary, prompt,
    and on a textured model its ground textures and the sign's cell rows (the rest is ground)."""
    from amo_engine.model.presets import ModelSettings
    from amo_engine.model.glyph.words import HELD_OUT_WORDS

    return ModelSettings(max_sequence_length=model.text_length, height=model.height, width=model.width,
                         guidance=GUIDANCE, vocabulary=TRAIN_WORDS, held_out=HELD_OUT_WORDS,
                         prompt_template=model.template, tones=TONES, textures=model.textures or None,
                         sign_rows=model.sign_rows if model.textures else None)


def warm_start(pipe, source: str) -> None:
    """Start ``pipe`` (a glyph model, untrained) from another glyph pipeline's weights: ``source`` is a
    folder or a preset name. Every tensor of the same shape is copied; the transformer's position
    table is rebuilt for the new canvas (a fixed sin-cos buffer); T5's token table keeps the source's
    rows (the scene tokenizer appends its pieces after glyph's) and its new rows' init."""
    from amo_engine.model.load import load_model

    src = load_model(source).pipe
    for name in ("transformer", "text_encoder", "text_encoder_2", "text_encoder_3"):
        target, given = getattr(pipe, name), getattr(src, name).state_dict()
        state = target.state_dict()
        for key, tensor in state.items():
            if key.endswith("pos_embed.pos_embed") or key not in given:
                continue
            value = given[key].to(tensor.dtype)
            if value.shape == tensor.shape:
                tensor.copy_(value)
            elif value.ndim == 2 and value.shape[1] == tensor.shape[1] and value.shape[0] < tensor.shape[0]:
                tensor[: value.shape[0]].copy_(value)  # token table: the source's tokens, then the new ones
            else:
                raise ValueError(f"cannot start {name}.{key} {tuple(tensor.shape)} from {source}'s "
                                 f"{tuple(value.shape)}: not a glyph model of this recipe")
        target.load_state_dict(state)


def save_glyph_folder(pipe, folder: Path, model: Variant = GLYPH) -> Path:
    import shutil

    from amo_engine.atomic import temp_dir_beside, usual_permissions
    from amo_engine.model.presets import SETTINGS_FILE

    folder = Path(folder)
    tmp = temp_dir_beside(folder, f".{folder.name}-")
    try:
        half = {k: (copy.deepcopy(v).half() if isinstance(v, torch.nn.Module) and k != "vae" else v)
                for k, v in pipe.components.items()}
        type(pipe)(**half).save_pretrained(tmp, safe_serialization=True)
        (tmp / SETTINGS_FILE).write_text(json.dumps(glyph_settings(model).to_json(), indent=2) + "\n")
        usual_permissions(tmp)
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _jsonable(d: dict) -> dict:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in d.items()}
