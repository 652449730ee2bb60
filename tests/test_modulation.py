"""Paper B's attention-modulation knobs: identity values are the plain backbone; the widened-Q/K
path inside one SDPA call equals the explicit-logits path; the group mask cuts a patch off other
groups' tokens; the knobs export to ONNX with parity and pass the TensorRT-parser check."""

from __future__ import annotations

import pytest
import torch

from amo_engine.model.attention import JointQKV
from amo_engine.model.backbone import HookConfig
from amo_engine.model.families import make_backbone
from amo_engine.engine.backends.base import ClosingBackend
from amo_engine.model.inputs import MODULATION
from amo_engine.model.modulation import Modulation, explicit_logits, modulated_attention

KNOBS = MODULATION.names
from amo_engine.model.inputs import sample_feeds

from conftest import FEATURE_FAMILIES, pasted_export, random_feeds, tiny_transformer


@pytest.fixture(params=FEATURE_FAMILIES)
def family(request) -> str:
    """This module's features on every family once (conftest.FEATURE_FAMILIES)."""
    return request.param


def random_qkv(b=2, h=3, n_img=12, n_txt=7, d=8, seed=0) -> JointQKV:
    g = torch.Generator().manual_seed(seed)
    shapes = [(b, h, n_img, d)] * 3 + [(b, h, n_txt, d)] * 3
    return JointQKV(*(torch.randn(s, generator=g) for s in shapes))


def random_knobs(b=2, n_img=12, n_txt=7, groups=3, blocks=2, seed=1) -> Modulation:
    g = torch.Generator().manual_seed(seed)
    text = torch.nn.functional.one_hot(torch.randint(0, groups, (b, n_txt), generator=g), groups).float()
    text[:, 0] = 0  # an ungrouped token
    image = torch.nn.functional.one_hot(torch.randint(0, groups, (b, n_img), generator=g), groups).float()
    image[:, 0] = 0  # an ungrouped patch
    return Modulation(0.5 + torch.rand(blocks, 4, generator=g), torch.randn(b, n_txt, generator=g), text, image,
                      torch.tensor([1.0, 0.0]))


@pytest.mark.parametrize("image_first", [True, False])
@pytest.mark.parametrize("path", ["split", "augmented"])
def test_fused_paths_equal_explicit_logits(image_first, path):
    qkv, mod = random_qkv(), random_knobs()
    for block in (0, 1):  # group mask on, off
        fused = modulated_attention(qkv, mod, block, image_first, path)
        explicit = modulated_attention(qkv, mod, block, image_first, "explicit")
        assert (fused - explicit).abs().max().item() <= 1e-5


def test_group_mask_cuts_patches_off_other_groups_tokens():
    qkv, mod = random_qkv(), random_knobs()
    probs = torch.softmax(explicit_logits(qkv, mod, 0, True), dim=-1)  # [B, H, L, L], image first
    n_img = qkv.img_q.shape[2]
    to_text = probs[:, :, :n_img, n_img:]  # [B, H, N, T]
    grouped_t = mod.text_groups.sum(-1) > 0  # [B, T]
    other = (mod.image_groups @ mod.text_groups.transpose(1, 2) == 0) & grouped_t[:, None, :]  # [B, N, T]
    other &= mod.image_groups.sum(-1, keepdim=True) > 0  # grouped patches only
    assert other.any() and to_text.masked_select(other[:, None].expand_as(to_text)).max().item() == 0.0
    ungrouped_patch = to_text[:, :, 0]  # patch 0 has no group: it still attends every token
    assert (ungrouped_patch > 0).all()
    # through the fused path: the values of tokens outside group 0 cannot reach group 0's patches
    outside = (mod.text_groups.sum(-1) > 0) & (mod.text_groups[..., 0] == 0)  # [B, T]
    changed = JointQKV(qkv.img_q, qkv.img_k, qkv.img_v, qkv.txt_q, qkv.txt_k,
                       qkv.txt_v + 100.0 * outside[:, None, :, None])
    before, after = (modulated_attention(x, mod, 0, True)[:, :, :n_img] for x in (qkv, changed))
    group0 = (mod.image_groups[..., 0] == 1)[:, None, :, None]  # [B, 1, N, 1]
    assert outside.any() and group0.any()
    assert ((before - after).abs() * group0).max().item() <= 1e-4
    assert ((before - after).abs() * ~group0).max().item() > 1.0  # the others do see the change


