"""Model families: everything that differs between SD3's MMDiT and FLUX, one file per family.

A ``Family`` says, for its diffusers pipeline: the defaults (guidance, text length, size), how many
backbone rows one image takes (SD3 batches classifier-free guidance as [uncond ; cond] rows), the
text-token layout, the sigma grid and the sigma -> timestep rule, how feeds, noise and latent
packing are built, how a velocity is combined from the rows, and how latents decode to images.
Code outside this package asks the family and never compares family names.
Adding a family: one file here (its rules and backbone) listed in ``_registry``, plus its preset.

This module imports neither torch nor diffusers at import time, so early argument checks can use
it (``by_pipeline_class`` reads only a folder's model_index.json class name).
"""

from __future__ import annotations

from amo_engine.model.families.base import (  # noqa: F401  (the names callers import from the package)
    Denoise,
    DenoiseInputs,
    Family,
    config_value,
    decode_with_vae,
    guided_loop,
)


def _registry() -> dict[str, Family]:
    from amo_engine.model.families.auraflow import AURAFLOW
    from amo_engine.model.families.flux import FLUX
    from amo_engine.model.families.sd3 import SD3

    return {f.name: f for f in (SD3, FLUX, AURAFLOW)}


def family_named(name: str) -> Family:
    families = _registry()
    if name not in families:
        raise ValueError(f"unknown model family {name!r}; amo-engine supports {', '.join(families)}")
    return families[name]


def by_pipeline_class(class_name: str, where: str = "") -> Family:
    """The family of a diffusers pipeline class name (model_index.json's ``_class_name``)."""
    for family in _registry().values():
        if family.pipeline_class == class_name:
            return family
    supported = sorted(f.pipeline_class for f in _registry().values())
    raise ValueError(f"{where}pipeline class {class_name!r} is not supported; amo-engine runs {supported}")


def of_transformer(transformer) -> Family:
    """The family of a diffusers transformer module."""
    name = type(transformer).__name__
    for family in _registry().values():
        if name.startswith(family.transformer_prefix):
            return family
    supported = " and ".join(f.transformer_prefix + "2DModel" for f in _registry().values())
    raise ValueError(f"unsupported transformer class {name}; amo-engine supports {supported}")


def make_backbone(transformer, hook=None, vae_scale_factor: int = 8):
    """Wrap a diffusers SD3, FLUX or AuraFlow transformer in its family's backbone (its joint blocks get
    our processors during calls); ``hook``: a backbone.HookConfig (default: the score tap only)."""
    if hook is None:
        from amo_engine.model.backbone import HookConfig

        hook = HookConfig()
    return of_transformer(transformer).backbone(transformer, hook, vae_scale_factor)
