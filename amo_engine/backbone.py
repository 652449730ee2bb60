"""Backbone modules: a diffusers transformer behind a flat, tensor-only forward in IOSpec names,
returning (velocity, attn). The same module runs eagerly and is what gets exported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from .attention import FluxScoreAttnProcessor, ScoreContext, SD3ScoreAttnProcessor
from .spec import IOSpec, TensorSpec, dtype_name


@dataclass(frozen=True)
class ScoreConfig:
    """Which blocks carry the score side branch and how many span rows it reads."""

    hooked_blocks: tuple[int, ...] | None = None  # None: every joint (SD3) / double-stream (FLUX) block
    max_span_tokens: int = 64  # fixed S of the side branch; longer spans are cut (pipeline warns)


def family_of(transformer: nn.Module) -> str:
    name = type(transformer).__name__
    if name.startswith("SD3Transformer"):
        return "sd3"
    if name.startswith("FluxTransformer"):
        return "flux"
    raise ValueError(f"unsupported transformer class {name}; amo-engine supports SD3Transformer2DModel and FluxTransformer2DModel")


def resolve_blocks(n_blocks: int, hooked: Sequence[int] | None) -> tuple[int, ...]:
    if hooked is None:
        return tuple(range(n_blocks))
    blocks = tuple(sorted({int(i) for i in hooked}))
    if not blocks or blocks[0] < 0 or blocks[-1] >= n_blocks:
        raise ValueError(f"hooked blocks {list(hooked)} out of range: the model has joint blocks 0..{n_blocks - 1}")
    return blocks


class Fp32FluxPosEmbed(nn.Module):
    """FLUX RoPE computed in float32 (diffusers uses float64, which breaks export)."""

    def __init__(self, theta: int, axes_dim: Sequence[int]):
        super().__init__()
        self.theta = theta
        self.axes_dim = list(axes_dim)

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pos = ids.float()  # [L, n_axes]
        cos_out, sin_out = [], []
        for i, dim in enumerate(self.axes_dim):
            exponent = torch.arange(0, dim, 2, dtype=torch.float32, device=ids.device) / dim  # [dim/2]
            freqs = torch.outer(pos[:, i], 1.0 / (self.theta**exponent))  # [L, dim/2]
            cos_out.append(freqs.cos().repeat_interleave(2, dim=1))  # [L, dim]
            sin_out.append(freqs.sin().repeat_interleave(2, dim=1))
        return torch.cat(cos_out, dim=-1), torch.cat(sin_out, dim=-1)  # [L, sum(axes_dim)] each


def install_score_processors(transformer: nn.Module, family: str) -> ScoreContext:
    """Give every joint (SD3) / double-stream (FLUX) block a score processor sharing one context.

    Idempotent: backbones over the same transformer share the context and choose their hooked
    blocks per call, so several backbones (different hooked blocks) can coexist.
    """
    ctx = getattr(transformer, "_amo_score_ctx", None)
    if ctx is not None:
        return ctx
    ctx = ScoreContext()
    proc = SD3ScoreAttnProcessor if family == "sd3" else FluxScoreAttnProcessor
    for i, block in enumerate(transformer.transformer_blocks):
        block.attn.set_processor(proc(ctx, i))
    transformer._amo_score_ctx = ctx
    return ctx


class _Backbone(nn.Module):
    family: str

    def __init__(self, transformer: nn.Module, score: ScoreConfig = ScoreConfig()):
        super().__init__()
        self.transformer = transformer
        self.score = score
        self.hooked_blocks = resolve_blocks(len(transformer.transformer_blocks), score.hooked_blocks)
        self.ctx = install_score_processors(transformer, self.family)

    @property
    def config(self):
        return self.transformer.config

    def _finish(self, velocity: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return velocity, self.ctx.finish()

    def io_spec(
        self, batch: int, height: int, width: int, text_len: int, dtype: torch.dtype = torch.float32
    ) -> IOSpec:
        """IOSpec for latents of ``height x width`` pixels (VAE factor 8) and ``text_len`` text tokens."""
        raise NotImplementedError


class SD3Backbone(_Backbone):
    """SD3 MMDiT: latents [B, C, H, W], text [B, T, D], joint order [image ; text]."""

    family = "sd3"

    def forward(
        self,
        hidden_states: torch.Tensor,  # [B, C, h, w] latents
        encoder_hidden_states: torch.Tensor,  # [B, T, D_txt]
        pooled_projections: torch.Tensor,  # [B, P]
        timestep: torch.Tensor,  # [B] in the scheduler's 0..1000 scale
        span_mask: torch.Tensor,  # [B, T] 1 on quoted-text tokens
    ) -> tuple[torch.Tensor, torch.Tensor]:
        self.ctx.start(span_mask, self.score.max_span_tokens, self.hooked_blocks)
        velocity = self.transformer(
            hidden_states=hidden_states,
            encoder_hidden_states=encoder_hidden_states,
            pooled_projections=pooled_projections,
            timestep=timestep,
            return_dict=False,
        )[0]
        return self._finish(velocity)

    def io_spec(self, batch, height, width, text_len, dtype=torch.float32):
        cfg = self.config
        lat_h, lat_w = height // 8, width // 8
        p = cfg.patch_size
        if lat_h % p or lat_w % p:
            raise ValueError(f"height and width must be multiples of {8 * p} for this model, got {height}x{width}")
        dt = dtype_name(dtype)
        return IOSpec(
            inputs=(
                TensorSpec("hidden_states", dt, ("batch", cfg.in_channels, "latent_h", "latent_w")),
                TensorSpec("encoder_hidden_states", dt, ("batch", "text_len", cfg.joint_attention_dim)),
                TensorSpec("pooled_projections", dt, ("batch", cfg.pooled_projection_dim)),
                TensorSpec("timestep", dt, ("batch",)),
                TensorSpec("span_mask", dt, ("batch", "text_len")),
            ),
            outputs=(
                TensorSpec("velocity", dt, ("batch", cfg.out_channels, "latent_h", "latent_w")),
                TensorSpec("attn", "float32", ("batch", "image_tokens")),
            ),
            dims={
                "batch": batch,
                "latent_h": lat_h,
                "latent_w": lat_w,
                "text_len": text_len,
                "image_tokens": (lat_h // p) * (lat_w // p),
            },
        )


class FluxBackbone(_Backbone):
    """FLUX: packed latents [B, N, 64], text [B, T, D], joint order [text ; image], RoPE in fp32."""

    family = "flux"

    def __init__(self, transformer: nn.Module, score: ScoreConfig = ScoreConfig()):
        super().__init__(transformer, score)
        pe = transformer.pos_embed
        if not isinstance(pe, Fp32FluxPosEmbed):
            transformer.pos_embed = Fp32FluxPosEmbed(pe.theta, pe.axes_dim)

    @property
    def has_guidance(self) -> bool:
        return bool(self.config.guidance_embeds)

    def forward(
        self,
        hidden_states: torch.Tensor,  # [B, N_img, C_in] packed latents
        encoder_hidden_states: torch.Tensor,  # [B, T, D_txt]
        pooled_projections: torch.Tensor,  # [B, P]
        timestep: torch.Tensor,  # [B] sigma in [0, 1]
        img_ids: torch.Tensor,  # [N_img, 3]
        txt_ids: torch.Tensor,  # [T, 3]
        span_mask: torch.Tensor,  # [B, T]
        guidance: torch.Tensor | None = None,  # [B] (guidance-distilled models only)
    ) -> tuple[torch.Tensor, torch.Tensor]:
        self.ctx.start(span_mask, self.score.max_span_tokens, self.hooked_blocks)
        velocity = self.transformer(
            hidden_states=hidden_states,
            encoder_hidden_states=encoder_hidden_states,
            pooled_projections=pooled_projections,
            timestep=timestep,
            img_ids=img_ids,
            txt_ids=txt_ids,
            guidance=guidance,
            return_dict=False,
        )[0]
        return self._finish(velocity)

    def io_spec(self, batch, height, width, text_len, dtype=torch.float32):
        cfg = self.config
        if height % 16 or width % 16:
            raise ValueError(f"height and width must be multiples of 16 for FLUX, got {height}x{width}")
        dt = dtype_name(dtype)
        n_img = (height // 16) * (width // 16)
        inputs = [
            TensorSpec("hidden_states", dt, ("batch", "image_tokens", cfg.in_channels)),
            TensorSpec("encoder_hidden_states", dt, ("batch", "text_len", cfg.joint_attention_dim)),
            TensorSpec("pooled_projections", dt, ("batch", cfg.pooled_projection_dim)),
            TensorSpec("timestep", dt, ("batch",)),
            TensorSpec("img_ids", "float32", ("image_tokens", 3)),
            TensorSpec("txt_ids", "float32", ("text_len", 3)),
            TensorSpec("span_mask", dt, ("batch", "text_len")),
        ]
        if self.has_guidance:
            inputs.append(TensorSpec("guidance", dt, ("batch",)))
        return IOSpec(
            inputs=tuple(inputs),
            outputs=(
                TensorSpec("velocity", dt, ("batch", "image_tokens", cfg.out_channels or cfg.in_channels)),
                TensorSpec("attn", "float32", ("batch", "image_tokens")),
            ),
            dims={"batch": batch, "image_tokens": n_img, "text_len": text_len},
        )


def make_backbone(transformer: nn.Module, score: ScoreConfig = ScoreConfig()) -> _Backbone:
    """Wrap a diffusers SD3 or FLUX transformer (its hooked blocks get score processors)."""
    cls = SD3Backbone if family_of(transformer) == "sd3" else FluxBackbone
    return cls(transformer, score)