def test_identity_knobs_are_the_plain_backbone(family):
    model = tiny_transformer(family)
    plain, modulated = make_backbone(model), make_backbone(model, HookConfig(modulation=True))
    feeds = random_feeds(modulated)
    spec = modulated.io_spec(2, 128, 128, feeds["span_mask"].shape[1])
    identity, groups = spec.allocate("inputs"), sample_feeds(spec)
    feeds.update({k: identity[k] for k in KNOBS}, text_groups=groups["text_groups"], image_groups=groups["image_groups"])
    with torch.no_grad():
        expected = plain(**{k: v for k, v in feeds.items() if k not in KNOBS})
        got = modulated(**feeds)
    for e, g in zip(expected, got):
        assert (e - g).abs().max().item() <= 1e-6
    feeds["text_bias"] = None
    with pytest.raises(ValueError, match="the attention-modulation inputs go together"):
        modulated(**feeds)


def test_knobs_export_with_parity_and_the_tensorrt_parser_check(models, tmp_path):
    from amo_engine.engine.folder import open_engine
    from amo_engine.engine.export import ExportConfig, export_engine
    from amo_engine.engine.verify import engine_parity, judge_parity

    model = models["sd3"]
    manifest = export_engine(model, ExportConfig(out=tmp_path / "engine", log=False), HookConfig(modulation=True))
    assert manifest.graph["trt_ok"] and manifest.graph["fusion_ok"]
    assert manifest.to_json()["hook"]["modulation"] == {"max_groups": 4, "path": "split", "blocks": None}
    engine = open_engine(tmp_path / "engine", model)
    assert engine.hook.modulation and all(k in engine.spec.input_names for k in KNOBS)
    assert engine.spec.output_names == ["velocity", "attn", "group_attn"]
    parity = engine_parity(model, engine, "ort")  # sample feeds: knobs on
    ok, detail = judge_parity(parity, "float32")
    assert ok and "group attn max abs" in detail, detail


# ---------------------------------------------------------------- plans, groups, the loop

from amo_engine.pipeline.plans import (ModulationPlan, StepKnobs, group_masks, group_spans, plan_for,  # noqa: E402
                                        preset, read_plan)
from amo_engine.pipeline.generate import AmoPipeline, GenerateConfig  # noqa: E402

PROMPT = "a red apple next to a green sign that says 'OPEN'"


def test_groups_from_phrases_or_the_chunker(models):
    assert [s.text(PROMPT) for s in group_spans(PROMPT, None)] == ["a red apple", "a green sign that says 'OPEN'"]
    assert [s.text(PROMPT) for s in group_spans(PROMPT, "RED APPLE|green sign")] == ["red apple", "green sign"]
    with pytest.raises(ValueError, match="group 'blue car' is not in the prompt"):
        group_spans(PROMPT, "red apple|blue car")
    model = models["flux"]
    layout = model.family.text_layout(model.pipe, 32)
    masks, used = group_masks(layout, [PROMPT], None, 4)
    assert used == 2 and masks.shape == (1, 32, 4) and masks[..., 2:].sum() == 0
    assert masks[0, :, 0].sum() >= 2 and masks[0, :, 1].sum() >= 4 and (masks.sum(-1) <= 1).all()
    with pytest.raises(ValueError, match="3 groups but the engine takes at most 2"):
        group_masks(layout, [PROMPT + ", a dog"], None, 2)


