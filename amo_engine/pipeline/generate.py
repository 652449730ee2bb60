"""Generation: span mask -> the family's prepared loop (feeds, noise) -> sampler -> the family's decode.

The one module that knows both backends and samplers. What differs between model families (CFG
rows, packing, sigma grid, timestep rule, decoding) is asked of ``families``; the hot loop copies
only latents and the timestep into buffers allocated once, and never waits on the device; one
sync at the end.
"""

from __future__ import annotations

import dataclasses
import re
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from amo_engine.atomic import atomic_path
from amo_engine.model.backbone import HookConfig
from amo_engine.engine.backends import Backend
from amo_engine.engine.backends.eager import EagerBackend
from amo_engine.pipeline.text_swap import TextSwap, with_text_swap
from amo_engine.pipeline.plans import ModulationPlan, group_masks, with_modulation
from amo_engine.model.families import Denoise, DenoiseInputs
from amo_engine.model.adapters import Adapter, check_fits, covering, fill_rows
from amo_engine.model.inputs import GROUPS, KV_SWAP, LORA, MODULATION
from amo_engine.model.load import LoadedModel
from amo_engine.model.lora import LoraLayout, layout_for
from amo_engine.prompts import TextLayout, find_quoted_spans
from amo_engine.rules import check_count, check_sampler, check_size, check_strength
from amo_engine.samplers import sample_amo, sample_euler, sample_overshoot


class NonFiniteLatentsError(FloatingPointError):
    """The denoising loop produced NaN/Inf latents; no image is decoded."""


class GenerationCancelled(RuntimeError):
    """``GenerateConfig.should_stop`` said so between two steps; no image is decoded."""


@dataclass
class GenerateConfig:
    prompts: Sequence[str]
    negative_prompt: str | None = None
    height: int | None = None  # default: the model's (presets carry theirs)
    width: int | None = None
    steps: int = 28
    guidance: float | None = None  # default: SD3 7.0 (CFG), FLUX 3.5 (distilled guidance input)
    sampler: str = "amo"
    c: float = 2.0
    seed: int | Sequence[int] = 10  # one seed, or one per prompt (see row_seeds)
    num_images_per_prompt: int = 1
    max_sequence_length: int | None = None  # T5 tokens; default: the model's
    progress: bool = False
    latents: torch.Tensor | None = None  # initial noise in the family's latent layout (default: drawn from seed)
    text_swap: TextSwap | None = None  # Paper A: images take other images' text K/V at some joint blocks
    modulation: ModulationPlan | None = None  # Paper B: per-step attention knobs (modulation_plan.py)
    groups: str | None = None  # entity phrases "a|b" for the group knobs (default: the heuristic chunker)
    pad_images_to: int | None = None  # run at least this many images per call, filler rows discarded (see __call__)
    adapters: Sequence[Adapter | None] | None = None  # LoRA per prompt (one: every prompt; None: no adapter)
    previews: int = 0  # clean-image estimates handed to on_preview at evenly spaced steps (streaming)
    on_preview: Callable[[int, list], None] | None = None  # (preview index, PIL images of the user's rows)
    should_stop: Callable[[], bool] | None = None  # asked after every step (a host call, no device sync)


@dataclass
class GenerateResult:
    images: list  # PIL images, one per row
    latents: torch.Tensor  # final latents before VAE decode
    attn_map: torch.Tensor | None  # [B, grid_h, grid_w] span->image map averaged over steps (cond rows)
    span_mask: torch.Tensor  # [B, T] the span mask used
    sampler: str  # the sampler that actually ran (amo falls back to overshoot without spans)
    loop_seconds: float
    steps: int
    warnings: list[str] = field(default_factory=list)
    prepare_seconds: float = 0.0  # prompt encoding, feeds and noise
    decode_seconds: float = 0.0  # latents -> PIL images

    @property
    def seconds_per_step(self) -> float:
        return self.loop_seconds / self.steps


