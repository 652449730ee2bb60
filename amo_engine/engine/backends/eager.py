"""Eager PyTorch backend: the backbone module itself behind the Backend contract."""

from __future__ import annotations

from typing import Mapping

import torch

from amo_engine.engine.backends.base import ClosingBackend


class EagerBackend(ClosingBackend):
    """Runs the backbone in PyTorch at whatever shape the feeds have (``spec`` None). Returns fresh
    tensors (no copy into static outputs)."""

    kind = "eager"
    spec = None

    def __init__(self, backbone: torch.nn.Module):
        self.backbone = backbone.eval()

    def __call__(self, feeds: Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
        with torch.inference_mode():
            outputs = self.backbone(**feeds)
        return dict(zip(self.backbone.output_names, outputs))
