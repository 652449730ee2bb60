"""Narrow filters for library messages about choices this package makes on purpose, so that a
healthy run prints nothing that looks like failure. Each filter names its logger and matches one
message; everything else those libraries say still shows.

* transformers: "`SiglipImageProcessor` requires torchvision ... falling back" — said when diffusers
  imports its pipelines; no image processor is ever used here, and torchvision is not a dependency.
* diffusers: "Expected types for vae: (AutoencoderKL,), got PixelUnshuffleAutoencoder" — the glyph
  models' exact autoencoder has the VAE interface the pipelines call, not the class they annotate.
"""

from __future__ import annotations

import logging
import re

FILTERS = {
    "transformers.utils.import_utils": re.compile(r"`\w*ImageProcessor` requires torchvision"),
    "diffusers.pipelines.pipeline_utils": re.compile(r"Expected types for vae: .* got <class 'amo_engine\."),
}


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
