"""FLUX: latents packed 2x2 into tokens [B, N, 64] with RoPE position ids, text = T5 tokens only,
joint attention order [text ; image], guidance distilled into an input (no CFG rows), explicit
sigma grid with resolution-dependent shift, timestep = sigma."""

from __future__ import annotations

from amo_engine.model.families.base import Denoise, DenoiseInputs, Family, decode_with_vae


class FluxFamily(Family):
    name = "flux"
    pipeline_class = "FluxPipeline"
    transformer_prefix = "FluxTransformer"
    guidance = 3.5
    max_sequence_length = 512
    size = 1024
    image_first = False
    batches_cfg = False
    explicit_sigmas = True
    reference_scheduler = {"shift": 3.0, "use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 1.15,
                           "base_image_seq_len": 256, "max_image_seq_len": 4096, "num_train_timesteps": 1000}

    def pixels_per_token(self, vae_scale_factor, patch_size):
        return vae_scale_factor * 2  # latents packed 2x2 into one token

    def latent_patch(self, transformer_config):
        return 1  # packed latents: one row per token already

    def text_length(self, clip_length, max_sequence_length):
        return max_sequence_length

    def text_layout(self, pipe, max_sequence_length):
        from amo_engine.prompts import flux_layout

        return flux_layout(pipe.tokenizer_2, max_sequence_length)

    def timestep(self, sigma, scheduler_config):
        return sigma

    def backbone(self, transformer, hook, vae_scale_factor):
        from amo_engine.model.backbone import FluxBackbone

        return FluxBackbone(transformer, self, hook, vae_scale_factor)

    def prepare(self, pipe, inputs: DenoiseInputs, backend_for) -> Denoise:
        import torch

        from amo_engine.samplers import StepOut

        device, dtype = pipe.transformer.device, pipe.transformer.dtype
        images = len(inputs.prompts)
        with torch.inference_mode():
            embeds, pooled, text_ids = pipe.encode_prompt(prompt=list(inputs.prompts), prompt_2=None, device=device,
                                                          num_images_per_prompt=1,
                                                          max_sequence_length=inputs.max_sequence_length)
        spec, backend, feeds = backend_for(self.rows(images, False), embeds.shape[1])
        latents, image_ids = pipe.prepare_latents(images, pipe.transformer.config.in_channels // 4, inputs.height,
                                                  inputs.width, dtype, device, inputs.generator, inputs.latents)
        # latents [B, N, 64], image_ids [N, 3]
        feeds["encoder_hidden_states"].copy_(embeds)
        feeds["pooled_projections"].copy_(pooled)
        feeds["img_ids"].copy_(image_ids)
        feeds["txt_ids"].copy_(text_ids)
        feeds["span_mask"].copy_(inputs.span_mask)
        if "guidance" in feeds:
            feeds["guidance"].fill_(inputs.guidance)
        image_tokens = spec.dims["image_tokens"]
        attn_sum = torch.zeros(images, image_tokens, device=device)  # [B, N]
        hidden, timestep = feeds["hidden_states"], feeds["timestep"]
        scheduler_config = pipe.scheduler.config

        def step(x, sigma):
            hidden.copy_(x)
            timestep.fill_(self.timestep(sigma, scheduler_config))
            out = backend(feeds)
            attn_sum.add_(out["attn"])
            return StepOut(out["velocity"], out["attn"], out.get("group_attn"))

        return Denoise(step, latents, image_tokens, attn_sum, feeds)

    def decode(self, pipe, latents, height, width):
        latents = pipe._unpack_latents(latents, height, width, pipe.vae_scale_factor)  # [B, 16, H/8, W/8]
        return decode_with_vae(pipe, latents)


FLUX = FluxFamily()
