"""Narrow filters for library messages about choices this package makes on purpose, so that a
healthy run prints nothing that looks like failure. Each filter names its logger and matches one
message; everything else those libraries say still shows.

* transformers: "`SiglipImageProcessor` requires torchvision ... falling back" — said when diffusers
  imports its pipelines; no image processor is ever used here, and torchvision is not a dependency.
* diffusers: "Expected types for vae: (AutoencoderKL,), got PixelUnshuffleAutoencoder" — the glyph
  models' exact autoencoder has the VAE interface the pipelines call, not the class they annotate.
* Ray Serve: "Connecting to existing Serve app" — said by ``serve.run`` right after ``serve start``
  made that app, on every fresh start.
* torch (warnings, not logs): "`isinstance(treespec, LeafSpec)` is deprecated" — raised inside
  torch.export / AOTInductor's own code while compiling or loading a package (``torch_internals``).
"""

from __future__ import annotations

import contextlib
import logging
import re
import warnings

FILTERS = {
    "transformers.utils.import_utils": re.compile(r"`\w*ImageProcessor` requires torchvision"),
    "diffusers.pipelines.pipeline_utils": re.compile(r"Expected types for vae: .* got <class 'amo_engine\."),
    "ray.serve": re.compile(r"Connecting to existing Serve app"),
}
TORCH_INTERNAL_WARNINGS = ((FutureWarning, r"`isinstance\(treespec, LeafSpec\)` is deprecated"),)


class _Drop(logging.Filter):
    def __init__(self, pattern: re.Pattern):
        super().__init__()
        self.pattern = pattern

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.search(record.getMessage())


def install() -> None:
    """Add the filters once (idempotent); call before diffusers' pipelines are imported."""
    for name, pattern in FILTERS.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _Drop) and f.pattern is pattern for f in logger.filters):
            logger.addFilter(_Drop(pattern))


@contextlib.contextmanager
def torch_internals():
    """Hide torch's deprecation notes about its own internal calls (TORCH_INTERNAL_WARNINGS) for the
    duration of a torch.export / AOTInductor call; every other warning still shows."""
    with warnings.catch_warnings():
        for category, message in TORCH_INTERNAL_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=category)
        yield
