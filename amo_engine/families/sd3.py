"""Stable Diffusion 3 (MMDiT): latents [B, C, h, w] patched by the transformer, text = CLIP tokens
followed by T5 tokens, joint attention order [image ; text], classifier-free guidance batched as
[uncond ; cond] rows, timestep = sigma x the scheduler's training steps (1000)."""

from __future__ import annotations

from . import Denoise, DenoiseInputs, Family


class SD3Family(Family):
    name = "sd3"
    pipeline_class = "StableDiffusion3Pipeline"
    transformer_prefix = "SD3Transformer"
    guidance = 7.0
    max_sequence_length = 256
    size = 1024
    image_first = True
    batches_cfg = True
    explicit_sigmas = False
    edit_blocks = (10,)  # SD3-medium, Paper A's localized joint block (0-based, of 24)
    edit_start_step = 2
    reference_scheduler = {"shift": 3.0, "num_train_timesteps": 1000}

    def pixels_per_token(self, vae_scale_factor, patch_size):
        return vae_scale_factor * patch_size

    def latent_patch(self, transformer_config):
        return transformer_config.patch_size

    def text_length(self, clip_length, max_sequence_length):
        return clip_length + max_sequence_length

    def text_layout(self, pipe, max_sequence_length):
        from ..prompts import sd3_layout

        return sd3_layout(pipe.tokenizer, pipe.tokenizer_3, pipe.tokenizer_max_length, max_sequence_length)

    def timestep(self, sigma, scheduler_config):
        return sigma * scheduler_config.get("num_train_timesteps", 1000)

    def backbone(self, transformer, hook, vae_scale_factor):
        from ..backbone import SD3Backbone

        return SD3Backbone(transformer, hook, vae_scale_factor)

    def prepare(self, pipe, inputs: DenoiseInputs, backend_for) -> Denoise:
        import torch

        from ..samplers import StepOut

        device, dtype = pipe.transformer.device, pipe.transformer.dtype
        images = len(inputs.prompts)
        cfg_rows = self.uses_cfg_rows(inputs.guidance)
        with torch.inference_mode():
            embeds, neg_embeds, pooled, neg_pooled = pipe.encode_prompt(
                prompt=list(inputs.prompts), prompt_2=None, prompt_3=None, device=device, num_images_per_prompt=1,
                do_classifier_free_guidance=cfg_rows,
                negative_prompt=[inputs.negative_prompt or ""] * images if cfg_rows else None,
                max_sequence_length=inputs.max_sequence_length,
            )
        rows = self.rows(images, cfg_rows)
        spec, backend = backend_for(rows, embeds.shape[1])
        feeds = spec.allocate("inputs", device)
        feeds["encoder_hidden_states"].copy_(torch.cat([neg_embeds, embeds]) if cfg_rows else embeds)
        feeds["pooled_projections"].copy_(torch.cat([neg_pooled, pooled]) if cfg_rows else pooled)
        feeds["span_mask"][rows - images :].copy_(inputs.span_mask)  # cond rows only; uncond rows stay 0
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
            timestep.fill_(self.timestep(sigma, scheduler_config))
            out = backend(feeds)
            v, attn = out["velocity"], out["attn"][rows - images :]
            if cfg_rows:
                v_uncond, v_cond = v[:images], v[images:]
                v = v_uncond + guidance * (v_cond - v_uncond)
            attn_sum.add_(attn)
            return StepOut(v, attn)

        return Denoise(step, latents, image_tokens, attn_sum, feeds)


SD3 = SD3Family()
