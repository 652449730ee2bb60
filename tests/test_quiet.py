"""A healthy run prints nothing that looks like failure: our causes fixed, the libraries' notes
about our deliberate choices filtered narrowly (by logger and message, quiet.py)."""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest

from amo_engine.model.load import load_model


@pytest.mark.slow
def test_a_glyph_load_says_nothing_that_looks_like_failure():
    code = ("from diffusers.utils import logging as dl; dl.disable_progress_bar(); import transformers; "
            "transformers.logging.disable_progress_bar(); from amo_engine.model.load import load_model; "
            "load_model('glyph')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "requires torchvision" not in done.stderr and "Expected types for vae" not in done.stderr, done.stderr


def test_the_filters_are_narrow():
    import logging

    from amo_engine import quiet

    quiet.install()
    logger = logging.getLogger("diffusers.pipelines.pipeline_utils")
    ours = logging.LogRecord(logger.name, logging.WARNING, "", 0, "Expected types for vae: (X,), got <class "
                             "'amo_engine.model.glyph.autoencoder.PixelUnshuffleAutoencoder'>.", None, None)
    theirs = logging.LogRecord(logger.name, logging.WARNING, "", 0, "Expected types for vae: (X,), got <class "
                               "'mypackage.MyVae'>.", None, None)
    assert not logger.filter(ours) and logger.filter(theirs)


@pytest.mark.slow
def test_export_does_not_warn_about_training_mode(tmp_path):
    from amo_engine.engine.export import ExportConfig, export_engine

    model = load_model("glyph")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        export_engine(model, ExportConfig(out=tmp_path / "e", log=False))
    assert not [w for w in seen if "training mode" in str(w.message)], [str(w.message) for w in seen]


def test_torch_internal_deprecations_are_hidden_others_shown():
    from amo_engine.quiet import torch_internals

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with torch_internals():
            warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ...", FutureWarning)
            warnings.warn("something else is deprecated", FutureWarning)
    assert [str(w.message) for w in seen] == ["something else is deprecated"]