def validate(cfg: GenerateConfig, patch_factor: int, largest: int | None = None) -> None:
    """Refuse a request this model cannot run (``largest``: the most pixels a side it draws)."""
    if not cfg.prompts or any(not isinstance(p, str) for p in cfg.prompts):
        raise ValueError("prompts must be a non-empty list of strings")
    check_sampler(cfg.sampler)
    check_count("steps", cfg.steps)
    check_strength("c", cfg.c)
    check_count("num_images_per_prompt", cfg.num_images_per_prompt)
    if cfg.text_swap is not None and cfg.num_images_per_prompt != 1:
        raise ValueError("a text swap pairs images one to one: use num_images_per_prompt=1")
    if not isinstance(cfg.seed, int):
        if cfg.text_swap is not None:
            raise ValueError("a text swap seeds its noise groups from one seed: pass seed as an int")
        if len(cfg.seed) != len(cfg.prompts) or any(not isinstance(s, int) for s in cfg.seed):
            raise ValueError(f"seed must be an int or one int per prompt ({len(cfg.prompts)}), got {cfg.seed!r}")
    if cfg.pad_images_to is not None:
        check_count("pad_images_to", cfg.pad_images_to)
    check_size(cfg.width, cfg.height, patch_factor, largest)


def row_seeds(seed: int | Sequence[int], prompts: int, images_per_prompt: int) -> list[int]:
    """The seed of each image row, prompt-major: image ``j`` of prompt ``p`` gets ``seed + p * n + j``
    from one seed, ``seed[p] + j`` from one seed per prompt. Each row has its own generator, so an
    image depends only on its prompt, its seed and the settings, never on its batch-mates: prompts
    [a, b] with seed 7 give the images of a with seed 7 and of b with seed 8."""
    if isinstance(seed, int):
        return [seed + r for r in range(prompts * images_per_prompt)]
    return [s + j for s in seed for j in range(images_per_prompt)]


def amo_span_notes(layout: TextLayout, prompts: Sequence[str], span_mask: torch.Tensor,
                   max_span_tokens: int) -> tuple[str, list[str]]:
    """The sampler AMO really runs (overshoot when no row has span tokens) and one accurate note
    per case: quoted text cut by some token limits but whole in another part, cut everywhere (its
    first tokens steer), cut away entirely, rows without quotes, spans longer than S."""
    notes, lost = [], set()
    tokens = span_mask.sum(dim=1)  # [B] span tokens per row
    for row, prompt in enumerate(prompts):
        cutting = layout.cutting_parts(prompt)
        if not cutting:
            continue
        limits = " and ".join(f"{p.name}'s {p.length}-token" for p in cutting)
        if len(cutting) < len(layout.text_parts):
            whole = ", ".join(p.name for p in layout.text_parts if p not in cutting)
            notes.append(f"the quoted text of prompt {row} runs past {limits} limit; AMO reads it whole from the "
                         f"{whole} tokens")
        elif tokens[row] > 0:
            notes.append(f"the quoted text of prompt {row} runs past {limits} limit: only its first tokens steer "
                         "AMO (shorten the prompt, move the quote earlier, or raise --max-sequence-length)")
        else:
            lost.add(row)
            notes.append(f"the quoted text of prompt {row} lies past {limits} limit: that image uses plain "
                         "overshoot (shorten the prompt, move the quote earlier, or raise --max-sequence-length)")
    has_span = tokens > 0  # [B]
    unquoted = [row for row in range(len(prompts)) if not has_span[row] and row not in lost]
    if unquoted and len(unquoted) == len(prompts):
        notes.append("no quoted text in the prompt: AMO falls back to the overshoot sampler (quote the text to render)")
    elif unquoted:
        missing = sorted({prompts[row] for row in unquoted})
        notes.append(f"no quoted text in {missing}: those images use plain overshoot")
    if not bool(has_span.any()):
        return "overshoot", notes
    longest = int(tokens.max())
    if longest > max_span_tokens:
        notes.append(f"the quoted text spans {longest} tokens; the score branch reads the first {max_span_tokens} "
                     "(raise --max-span-tokens)")
    return "amo", notes