def test_presets_and_schedule_files(tmp_path):
    plan = preset("align", 10, 2)
    assert len(plan.steps) == 10 and plan.needs_groups
    assert plan.steps[0].quadrant_scale[0] == 1.3 and plan.steps[9].is_identity
    assert [s.group_mask for s in plan.steps] == [1.0] * 5 + [0.0] * 5
    with pytest.raises(ValueError, match="separates entities: give two or more groups"):
        preset("separate", 10, 1).check(10, 4, 1)
    with pytest.raises(ValueError, match="placing 3 groups takes 3 probe steps; the request runs 3"):
        preset("separate", 3, 3).check(3, 4, 3)
    path = tmp_path / "s.json"
    path.write_text('{"blocks": [1], "steps": [{"quadrant_scale": [1.2, 1, 1, 1]}, {"group_weights": [0.5, 0.1]}]}')
    custom = read_plan(path)
    assert custom.blocks == (1,) and custom.steps[1].group_weights == (0.5, 0.1)
    with pytest.raises(ValueError, match="has 2 steps but the request runs 3: give one entry per step"):
        custom.check(3, 4, 2)
    with pytest.raises(ValueError, match="step 1 of 's.json' weights 2 groups; the request has 1"):
        custom.check(2, 4, 1)
    with pytest.raises(ValueError, match="modulation block 1 out of range"):
        custom.check(2, 1, 2)
    path.write_text('{"steps": [{"quadrant_scale": [1, 1]}]}')
    with pytest.raises(ValueError, match="quadrant_scale takes 4 values"):
        read_plan(path)
    with pytest.raises(FileNotFoundError, match="no such preset or file; presets: sharpen"):
        plan_for("nope", 4, 2)


class RecordingBackend(ClosingBackend):
    """The eager backend, keeping a copy of the knob feeds of every call."""

    def __init__(self, inner):
        self.inner, self.spec, self.calls = inner, None, []

    def __call__(self, feeds):
        self.calls.append({k: v.clone() for k, v in feeds.items()})
        return self.inner(feeds)

    def close(self):
        pass


def test_schedule_reaches_the_feeds_step_by_step(models, family):
    from amo_engine.engine.backends.eager import EagerBackend

    model = models[family]
    pipe = AmoPipeline(model, HookConfig(modulation=True))
    backend = RecordingBackend(EagerBackend(pipe.backbone()))
    pipe._backend = backend
    steps = 4
    plan = ModulationPlan("test", (StepKnobs((1.3, 1, 1, 1), (0.5, 0.0), 1.0),) * 3 + (StepKnobs(),), blocks=(1,),
                          needs_groups=True)
    pipe(GenerateConfig([PROMPT], steps=steps, sampler="euler", modulation=plan))
    assert len(backend.calls) == steps
    cond = -1  # the conditional row (SD3 runs [uncond ; cond])
    for i, feeds in enumerate(backend.calls):
        expected = torch.tensor([1.3, 1.0, 1.0, 1.0] if i < 3 else [1.0] * 4)
        assert torch.allclose(feeds["quadrant_scale"][1], expected)
        assert feeds["quadrant_scale"][0].tolist() == [1, 1, 1, 1]  # only block 1 modulates
        assert feeds["group_gate"][1].item() == (1.0 if 2 <= i < 3 else 0.0)  # probes at steps 0 and 1
        groups = feeds["text_groups"][cond]
        assert torch.equal(feeds["span_mask"], backend.calls[0]["span_mask"])  # probes never touch AMO's span mask
        assert torch.allclose(feeds["text_bias"][cond], (0.5 * groups[:, 0]) if i < 3 else torch.zeros_like(groups[:, 0]))
    assert backend.calls[0]["image_groups"].sum() == 0 and backend.calls[2]["image_groups"][cond].sum() > 0
    if models[family].family.batches_cfg:
        assert backend.calls[2]["text_groups"][0].sum() == 0  # the unconditional row stays ungrouped


def test_group_probes_leave_the_amo_map_alone(models, family):
    """Placing entity groups reads their own map (``group_attn``): under identity knobs, AMO's map
    and the image with the probe steps equal those without them, bit for bit."""
    model = models[family]
    pipe = AmoPipeline(model, HookConfig(modulation=True))
    steps = 4
    probing = ModulationPlan("probe", (StepKnobs(),) * steps, needs_groups=True)
    quiet = ModulationPlan("identity", (StepKnobs(),) * steps)
    with_probes = pipe(GenerateConfig([PROMPT], steps=steps, sampler="amo", seed=3, modulation=probing))
    without = pipe(GenerateConfig([PROMPT], steps=steps, sampler="amo", seed=3, modulation=quiet))
    assert with_probes.sampler == "amo"
    assert torch.equal(with_probes.attn_map, without.attn_map) and torch.equal(with_probes.latents, without.latents)


