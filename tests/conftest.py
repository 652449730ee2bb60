"""Shared fixtures: tiny seeded SD3 / SD3.5 / FLUX / AuraFlow transformers and feeds built from their IOSpec."""

from __future__ import annotations

import copy

import pytest
import torch

from amo_engine.model.backbone import HookConfig
from amo_engine.model.families import make_backbone
from amo_engine.model.families.auraflow import REGISTER_TOKENS
from amo_engine.model.presets import TINY_SD35, tiny_auraflow_transformer, tiny_flux_transformer, tiny_sd3_transformer

FAMILIES = ("sd3", "flux", "sd35", "auraflow")  # the tiny presets tiny-<name>: every family and SD3.5's options
# Feature tests (text swap, modulation, CLI, reliability) run every family once: SD3.5 is SD3's code
# past the hook's projections (its RMS q/k norms and attn2 are covered by the invariant tests).
FEATURE_FAMILIES = ("sd3", "flux", "auraflow")
HEIGHT = WIDTH = 128
FAMILY_NAMES = {"sd3": "sd3", "sd35": "sd3", "flux": "flux", "auraflow": "auraflow"}  # preset -> Family.name
TEXT_LEN = {"sd3": 77 + 16, "sd35": 77 + 16, "flux": 24, "auraflow": REGISTER_TOKENS + 16}
TRANSFORMERS = {"sd3": tiny_sd3_transformer, "sd35": lambda: tiny_sd3_transformer(**TINY_SD35),
                "flux": tiny_flux_transformer, "auraflow": tiny_auraflow_transformer}


def tiny_transformer(family: str, seed: int = 0):
    torch.manual_seed(seed)
    return TRANSFORMERS[family]().eval()


def random_feeds(backbone, batch: int = 2, seed: int = 1, span_prob: float = 0.2) -> dict[str, torch.Tensor]:
    """Feeds for ``backbone`` at the test size: random states, a random span mask (never on
    AuraFlow's register tokens), the family's timestep scale, valid FLUX ids."""
    fam = backbone.family
    spec = backbone.io_spec(batch, HEIGHT, WIDTH, TEXT_LEN[fam.name])
    g = torch.Generator().manual_seed(seed)
    feeds = {n: torch.randn(spec.shape(n), generator=g) for n in spec.input_names}
    feeds["span_mask"] = (torch.rand(spec.shape("span_mask"), generator=g) < span_prob).float()
    registers = spec.dims.get("text_len", 0) - spec.dims.get("prompt_len", spec.dims.get("text_len", 0))
    feeds["span_mask"][:, :registers] = 0.0
    feeds["span_mask"][:, registers + 1] = 1.0  # at least one span token per row
    feeds["timestep"] = torch.tensor([fam.timestep(float(s), fam.reference_scheduler)
                                      for s in torch.rand(batch, generator=g)])
    if "guidance" in feeds:
        feeds["guidance"] = torch.full((batch,), 3.5)
    if "img_ids" in feeds:
        side = HEIGHT // 16
        img_ids = torch.zeros(side * side, 3)
        img_ids[:, 1] = torch.arange(side * side) // side
        img_ids[:, 2] = torch.arange(side * side) % side
        feeds["img_ids"] = img_ids
        feeds["txt_ids"] = torch.zeros(spec.shape("txt_ids"))
    return feeds


@pytest.fixture(scope="session")
def preset_cache(tmp_path_factory):
    """One folder of built presets for the whole run (building one takes a few seconds)."""
    return tmp_path_factory.mktemp("presets")


@pytest.fixture(scope="session")
def models(preset_cache):
    """The loaded tiny presets, shared: {"sd3": LoadedModel, "flux": LoadedModel}."""
    from amo_engine.model.load import load_model

    return {name: load_model(f"tiny-{name}", cache_dir=preset_cache) for name in FAMILIES}


@pytest.fixture(scope="session")
def exported(models, tmp_path_factory):
    """The engines the suite shares, each exported once per run when a test first asks for it:
    ``exported(preset, batch=1, exporter="dynamo", **hook)`` -> its folder. Tests read these folders;
    a test that changes an engine copies it first."""
    from amo_engine.engine.export import ExportConfig, export_engine

    root = tmp_path_factory.mktemp("engines")
    made = {}

    def get(family: str, batch: int = 1, exporter: str = "dynamo", **hook):
        key = (family, batch, exporter, tuple(sorted(hook.items())))
        if key not in made:
            folder = root / "-".join([family, str(batch), exporter, *(f"{k}={v}" for k, v in key[3])]).replace(" ", "")
            export_engine(models[family], ExportConfig(out=folder, batch=batch, exporter=exporter, log=False),
                          HookConfig(**hook))
            made[key] = folder
        return made[key]

    return get


@pytest.fixture(params=FAMILIES)
def family(request) -> str:
    return request.param


@pytest.fixture
def backbone_and_stock(family):
    """(backbone with score hooks, untouched stock copy of the same transformer)."""
    model = tiny_transformer(family)
    stock = copy.deepcopy(model)
    return make_backbone(model, HookConfig()), stock


def cli_in_fresh_process(argv: list[str]):
    """Run ``amo_engine.cli.main(argv)`` in a new interpreter; stdout says whether diffusers got
    imported (bad options must be judged before any heavy import)."""
    import subprocess
    import sys

    code = ("import sys; from amo_engine.cli import main; rc = main(sys.argv[1:]); "
            "print('diffusers' in sys.modules); sys.exit(rc)")
    return subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120)


def pasted_export(message: str):
    """The ``amo-engine export ...`` command a hint suggests, parsed by the CLI's own parser as a
    user pasting it would (a hint that does not parse fails the test): the argparse Namespace."""
    import shlex

    from amo_engine.cli import build_parser

    assert "amo-engine export" in message, message
    command = message[message.index("amo-engine export"):].split(" (then ")[0].strip()
    argv = shlex.split(command)[1:]
    try:
        return build_parser().parse_args(argv)
    except SystemExit:
        raise AssertionError(f"the suggested command does not parse: {command}") from None