def vocabulary_notes(settings, prompts: Sequence[str]) -> list[str]:
    """On a model trained on one prompt form (the glyph models): a note for each prompt not in that
    form, each quoted word outside its training words, and each ground texture it never saw."""
    notes = []
    if settings.vocabulary:
        known = set(settings.vocabulary)
        unknown = sorted({sp.text(p) for p in prompts for sp in find_quoted_spans(p)} - known)
        notes += [f"{word!r} is not one of this model's {len(known)} training words: it is spelled from letters the "
                  "model knows, but expect more misspellings" for word in unknown]
    if settings.prompt_template:
        pattern = re.escape(settings.prompt_template)
        for name in ("tone", "word", "texture"):
            pattern = pattern.replace(re.escape("{" + name + "}"), f"(?P<{name}>.*?)")
        choices = ", ".join(settings.textures or ())
        for p in dict.fromkeys(prompts):
            match = re.fullmatch(pattern, p.strip())
            if match is None:
                notes.append(f"{p!r} is not in the one form this model was trained on ({settings.prompt_template!r}"
                             + (f", texture one of {choices}" if choices else "") + "): expect noise")
            elif settings.tones and match["tone"] not in settings.tones:
                notes.append(f"{match['tone']!r} is not a sign tone this model knows ({', '.join(settings.tones)}): "
                             "it draws some sign")
            elif settings.textures and match["texture"] not in settings.textures:
                notes.append(f"{match['texture']!r} is not one of this model's {len(settings.textures)} ground "
                             f"textures ({choices}): it draws some ground, not that one")
    return notes