def test_group_maps_read_each_groups_tokens(models, family):
    """group_attn[:, g] is the span tap's map for group g's tokens (same gather, softmax and mass)."""
    model = models[family]
    backbone = make_backbone(model.pipe.transformer, HookConfig(modulation=True), model.pipe.vae_scale_factor)
    feeds = sample_feeds(backbone.io_spec(2, 32, 32, 16), "cpu")
    feeds["text_groups"].zero_()
    feeds["text_groups"][:, 9:11, 0] = 1  # past AuraFlow's 8 register tokens
    feeds["text_groups"][:, 12:14, 1] = 1
    with torch.inference_mode():
        _, _, group_attn = backbone(**feeds)
        for g, (a, b) in enumerate(((9, 11), (12, 14))):
            span = torch.zeros_like(feeds["span_mask"])
            span[:, a:b] = 1
            _, attn, _ = backbone(**{**feeds, "span_mask": span})
            torch.testing.assert_close(group_attn[:, g], attn, rtol=1e-6, atol=1e-8)
    assert group_attn[:, 2:].abs().max() == 0  # empty groups carry no mass


def test_identity_schedule_is_plain_generation(models, family):
    model = models[family]
    plan = ModulationPlan("identity", (StepKnobs(),) * 3)
    got = AmoPipeline(model)(GenerateConfig([PROMPT], steps=3, seed=2, modulation=plan)).latents
    expected = AmoPipeline(model)(GenerateConfig([PROMPT], steps=3, seed=2)).latents
    assert (got - expected).abs().max().item() <= 1e-5


def test_modulation_asked_of_an_engine_without_knobs(models, exported):
    from amo_engine.engine.backends import open_backend

    model = models["flux"]
    plain = exported("flux", exporter="torchscript")
    with open_backend("ort", plain, model) as backend:
        with pytest.raises(ValueError, match="exported without the attention-modulation inputs: re-export it with: ") \
                as err:
            AmoPipeline(model, backend=backend)(GenerateConfig([PROMPT], steps=2, modulation=preset("sharpen", 2, 2)))
    pasted = pasted_export(str(err.value))
    assert pasted.modulation and pasted.exporter == "torchscript" and pasted.out == plain


def test_only_the_listed_blocks_modulate():
    """--modulation-blocks 1: the other blocks run the plain attention whatever their knobs say
    (the same as a graph modulating every block with identity knobs outside block 1)."""
    model = tiny_transformer("sd3")
    listed = make_backbone(model, HookConfig(modulation=True, modulation_blocks=(1,)))
    every = make_backbone(model, HookConfig(modulation=True))
    feeds = {k: v for k, v in random_feeds(listed).items() if k not in KNOBS}
    knobs = sample_feeds(listed.io_spec(2, 128, 128, feeds["span_mask"].shape[1]))
    knobs = {k: knobs[k] for k in KNOBS}
    knobs["text_bias"].zero_()  # the token bias has no per-block switch: leave it out of the comparison
    outside_1 = {**knobs, "quadrant_scale": knobs["quadrant_scale"].clone(), "group_gate": knobs["group_gate"].clone()}
    outside_1["quadrant_scale"][[0, 2, 3]] = 1.0
    outside_1["group_gate"][[0, 2, 3]] = 0.0
    with torch.no_grad():
        got, expected = listed(**feeds, **knobs), every(**feeds, **outside_1)
        plain = make_backbone(model)(**feeds)
    assert (got[0] - expected[0]).abs().max().item() <= 1e-5
    assert (got[0] - plain[0]).abs().max().item() > 1e-4  # block 1 does modulate
    plan = ModulationPlan("x", (StepKnobs(),), blocks=(0, 1))
    with pytest.raises(ValueError, match=r"modulates joint blocks \[0\] but the engine modulates only \[1\]"):
        plan.check(1, 4, 0, modulated=(1,))


def test_an_eager_backend_opened_without_the_knobs_runs_a_modulated_request(models):
    """generate --modulate on eager: the CLI opens a plain eager backend; the request gets a backbone
    with the modulation inputs (and their group maps) instead of a refusal."""
    from amo_engine.engine.backends import open_backend

    model = models["sd3"]
    with open_backend("eager", model=model) as backend:
        plan = preset("separate", 3, 2)
        result = AmoPipeline(model, backend=backend)(GenerateConfig([PROMPT], steps=3, modulation=plan))
    assert torch.isfinite(result.latents).all()
