"""An exact, training-free autoencoder with diffusers' VAE interface: grey pixels folded into
channels by pixel-unshuffle.

``encode`` averages RGB to grey and folds each ``factor x factor`` pixel block into channels;
``decode`` unfolds them and repeats grey into RGB. Reconstruction is exact (up to the grey
conversion), so the glyph model's text quality is the transformer's alone. The config carries the
fields the pipelines read from an AutoencoderKL: ``scaling_factor``, ``shift_factor``,
``latent_channels`` and ``block_out_channels`` (its length n sets the downscale 2^(n-1)).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKLOutput
from diffusers.models.autoencoders.vae import DecoderOutput, DiagonalGaussianDistribution
from diffusers.models.modeling_utils import ModelMixin


class PixelUnshuffleAutoencoder(ModelMixin, ConfigMixin):
    config_name = "config.json"

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        latent_channels: int = 16,
        block_out_channels: tuple[int, ...] = (16, 16, 16),
        scaling_factor: float = 1.0,
        shift_factor: float = 0.0,
    ):
        super().__init__()
        factor = 2 ** (len(block_out_channels) - 1)
        if latent_channels != factor * factor:
            raise ValueError(f"latent_channels must be factor^2 = {factor * factor} for a /{factor} grey unshuffle")
        self.factor = factor
        # RGB -> grey weights: the module's one tensor (it also gives the model its dtype and device)
        self.register_buffer("grey_weights", torch.full((in_channels,), 1.0 / in_channels))

    def encode(self, x: torch.Tensor, return_dict: bool = True):
        """[B, C, H, W] pixels in [-1, 1] -> a deterministic latent distribution [B, f^2, H/f, W/f]."""
        grey = torch.einsum("bchw,c->bhw", x, self.grey_weights.to(x.dtype))[:, None]  # [B, 1, H, W]
        mean = F.pixel_unshuffle(grey, self.factor)  # [B, f^2, H/f, W/f]
        dist = DiagonalGaussianDistribution(torch.cat([mean, torch.zeros_like(mean)], dim=1), deterministic=True)
        return AutoencoderKLOutput(latent_dist=dist) if return_dict else (dist,)

    def decode(self, z: torch.Tensor, return_dict: bool = True, generator=None):
        """[B, f^2, h, w] latents -> [B, out_channels, h*f, w*f] pixels (grey repeated)."""
        grey = F.pixel_shuffle(z, self.factor)  # [B, 1, H, W]
        image = grey.expand(-1, self.config.out_channels, -1, -1).contiguous()  # [B, C, H, W]
        return DecoderOutput(sample=image) if return_dict else (image,)
