"""Stable Diffusion 3 and 3.5 (MMDiT): latents [B, C, h, w] patched by the transformer, text = CLIP
tokens followed by T5 tokens, joint attention order [image ; text], classifier-free guidance batched
as [uncond ; cond] rows, timestep = sigma x the scheduler's training steps (1000).

SD3.5 is the same pipeline and transformer class with RMS q/k norms (applied in the hook's
projections like the stock processor) and, in SD3.5-Medium, MMDiT-X blocks whose second,
image-only self-attention ``attn2`` the hook leaves to its own processor (``Family.attentions``)."""

from __future__ import annotations

from amo_engine.model.families.base import Denoise, DenoiseInputs, Family, config_value, guided_loop


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

    def joint_projections(self, transformer_config, block):
        from amo_engine.model.lora import PROJECTIONS

        last = block == self.joint_block_count(transformer_config) - 1  # keeps no text stream: no to_add_out
        return tuple(p for p in PROJECTIONS if not (last and p == "to_add_out"))

    def default_guidance(self, transformer_config):
        if config_value(transformer_config, "qk_norm") is None:
            return self.guidance  # SD3
        # SD3.5, as its model cards run it: Medium (MMDiT-X blocks) 4.5, Large 3.5
        return 4.5 if config_value(transformer_config, "dual_attention_layers") else 3.5

    def precision_notes(self, transformer_config, dtype):
        import torch

        large = config_value(transformer_config, "qk_norm") is not None and \
            config_value(transformer_config, "num_layers", 0) >= 38
        if dtype == torch.float16 and large:
            return ["SD3.5-Large in fp16: its late blocks' activations overflow fp16 (public fp16 builds keep one "
                    "block in fp32; amo-engine does not split precision): use --dtype bf16"]
        return []

    def pixels_per_token(self, vae_scale_factor, patch_size):
        return vae_scale_factor * patch_size

    def max_tokens_per_side(self, transformer_config):
        return config_value(transformer_config, "pos_embed_max_size")  # a cropped square table of patches

    def latent_patch(self, transformer_config):
        return transformer_config.patch_size

    def text_length(self, clip_length, max_sequence_length):
        return clip_length + max_sequence_length

    def text_layout(self, pipe, max_sequence_length):
        from amo_engine.prompts import sd3_layout

        return sd3_layout(pipe.tokenizer, pipe.tokenizer_3, pipe.tokenizer_max_length, max_sequence_length)

    def timestep(self, sigma, scheduler_config):
        return sigma * scheduler_config.get("num_train_timesteps", 1000)

    def backbone(self, transformer, hook, vae_scale_factor):
        from amo_engine.model.backbone import SD3Backbone

        return SD3Backbone(transformer, self, hook, vae_scale_factor)

    def prepare(self, pipe, inputs: DenoiseInputs, backend_for) -> Denoise:
        import torch

        images = len(inputs.prompts)
        cfg_rows = self.uses_cfg_rows(inputs.guidance)
        with torch.inference_mode():
            embeds, neg_embeds, pooled, neg_pooled = pipe.encode_prompt(
                prompt=list(inputs.prompts), prompt_2=None, prompt_3=None, device=pipe.transformer.device,
                num_images_per_prompt=1, do_classifier_free_guidance=cfg_rows,
                negative_prompt=[inputs.negative_prompt or ""] * images if cfg_rows else None,
                max_sequence_length=inputs.max_sequence_length,
            )
        text = {"encoder_hidden_states": torch.cat([neg_embeds, embeds]) if cfg_rows else embeds,
                "pooled_projections": torch.cat([neg_pooled, pooled]) if cfg_rows else pooled}
        return guided_loop(self, pipe, inputs, backend_for, text, embeds.shape[1], cfg_rows)


SD3 = SD3Family()
