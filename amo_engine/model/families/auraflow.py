"""AuraFlow (fal): latents [B, 4, h, w] patched 2x2 by the transformer with learned positions, text =
8 learned register tokens followed by the (Pile-)T5 tokens, joint MMDiT blocks in the order
[text ; image] then single DiT blocks over the joined sequence, classifier-free guidance batched as
[uncond ; cond] rows, timestep = (sigma x 1000) / 1000 in float32 as its pipeline computes it, no
VAE shift. AMO's scores come from the joint blocks; the single blocks keep their own processor."""

from __future__ import annotations

from amo_engine.model.families.base import Denoise, DenoiseInputs, Family, config_value, guided_loop

REGISTER_TOKENS = 8  # AuraFlowTransformer2DModel.register_tokens, prepended to the text in every block


class AuraFlowFamily(Family):
    name = "auraflow"
    register_tokens = REGISTER_TOKENS
    pipeline_class = "AuraFlowPipeline"
    transformer_prefix = "AuraFlowTransformer"
    guidance = 3.5
    max_sequence_length = 256
    size = 1024
    image_first = False
    batches_cfg = True
    explicit_sigmas = False
    attention_kwargs_name = "attention_kwargs"
    joint_block_path = "joint_transformer_blocks"
    reference_scheduler = {"shift": 1.73, "num_train_timesteps": 1000}

    def pixels_per_token(self, vae_scale_factor, patch_size):
        return vae_scale_factor * patch_size

    def max_tokens_per_side(self, transformer_config):
        import math

        size = config_value(transformer_config, "pos_embed_max_size")  # positions in all: a square of patches
        return math.isqrt(size) if size else None

    def latent_patch(self, transformer_config):
        return transformer_config.patch_size

    def text_length(self, clip_length, max_sequence_length):
        return REGISTER_TOKENS + max_sequence_length  # no CLIP

    def text_layout(self, pipe, max_sequence_length):
        from amo_engine.prompts import auraflow_layout

        return auraflow_layout(pipe.tokenizer, REGISTER_TOKENS, max_sequence_length)

    def timestep(self, sigma, scheduler_config):
        import numpy as np

        n = np.float32(scheduler_config.get("num_train_timesteps", 1000))
        return float(np.float32(np.float32(sigma) * n) / n)  # the pipeline's t / 1000, t = sigma * 1000

    def joint_block_count(self, transformer_config):
        return transformer_config.num_mmdit_layers

    def attentions(self, transformer):
        return ([b.attn for b in transformer.joint_transformer_blocks],
                [b.attn for b in transformer.single_transformer_blocks])

    def backbone(self, transformer, hook, vae_scale_factor):
        from amo_engine.model.backbone import AuraFlowBackbone

        return AuraFlowBackbone(transformer, self, hook, vae_scale_factor)

    def prepare(self, pipe, inputs: DenoiseInputs, backend_for) -> Denoise:
        import torch

        images = len(inputs.prompts)
        cfg_rows = self.uses_cfg_rows(inputs.guidance)
        with torch.inference_mode():
            embeds, _, neg_embeds, _ = pipe.encode_prompt(
                prompt=list(inputs.prompts), negative_prompt=[inputs.negative_prompt or ""] * images,
                do_classifier_free_guidance=cfg_rows, num_images_per_prompt=1, device=pipe.transformer.device,
                max_sequence_length=inputs.max_sequence_length,
            )  # [B, T, D], padding positions zeroed as the pipeline does
        text = {"encoder_hidden_states": torch.cat([neg_embeds, embeds]) if cfg_rows else embeds}
        return guided_loop(self, pipe, inputs, backend_for, text, REGISTER_TOKENS + embeds.shape[1], cfg_rows)

    def decode(self, pipe, latents, height, width):
        import torch

        vae = pipe.vae
        with torch.inference_mode():
            image = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor, return_dict=False)[0]
        return pipe.image_processor.postprocess(image, output_type="pil")


AURAFLOW = AuraFlowFamily()
