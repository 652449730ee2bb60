"""Each hook input group is declared once (model/inputs.py): the backbone's IOSpec, the identity
buffers, the sample feeds, the export flag, the export hint, the refusal and old manifests all
follow the declaration."""

from __future__ import annotations

import pytest
import torch

from amo_engine.cli import build_parser
from amo_engine.engine.hints import export_command
from amo_engine.model.backbone import HookConfig
from amo_engine.model.families import make_backbone
from amo_engine.model.inputs import GROUPS, KV_SWAP, MODULATION, declared_fills, sample_feeds
from amo_engine.spec import IOSpec

from conftest import HEIGHT, TEXT_LEN, WIDTH, random_feeds, tiny_transformer


def model_feeds(backbone) -> dict[str, torch.Tensor]:
    """The backbone's own inputs (no hook input group)."""
    hook_names = {n for g in GROUPS for n in g.names}
    return {n: v for n, v in random_feeds(backbone).items() if n not in hook_names}


@pytest.fixture(scope="module")
def both():
    return make_backbone(tiny_transformer("sd3"), HookConfig(kv_swap=True, modulation=True, max_groups=3,
                                                             lora_rank=2, lora_blocks=(1, 2)))


def test_the_io_spec_holds_each_declared_tensor_as_declared(both):
    spec = both.io_spec(2, HEIGHT, WIDTH, TEXT_LEN["sd3"])
    for group in GROUPS:
        for declared in group.inputs:
            t = spec.tensor(declared.name)
            assert (t.dtype, t.fill) == (declared.dtype, declared.fill)
            assert len(t.shape) == len(declared.shape)
    assert spec.shape("kv_swap_gate") == (4,) and spec.shape("quadrant_scale") == (4, 4)
    assert spec.shape("text_groups") == (2, TEXT_LEN["sd3"], 3)
    dim = both.config.num_attention_heads * both.config.attention_head_dim
    assert spec.shape("lora_down") == (2, 16, 2, dim) and spec.shape("lora_up") == (2, 16, dim, 2)  # 2 blocks x 8
    plain = make_backbone(tiny_transformer("sd3"), HookConfig()).io_spec(2, HEIGHT, WIDTH, TEXT_LEN["sd3"])
    assert not any(g.present_in(plain) for g in GROUPS) and all(g.present_in(spec) for g in GROUPS)


def test_identity_buffers_reproduce_the_plain_backbone(both):
    spec = both.io_spec(2, HEIGHT, WIDTH, TEXT_LEN["sd3"])
    buffers = spec.allocate("inputs")
    assert torch.equal(buffers["kv_donor_index"], torch.arange(2)) and torch.equal(buffers["quadrant_scale"],
                                                                                torch.ones(4, 4))
    feeds = model_feeds(both)
    identity = {n: buffers[n] for g in GROUPS for n in g.names}
    plain = make_backbone(tiny_transformer("sd3"), HookConfig())
    with torch.no_grad():
        got, want = both(**feeds, **identity), plain(**feeds)
    assert (got[0] - want[0]).abs().max() <= 1e-5 and (got[1] - want[1]).abs().max() <= 1e-6


def test_sample_feeds_follow_the_declarations(both):
    spec = both.io_spec(3, HEIGHT, WIDTH, TEXT_LEN["sd3"])
    feeds = sample_feeds(spec)
    assert feeds["kv_donor_index"].tolist() == [1, 2, 0] and feeds["kv_donor_index"].dtype == torch.int64
    assert feeds["kv_swap_gate"].tolist() == [0.0, 1.0, 0.5, 0.0]
    assert set(feeds["text_groups"].unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(sample_feeds(spec)["text_bias"], feeds["text_bias"])  # deterministic


def test_flags_hints_and_old_manifests_come_from_the_declarations():
    flags = [part for g in GROUPS for part in ((g.flag, "3") if g.metavar else (g.flag,))]
    args = build_parser().parse_args(["export", "--out", "e", *flags])
    assert all(getattr(args, g.switch) for g in GROUPS) and args.lora_rank == 3
    assert export_command("glyph", "e", kv_swap=True).endswith("--kv-swap")
    assert export_command("glyph", "e", lora_rank=3, lora_blocks=(4, 5)).endswith("--lora-slots 3 --lora-blocks 4,5")
    assert export_command("glyph", "e", modulation=True, kv_swap=True).endswith("--kv-swap --modulation")
    with pytest.raises(TypeError, match="unknown options"):
        export_command("glyph", "e", nope=True)
    old_io = {"inputs": [{"name": n, "dtype": "float32", "shape": [2]} for n in ("kv_donor_index", "quadrant_scale")],
              "outputs": [], "dims": {}}
    spec = IOSpec.from_json(old_io, declared_fills())  # an engine written before fills were recorded
    assert [t.fill for t in spec.inputs] == ["row_index", "ones"]
    assert IOSpec.from_json(spec.to_json()) == spec  # format-2 IOSpecs carry their fills
    assert declared_fills()["group_gate"] == "zeros" and KV_SWAP.title in KV_SWAP.help()
    assert MODULATION.names == ("quadrant_scale", "text_bias", "text_groups", "image_groups", "group_gate")


def test_a_group_is_given_whole_and_only_when_built(both):
    feeds = model_feeds(both)
    identity = both.io_spec(2, HEIGHT, WIDTH, TEXT_LEN["sd3"]).allocate("inputs")
    swap = {n: identity[n] for n in KV_SWAP.names}
    with pytest.raises(ValueError, match="built with the attention-modulation inputs; give all of them"):
        both(**feeds, **swap)
    with pytest.raises(ValueError, match="text K/V swap inputs go together"):
        both(**feeds, kv_donor_index=identity["kv_donor_index"])
    with pytest.raises(TypeError, match="unexpected backbone inputs \\['nope'\\]"):
        both(**feeds, nope=identity["kv_swap_gate"])