class AmoPipeline:
    """Generate images with Euler / Overshoot / AMO around any Backend."""

    def __init__(self, model: LoadedModel, hook: HookConfig = HookConfig(), backend: Backend | None = None):
        self.model = model
        self.pipe = model.pipe
        self.family = model.family
        self.hook = hook
        self._backend = backend
        self._eager: dict[frozenset, EagerBackend] = {}  # eager backbones by their input groups (inputs.GROUPS)

    # ------------------------------------------------------------ model facts

    @property
    def device(self) -> torch.device:
        return self.pipe.transformer.device

    @property
    def joint_blocks(self) -> int:
        return self.family.joint_block_count(self.pipe.transformer.config)

    @property
    def patch_factor(self) -> int:
        return self.family.pixels_per_token(self.pipe.vae_scale_factor, self.pipe.transformer.config.patch_size)

    def images_per_call(self, guidance: float) -> int | None:
        """How many images one call of a fixed-batch engine holds (fewer are padded to it), or None
        when the backend runs any batch."""
        spec = self._backend.spec if self._backend is not None else None
        if spec is None or "batch" not in spec.dims:
            return None
        per_image = self.family.rows(1, self.family.uses_cfg_rows(guidance))
        rows = spec.dims["batch"]
        return rows // per_image if rows % per_image == 0 else None

    def backbone(self, groups: frozenset[str] = frozenset()):
        """The eager backbone with the input groups (``inputs.GROUPS`` switches, e.g. {"kv_swap"}) that
        the request needs, besides those the hook has."""
        return self._eager_backend(groups).backbone

    def _eager_backend(self, groups: frozenset[str], lora: dict | None = None) -> EagerBackend:
        """The eager backbone with ``groups`` and, with ``lora`` (adapters.covering's settings), LoRA slots."""
        switches = frozenset(groups) | {g.switch for g in GROUPS if g.enabled(self.hook) and not g.metavar}
        lora = lora or ({} if not self.hook.lora_rank else {"lora_rank": self.hook.lora_rank,
                                                             "lora_blocks": self.hook.lora_blocks,
                                                             "lora_projections": self.hook.lora_projections})
        key = (switches - {LORA.switch}, tuple(sorted(lora.items())))
        if key not in self._eager:
            hook = dataclasses.replace(self.hook, **{g.switch: g.switch in switches for g in GROUPS if not g.metavar},
                                       **(lora or {"lora_rank": 0}))
            backbone = self.family.backbone(self.pipe.transformer, hook, self.pipe.vae_scale_factor)
            self._eager[key] = EagerBackend(backbone)
        return self._eager[key]

    def lora_layout(self, hook: HookConfig) -> LoraLayout | None:
        """The LoRA slots of a backbone with ``hook`` on this model (None without)."""
        if not hook.lora_rank:
            return None
        return layout_for(self.family, self.pipe.transformer.config, hook.lora_rank, hook.lora_blocks,
                          hook.lora_projections)

    def check_adapters(self, adapters: Sequence[Adapter | None]) -> dict:
        """The LoRA settings that hold ``adapters`` (adapters.covering), after checking that this
        pipeline's backend can run them: refused in one line naming the export that can."""
        used = [a for a in adapters if a is not None]
        if not used:
            return {}
        need = covering(used)
        engine = getattr(self._backend, "engine", None) if self._backend is not None else None
        hook = engine.hook if engine is not None else self.hook
        if engine is None and not hook.lora_rank:
            return need  # eager without fixed slots: slots made to the adapters' measure
        layout = self.lora_layout(hook)
        if engine is not None:
            from amo_engine.engine.hints import reexport_command

            fix = reexport_command(engine.manifest, engine.folder, self.model.source, **need)
        else:
            fix = (f"give the pipeline a HookConfig with lora_rank={need['lora_rank']}, lora_blocks="
                   f"{need['lora_blocks']}")
        for adapter in used:
            check_fits(adapter, layout, fix)
        return {"lora_rank": layout.rank, "lora_blocks": layout.blocks, "lora_projections": layout.projections}

    def _backend_for(self, height: int, width: int, images: int, groups: frozenset[str] = frozenset(),
                     max_sequence_length: int | None = None, lora: dict | None = None):
        """``(rows, text_len) -> (IOSpec, backend, feeds)`` for one request needing input ``groups``:
        the eager backbone or the engine (after checking that its fixed shapes and inputs fit), and
        its input buffers, the same tensors for every request of this shape, with the hook's input
        groups back at their identity fills (the request's text swap or modulation then writes its own)."""

        def open_for(rows: int, text_len: int):
            spec, backend = choose(rows, text_len)
            feeds = backend.input_buffers(spec, self.device)
            spec.refill(feeds, [name for group in GROUPS if group.present_in(spec) for name in group.names])
            return spec, backend, feeds

        def choose(rows: int, text_len: int):
            eager = self._eager_backend(groups, lora)
            spec = eager.backbone.io_spec(rows, height, width, text_len, self.pipe.transformer.dtype)
            if self._backend is None:
                return spec, eager
            have = self._backend.spec
            if have is None:  # runs any shape: the eager backbone, with the inputs this request needs
                given = getattr(getattr(self._backend, "backbone", None), "hook", None)
                if given is not None and (any(not g.enabled(given) for g in GROUPS if g.switch in groups)
                                          or self.lora_layout(given) != eager.backbone.lora_layout):
                    return spec, eager
                return spec, self._backend
            engine = getattr(self._backend, "engine", None)

            def reexport(**changes) -> str:  # the engine's own export command with what this request needs
                if engine is None:  # a backend without an engine folder: no command to name
                    return "amo-engine export with what this request needs"
                from amo_engine.engine.hints import reexport_command

                return reexport_command(engine.manifest, engine.folder, self.model.source, **changes)

            if "attn" not in have.output_names:  # the stock graph the bench prices the tap against
                raise ValueError("this engine was exported without the score tap, which every sampler here reads: "
                                 "re-export it with: " + reexport())  # export always adds the tap
            for group in GROUPS:
                if group.switch in groups and not group.present_in(have):
                    kept = engine.manifest.images_per_call if engine is not None else 1
                    raise ValueError(f"this engine was exported without {group.title}: re-export it with: "
                                     + reexport(**(lora if group is LORA else {group.switch: True}),
                                                batch=max(images, kept)))
            mismatch = [n for n in spec.input_names if n not in have.input_names or have.shape(n) != spec.shape(n)]
            drawn = (engine.manifest.width, engine.manifest.height) if engine is not None else None
            if mismatch and drawn is not None and drawn != (width, height):
                raise ValueError(f"the engine draws {drawn[0]}x{drawn[1]} px, this request asks {width}x{height}: ask "
                                 f"for --size {drawn[0]}x{drawn[1]}, or export one for this size: "
                                 + reexport(batch=images, height=height, width=width))
            if mismatch:
                if all(have.dims.get(d) == v for d, v in spec.dims.items() if d != "batch"):  # only the batch
                    fix = (f"it runs {have.dims.get('batch')} rows per call, this request needs {rows} ({images} "
                           f"images): export one for {images} images: {reexport(batch=images)}")
                else:
                    detail = ", ".join(f"{n}: engine {have.shape(n) if n in have.input_names else 'missing'} vs "
                                       f"needed {spec.shape(n)}" for n in mismatch)
                    fix = (f"{detail}; export one for this size and text length: "
                           + reexport(batch=images, height=height, width=width, max_sequence_length=max_sequence_length))
                raise ValueError(f"the engine does not fit this request: {fix}")
            return spec, self._backend

        return open_for

    # ------------------------------------------------------------ generation

    def __call__(self, cfg: GenerateConfig) -> GenerateResult:
        tokens = self.family.max_tokens_per_side(self.pipe.transformer.config)
        largest = tokens * self.patch_factor if tokens else None
        validate(cfg, self.patch_factor, largest)
        default_h, default_w = self.model.default_size
        height, width = cfg.height or default_h, cfg.width or default_w
        check_size(width, height, self.patch_factor, largest)  # the model's defaults too
        max_seq = cfg.max_sequence_length or self.model.max_sequence_length
        guidance = self.model.default_guidance if cfg.guidance is None else cfg.guidance
        prompts = [p for p in cfg.prompts for _ in range(cfg.num_images_per_prompt)]
        seeds = row_seeds(cfg.seed, len(cfg.prompts), cfg.num_images_per_prompt)
        wanted = len(prompts)
        swap = cfg.text_swap
        adapters = self._adapters_per_image(cfg)
        lora = self.check_adapters(adapters) if adapters else {}
        pad_to = max(cfg.pad_images_to or 0, self.images_per_call(guidance) or 0)
        if swap is None and wanted < pad_to:  # filler rows (the last image again), cut after decoding
            prompts += [prompts[-1]] * (pad_to - wanted)
            seeds += [seeds[-1]] * (pad_to - wanted)
            adapters = adapters + [adapters[-1]] * (pad_to - wanted) if adapters else adapters
        if swap is not None:
            swap.check(len(prompts), self.joint_blocks, cfg.steps)

        layout = self.family.text_layout(self.pipe, max_seq)
        span_mask = layout.span_mask(prompts)  # [B, T] on CPU
        plan = cfg.modulation
        if plan is not None:
            text_groups, used = group_masks(layout, prompts, cfg.groups, self.hook.max_groups)  # [B, T, G]
            plan.check(cfg.steps, self.joint_blocks, used, self.hook.modulation_blocks)
        sampler, notes = cfg.sampler, vocabulary_notes(self.model.settings, cfg.prompts)
        if sampler == "amo":
            sampler, span_notes = amo_span_notes(layout, prompts[:wanted], span_mask[:wanted],
                                                 self.hook.max_span_tokens)  # the user's rows, not fillers
            notes += span_notes
        for note in notes:
            warnings.warn(note, stacklevel=2)

        if swap is not None:  # images joined by the swap draw the same noise: seeded by their group
            seeds = [cfg.seed + g for g in swap.groups(len(prompts))]
        generator = [torch.Generator(self.device).manual_seed(s) for s in seeds]  # one per row
        inputs = DenoiseInputs(prompts, cfg.negative_prompt, span_mask, height, width, max_seq, guidance, generator,
                               cfg.latents)
        needed = frozenset(g.switch for g, wanted in ((KV_SWAP, swap is not None), (MODULATION, plan is not None),
                                                      (LORA, bool(lora))) if wanted)
        start = time.perf_counter()
        loop = self.family.prepare(self.pipe, inputs,
                                   self._backend_for(height, width, len(prompts), needed, max_seq, lora or None))
        if lora:  # each row its image's adapter, rows segment-major; the others stay zeros
            feeds, layout = loop.feeds, self.lora_layout(HookConfig(**lora))
            rows = feeds["lora_down"].shape[0]
            fill_rows(feeds["lora_down"], feeds["lora_up"], layout, [adapters[r % len(prompts)] for r in range(rows)])
        sigmas = self.family.sigmas(self.pipe.scheduler.config, cfg.steps, loop.image_tokens)
        if swap is not None:
            loop = with_text_swap(loop, swap, len(prompts), sigmas)
        if plan is not None:
            loop = with_modulation(loop, plan, text_groups, used if plan.needs_groups else 0, len(prompts), sigmas)
        if cfg.previews and cfg.on_preview is not None:
            loop = self._with_previews(loop, cfg, sigmas, height, width, wanted)
        prepare_seconds = time.perf_counter() - start
        latents, loop_seconds = self._denoise(loop, sigmas, sampler, cfg, generator)
        start = time.perf_counter()
        images = self.family.decode(self.pipe, latents, height, width)
        decode_seconds = time.perf_counter() - start
        side_h, side_w = height // self.patch_factor, width // self.patch_factor
        attn_map = (loop.attn_sum / cfg.steps).reshape(len(prompts), side_h, side_w).float().cpu()  # [B, h, w]
        return GenerateResult(images[:wanted], latents[:wanted], attn_map[:wanted], span_mask[:wanted], sampler,
                              loop_seconds, cfg.steps, notes, prepare_seconds, decode_seconds)

    def _with_previews(self, loop: Denoise, cfg: GenerateConfig, sigmas: list[float], height: int, width: int,
                       wanted: int) -> Denoise:
        """``loop`` whose step also decodes the clean-image estimate x - sigma * velocity (rectified flow)
        at ``cfg.previews`` evenly spaced steps before the last and hands it to ``cfg.on_preview``. The
        step's outputs are untouched: the final image is the one generated without previews."""
        steps = len(sigmas) - 1
        at = {round((k + 1) * steps / (cfg.previews + 1)) - 1: k for k in range(cfg.previews)}  # step -> index
        calls = 0

        def step(x, sigma):
            nonlocal calls
            out = loop.step(x, sigma)
            if calls in at:
                estimate = x.float() - float(sigma) * out.velocity.float()
                cfg.on_preview(at[calls], self.family.decode(self.pipe, estimate.to(x.dtype), height, width)[:wanted])
            calls += 1
            return out

        return dataclasses.replace(loop, step=step)

    @staticmethod
    def _adapters_per_image(cfg: GenerateConfig) -> list:
        """``cfg.adapters`` per image (prompts x images per prompt); [] when no image has one."""
        given = list(cfg.adapters or [])
        if not any(a is not None for a in given):
            return []
        if len(given) not in (1, len(cfg.prompts)):
            raise ValueError(f"{len(given)} adapters for {len(cfg.prompts)} prompts: give one for every prompt "
                             "(none for no adapter), or one for all")
        per_prompt = given * len(cfg.prompts) if len(given) == 1 else given
        return [a for a in per_prompt for _ in range(cfg.num_images_per_prompt)]

    def _denoise(self, loop: Denoise, sigmas: list[float], sampler: str, cfg: GenerateConfig, generator):
        """Run the sampler over ``loop`` (renoising from ``generator``, the one that drew the initial
        noise): final latents and the loop's wall time. The loop never waits on the device; a NaN/Inf
        check stays on it until the one sync at the end."""
        bad_step = torch.full((), -1, dtype=torch.long, device=self.device)
        bar = None
        if cfg.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=cfg.steps, desc=f"{sampler} {self.family.name}", unit="step")

        def on_step(i: int, x: torch.Tensor) -> None:
            nonlocal bad_step
            if cfg.should_stop is not None and cfg.should_stop():
                raise GenerationCancelled(f"stopped after step {i + 1} of {cfg.steps}")
            broken = ~torch.isfinite(x).all()
            bad_step = torch.where(broken & (bad_step < 0), i, bad_step)  # stays on the device
            if bar is not None:
                bar.update(1)

        start = time.perf_counter()
        try:
            if sampler == "euler":
                latents = sample_euler(loop.step, loop.latents, sigmas, callback=on_step)
            elif sampler == "overshoot":
                latents = sample_overshoot(loop.step, loop.latents, sigmas, cfg.c, generator, callback=on_step)
            else:
                latents = sample_amo(loop.step, loop.latents, sigmas, cfg.c, generator,
                                     patch_size=self.family.latent_patch(self.pipe.transformer.config),
                                     callback=on_step)
            if latents.is_cuda:
                torch.cuda.synchronize(latents.device)
        finally:  # an interrupted loop ends its bar's line before anyone prints after it
            if bar is not None:
                bar.close()
        loop_seconds = time.perf_counter() - start
        first_bad = int(bad_step)  # the loop's one host sync
        if first_bad >= 0:
            raise NonFiniteLatentsError(
                f"the latents became NaN/Inf at step {first_bad} of {cfg.steps}; no image was written "
                "(try float32 or bfloat16 instead of float16, or fewer overshoot steps with a smaller c)"
            )
        return latents, loop_seconds


def save_png(image, path) -> None:
    """Write a PIL image atomically (temp file in the same folder, then rename)."""
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
