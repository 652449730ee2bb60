"""What every model family is: the ``Family`` record of rules, the inputs of one denoise loop, and
the shared pieces (the guided loop, VAE decoding) the family files build from. Imports neither torch
nor diffusers at import time."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence


@dataclass
class DenoiseInputs:
    """What one generation asks of a family's ``prepare``: prompts (one per image), the span mask in
    the family's text layout, sizes and guidance, and where the noise comes from."""

    prompts: Sequence[str]
    negative_prompt: str | None
    span_mask: Any  # torch.Tensor [B, T]
    height: int
    width: int
    max_sequence_length: int
    guidance: float
    generator: Any  # torch.Generator, or one per image
    latents: Any = None  # initial noise in the family's latent layout, or None to draw it


@dataclass
class Denoise:
    """A prepared loop: ``step(x, sigma)`` is the velocity function samplers call; it writes into
    feed buffers allocated once and adds each step's span->image scores to ``attn_sum``."""

    step: Callable  # (x, sigma) -> samplers.StepOut
    latents: Any  # torch.Tensor: initial latents in the family's layout
    image_tokens: int
    attn_sum: Any  # torch.Tensor [B, image_tokens]
    feeds: dict  # the backbone's input buffers (rows segment-major: [segment 0 images ; segment 1 images ...])


class Family:
    """Base class; ``families/sd3.py`` and ``families/flux.py`` fill it in."""

    name: str
    pipeline_class: str  # diffusers pipeline class name in model_index.json
    transformer_prefix: str  # diffusers transformer class names start with this
    guidance: float  # default guidance when a model folder carries none
    max_sequence_length: int  # default T5 length
    size: int  # default image side in pixels
    image_first: bool  # joint attention order: [image ; text] (True) or [text ; image]
    reference_scheduler: dict  # the released models' scheduler config (benches without a pipeline)
    batches_cfg: bool = False  # classifier-free guidance runs as [uncond ; cond] rows
    edit_blocks: tuple[int, ...] | None = None  # published text-localized joint blocks (Paper A), if any
    edit_start_step: int = 0  # the step the text K/V swap starts at by default
    explicit_sigmas: bool = False  # the pipeline passes linspace(1, 1/n, n) sigmas to the scheduler
    attention_kwargs_name: str = "joint_attention_kwargs"  # the transformer's per-call processor kwargs
    register_tokens: int = 0  # learned tokens the transformer puts before the prompt's (AuraFlow: 8)
    joint_block_path: str = "transformer_blocks"  # the joint blocks' module list (LoRA keys name it)

    # ---------------------------------------------------------------- blocks

    def joint_block_count(self, transformer_config) -> int:
        """Joint (image + text stream) blocks: the ones the hook replaces the processor of."""
        return transformer_config.num_layers

    def joint_projections(self, transformer_config, block: int) -> tuple[str, ...]:
        """The attention projections joint block ``block`` has (lora.PROJECTIONS names)."""
        from amo_engine.model.lora import PROJECTIONS

        return PROJECTIONS

    def attentions(self, transformer) -> tuple[list, list]:
        """(the joint blocks' attention modules, in order; the other attention modules that diffusers
        hands the same per-call kwargs: SD3.5's image-only ``attn2``, FLUX's single-stream blocks)."""
        blocks = transformer.transformer_blocks
        other = [b.attn2 for b in blocks if getattr(b, "attn2", None) is not None]
        other += [b.attn for b in getattr(transformer, "single_transformer_blocks", ())]
        return [b.attn for b in blocks], other

    # ---------------------------------------------------------------- shapes

    def pixels_per_token(self, vae_scale_factor: int, patch_size: int) -> int:
        """Pixels per image token side."""
        raise NotImplementedError

    def max_tokens_per_side(self, transformer_config) -> int | None:
        """The most image tokens a side the transformer's position table reaches (None: no limit)."""
        return None

    def latent_patch(self, transformer_config) -> int:
        """Side of one image token in the latent layout the sampler sees (AMO's patch)."""
        raise NotImplementedError

    def rows(self, images: int, cfg_rows: bool) -> int:
        """Backbone rows per call for ``images`` images (``cfg_rows``: guidance batched as rows)."""
        return images * (2 if cfg_rows and self.batches_cfg else 1)

    def default_guidance(self, transformer_config) -> float:
        """The guidance a model folder that names none runs at."""
        return self.guidance

    def precision_notes(self, transformer_config, dtype) -> list[str]:
        """Warnings for running this model in ``dtype`` (a torch dtype), said before it loads."""
        return []

    def uses_cfg_rows(self, guidance: float) -> bool:
        return self.batches_cfg and guidance > 1.0

    def text_length(self, clip_length: int, max_sequence_length: int) -> int:
        """Text tokens per row: the backbone's ``text_len``."""
        raise NotImplementedError

    def text_layout(self, pipe, max_sequence_length: int):
        """The prompts.TextLayout whose span masks line up with the backbone's text tokens."""
        raise NotImplementedError

    # ---------------------------------------------------------------- time

    def sigmas(self, scheduler_config, steps: int, image_tokens: int) -> list[float]:
        """The sigma grid the family's diffusers pipeline would use (``steps + 1`` values, ending 0)."""
        from amo_engine.schedules import flow_match_sigmas

        return flow_match_sigmas(scheduler_config, steps, image_seq_len=image_tokens, flux_style=self.explicit_sigmas)

    def timestep(self, sigma: float, scheduler_config) -> float:
        """The transformer's timestep input for ``sigma``."""
        raise NotImplementedError

    # ---------------------------------------------------------------- modules and loop

    def pipeline_type(self):
        import diffusers

        return getattr(diffusers, self.pipeline_class)

    def transformer_type(self):
        import diffusers

        return getattr(diffusers, self.transformer_prefix + "2DModel")

    def backbone(self, transformer, hook, vae_scale_factor: int):
        """The family's backbone module (backbone.py) over ``transformer``, this family handed in."""
        raise NotImplementedError

    def prepare(self, pipe, inputs: DenoiseInputs, backend_for: Callable) -> Denoise:
        """Encode prompts, allocate feeds once, draw the noise, and return the loop's velocity function.
        ``backend_for(rows, text_len) -> (IOSpec, backend, feeds)`` gives the feeds' spec, what runs
        them, and the input buffers (kept across requests; the loop writes the model's inputs)."""
        raise NotImplementedError

    def decode(self, pipe, latents, height: int, width: int) -> list:
        """PIL images from final latents."""
        return decode_with_vae(pipe, latents)

    def __repr__(self) -> str:
        return f"<family {self.name}>"


