"""The pipeline's other stages as flat tensor modules with an IOSpec each — the prompt encoders
(CLIP, CLIP with projection, T5) and the VAE decoder — exported beside the backbone so that an
engine folder holds every graph a generation runs.

A stage's outputs are exactly what diffusers' pipeline code reads from the module it replaces:
CLIP gives its pooled embedding (``text_embeds`` with a projection, ``pooler_output`` without)
and its penultimate hidden states (SD3 reads ``hidden_states[-2]``); T5 its last hidden states;
the VAE decoder its ``sample``. Stages are named by the pipeline component they come from
(``text_encoder``, ``text_encoder_2``, ``text_encoder_3``, ``vae``).
"""

from __future__ import annotations

import torch
from torch import nn

from amo_engine.spec import IOSpec, TensorSpec, dtype_name


def _encoder_spec(outputs: tuple[TensorSpec, ...], batch: int, tokens: int, vocab: int) -> IOSpec:
    """A prompt encoder's IOSpec: token ids [batch, tokens] in, ``outputs`` out."""
    return IOSpec(inputs=(TensorSpec("input_ids", "int64", ("batch", "tokens")),), outputs=outputs,
                  dims={"batch": batch, "tokens": tokens, "vocab": vocab})


class _EncoderStage(nn.Module):
    kind: str

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder


class ClipStage(_EncoderStage):
    """input_ids [B, L] -> pooled [B, P], penultimate hidden states [B, L, D]."""

    kind = "clip"

    def forward(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.encoder(input_ids, output_hidden_states=True)
        pooled = out.text_embeds if getattr(out, "text_embeds", None) is not None else out.pooler_output
        return pooled, out.hidden_states[-2]

    def io_spec(self, batch: int, tokens: int) -> IOSpec:
        cfg, dt = self.encoder.config, dtype_name(self.encoder.dtype)
        pooled = getattr(cfg, "projection_dim", None) if hasattr(self.encoder, "text_projection") else None
        outputs = (TensorSpec("pooled", dt, ("batch", pooled or cfg.hidden_size)),
                   TensorSpec("hidden", dt, ("batch", "tokens", cfg.hidden_size)))
        return _encoder_spec(outputs, batch, tokens, cfg.vocab_size)


class T5Stage(_EncoderStage):
    """input_ids [B, L] -> last hidden states [B, L, D]."""

    kind = "t5"

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.encoder(input_ids)[0]

    def io_spec(self, batch: int, tokens: int) -> IOSpec:
        cfg = self.encoder.config
        hidden = TensorSpec("hidden", dtype_name(self.encoder.dtype), ("batch", "tokens", cfg.d_model))
        return _encoder_spec((hidden,), batch, tokens, cfg.vocab_size)


class VaeDecoderStage(nn.Module):
    """latents [B, C, h, w] (already unscaled and unshifted) -> image [B, 3, H, W] in [-1, 1]."""

    kind = "vae_decoder"

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latents, return_dict=False)[0]

    def io_spec(self, batch: int, height: int, width: int) -> IOSpec:
        cfg = self.vae.config
        factor = 2 ** (len(cfg.block_out_channels) - 1)
        dt = dtype_name(self.vae.dtype)
        return IOSpec(
            inputs=(TensorSpec("latents", dt, ("batch", cfg.latent_channels, "latent_h", "latent_w")),),
            outputs=(TensorSpec("image", dt, ("batch", cfg.out_channels, "height", "width")),),
            dims={"batch": batch, "latent_h": height // factor, "latent_w": width // factor, "height": height,
                  "width": width},
        )


def pipeline_stages(pipe, batch: int, height: int, width: int, max_sequence_length: int) -> dict[str, tuple]:
    """{component name: (stage module, IOSpec)} for every prompt encoder the pipeline has and its VAE
    decoder, at ``batch`` prompts or images per call."""
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, T5EncoderModel

    stages = {}
    for name, component in pipe.components.items():
        if not name.startswith("text_encoder") or component is None:
            continue
        if isinstance(component, (CLIPTextModel, CLIPTextModelWithProjection)):
            stage = ClipStage(component).eval()
            stages[name] = (stage, stage.io_spec(batch, pipe.tokenizer_max_length))
        elif isinstance(component, T5EncoderModel):
            stage = T5Stage(component).eval()
            stages[name] = (stage, stage.io_spec(batch, max_sequence_length))
        else:
            raise ValueError(f"{name} is a {type(component).__name__}: no engine stage exports it "
                             "(export without --stages)")
    stage = VaeDecoderStage(pipe.vae).eval()
    stages["vae"] = (stage, stage.io_spec(batch, height, width))
    return stages
