"""Pictures for people: AMO's span map as a heat-map overlay on the generated image."""

from __future__ import annotations

from pathlib import Path

import torch

from amo_engine.atomic import atomic_path


def save_attention_overlay(image, attn_map: torch.Tensor, path: Path | str, alpha: float = 0.5,
                           title: str = "AMO map m (quoted text -> patches)") -> None:
    """Side by side: the image, and the image under the min-max normalised map (bilinear)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    m = attn_map.float()
    m = (m - m.min()) / (m.max() - m.min()) if float(m.max() - m.min()) > 0 else torch.ones_like(m)
    up = torch.nn.functional.interpolate(m[None, None], size=(image.height, image.width), mode="bilinear",
                                         align_corners=False)[0, 0].numpy()  # [H, W]
    fig, axes = plt.subplots(1, 2, figsize=(8, 4.3), dpi=100)
    axes[0].imshow(np.asarray(image))
    axes[0].set_title("image")
    axes[1].imshow(np.asarray(image))
    shown = axes[1].imshow(up, cmap="inferno", alpha=alpha, vmin=0, vmax=1)
    axes[1].set_title(title)
    for ax in axes:
        ax.axis("off")
    fig.colorbar(shown, ax=axes[1], fraction=0.046)
    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)