def config_value(config, key: str, default=None):
    """``key`` of a diffusers config (a dict, or the attribute namespace of an engine's stand-in)."""
    return config.get(key, default) if isinstance(config, dict) else getattr(config, key, default)


def guided_loop(family: Family, pipe, inputs: DenoiseInputs, backend_for: Callable, text_feeds: dict, text_len: int,
                cfg_rows: bool) -> Denoise:
    """The loop of a family whose latents go to the backbone as they are ([B, C, h, w]) and whose
    classifier-free guidance runs as [uncond ; cond] rows (SD3, AuraFlow). ``text_feeds``: the
    encoded prompt inputs by feed name, rows already [uncond ; cond]; ``text_len``: the backbone's
    text length. The span mask fills the conditional rows (unconditional rows read no span), the
    latents both halves, and the velocity is ``v_uncond + guidance * (v_cond - v_uncond)``."""
    import torch

    from amo_engine.samplers import StepOut

    device, dtype = pipe.transformer.device, pipe.transformer.dtype
    images = len(inputs.prompts)
    rows = family.rows(images, cfg_rows)
    spec, backend, feeds = backend_for(rows, text_len)
    for name, value in text_feeds.items():
        feeds[name].copy_(value)
    feeds["span_mask"][: rows - images].zero_()  # uncond rows read no span
    feeds["span_mask"][rows - images :].copy_(inputs.span_mask)
    latents = pipe.prepare_latents(images, pipe.transformer.config.in_channels, inputs.height, inputs.width,
                                   dtype, device, inputs.generator, inputs.latents)  # [B, C, H/f, W/f]
    image_tokens = spec.dims["image_tokens"]
    attn_sum = torch.zeros(images, image_tokens, device=device)  # [B, N]
    hidden, timestep = feeds["hidden_states"], feeds["timestep"]
    scheduler_config, guidance = pipe.scheduler.config, inputs.guidance

    def step(x, sigma):
        hidden[:images].copy_(x)
        if cfg_rows:
            hidden[images:].copy_(x)
        timestep.fill_(family.timestep(sigma, scheduler_config))
        out = backend(feeds)
        v, attn = out["velocity"], out["attn"][rows - images :]
        if cfg_rows:
            v_uncond, v_cond = v[:images], v[images:]
            v = v_uncond + guidance * (v_cond - v_uncond)
        attn_sum.add_(attn)
        groups = out.get("group_attn")
        return StepOut(v, attn, None if groups is None else groups[rows - images :])

    return Denoise(step, latents, image_tokens, attn_sum, feeds)


def decode_with_vae(pipe, latents) -> list:
    """Unscale, unshift and decode [B, C, h, w] latents with the pipeline's VAE; PIL images."""
    import torch

    vae = pipe.vae
    latents = latents.to(vae.dtype) / vae.config.scaling_factor + vae.config.shift_factor
    with torch.inference_mode():
        image = vae.decode(latents, return_dict=False)[0]  # [B, 3, H, W]
    return pipe.image_processor.postprocess(image, output_type="pil")
