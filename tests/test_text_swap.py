"""Paper A's text K/V swap: identity feeds are the plain backbone; the one-graph edit equals the
paper's two-pass procedure (record B's text K/V, patch them into A); bad requests fail in one line."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from amo_engine.model.attention import JointAttnProcessor
from amo_engine.model.backbone import HookConfig
from amo_engine.model.families import make_backbone
from amo_engine.pipeline.text_swap import TextSwap
from amo_engine.pipeline.generate import AmoPipeline, GenerateConfig

from conftest import FEATURE_FAMILIES, pasted_export, random_feeds, tiny_transformer


@pytest.fixture(params=FEATURE_FAMILIES)
def family(request) -> str:
    """This module's features on every family once (conftest.FEATURE_FAMILIES)."""
    return request.param

A = "a sign that says 'HELLO'"
B = "a sign that says 'WORLD'"
BLOCK = 1  # a joint block of every tiny family (SD3 has 4, FLUX and AuraFlow 2)


def moved(change: float, err: float) -> bool:
    """The swap moved an image by far more than the equivalence error (a floor of 1e-6). Not an
    absolute size: the random-init tiny AuraFlow's text barely reaches the image (a wholly other
    text moves one velocity by ~1e-4, a one-block swap by ~5e-5; SD3's by ~1e-2)."""
    return change > 20 * max(err, 1e-6)
STEPS = 4


def swap_feeds(backbone, donor, gate=None, seed=1):
    """Random feeds for ``len(donor)`` rows; ``gate`` a list, or a block -> 1 at that block only."""
    feeds = random_feeds(backbone, batch=len(donor), seed=seed)
    if not isinstance(gate, list):
        gate = [1.0 if b == gate else 0.0 for b in range(backbone.n_joint_blocks)]
    feeds["kv_donor_index"] = torch.tensor(donor)
    feeds["kv_swap_gate"] = torch.tensor(gate, dtype=torch.float32)
    return feeds


@pytest.mark.parametrize("donor, gates", [([0, 1, 2], (0.3, 1.0)), ([2, 0, 1], (0.0, 0.0))])
def test_identity_feeds_reproduce_the_plain_backbone(family, donor, gates):
    """Each row its own donor (any gate), or every gate 0 (any donor): the plain backbone."""
    model = tiny_transformer(family)
    plain, swapping = make_backbone(model), make_backbone(model, HookConfig(kv_swap=True))
    feeds = swap_feeds(swapping, donor, [gates[b % 2] for b in range(swapping.n_joint_blocks)])
    with torch.no_grad():
        expected = plain(**{k: v for k, v in feeds.items() if not k.startswith("kv_")})
        got = swapping(**feeds)
    for e, g in zip(expected, got):
        assert (e - g).abs().max().item() <= 1e-6
    assert "kv_donor_index" in swapping.io_spec(3, 128, 128, 24).input_names
    assert "kv_donor_index" not in plain.io_spec(3, 128, 128, 24).input_names
    spec = swapping.io_spec(3, 128, 128, 24)
    assert spec.allocate("inputs")["kv_donor_index"].tolist() == [0, 1, 2]  # buffers start at identity


class RecordTextKV(JointAttnProcessor):
    """The paper's first pass: keep this block's text K/V of every call."""

    def __init__(self, block, image_first, tape):
        super().__init__(block, image_first)
        self.tape = tape

    def edit(self, qkv, amo):
        self.tape.append((qkv.txt_k.clone(), qkv.txt_v.clone()))
        return qkv


class PatchTextKV(JointAttnProcessor):
    """The paper's second pass: from call ``start`` on, this block's text K/V are the recorded ones."""

    def __init__(self, block, image_first, tape, start=0):
        super().__init__(block, image_first)
        self.tape, self.start, self.calls = list(tape), start, 0

    def edit(self, qkv, amo):
        k, v = self.tape.pop(0)
        self.calls += 1
        if self.calls - 1 < self.start:
            return qkv
        return dataclasses.replace(qkv, txt_k=k, txt_v=v)


def test_one_call_swap_equals_patching_recorded_kv(family):
    """Rows [A, B], donors [1, 1], gate on at one block: row A is A's forward with B's text K/V
    patched in at that block; row B is B's own forward."""
    model = tiny_transformer(family)
    backbone = make_backbone(model, HookConfig(kv_swap=True))
    feeds = swap_feeds(backbone, [1, 1], BLOCK, seed=4)
    with torch.no_grad():
        v_edit, attn_edit = backbone(**feeds)
        ref = make_backbone(copy.deepcopy(model))
        rows = [{k: (v[i : i + 1] if v.dim() and v.shape[0] == 2 and k not in ("img_ids", "txt_ids") else v)
                 for k, v in feeds.items() if not k.startswith("kv_")} for i in (0, 1)]
        tape = []
        ref._processors[BLOCK] = RecordTextKV(BLOCK, ref.family.image_first, tape)
        v_b, _ = ref(**rows[1])
        ref._processors[BLOCK] = PatchTextKV(BLOCK, ref.family.image_first, tape)
        v_a, attn_a = ref(**rows[0])
    err = (v_edit[0] - v_a[0]).abs().max().item()
    assert err <= 1e-5
    assert (attn_edit[0] - attn_a[0]).abs().max().item() <= 1e-6
    assert (v_edit[1] - v_b[0]).abs().max().item() <= 1e-5
    plain = make_backbone(model)
    with torch.no_grad():
        v_plain, _ = plain(**rows[0])
    assert moved((v_edit[0] - v_plain[0]).abs().max().item(), err)  # the swap changed A


def two_pass_edit(model, sampler, start, seed=5, steps=STEPS):
    """The paper's procedure around our eager pipeline: generate B recording its text K/V at BLOCK,
    then A with them patched in from step ``start``. Returns (A edited, B) final latents."""
    cfg = dict(steps=steps, sampler=sampler, seed=seed)
    tape = []
    first = AmoPipeline(model)
    first.backbone()._processors[BLOCK] = RecordTextKV(BLOCK, model.family.image_first, tape)
    b = first(GenerateConfig([B], **cfg)).latents
    second = AmoPipeline(model)
    second.backbone()._processors[BLOCK] = PatchTextKV(BLOCK, model.family.image_first, tape, start)
    a = second(GenerateConfig([A], **cfg)).latents
    return a, b


@pytest.mark.parametrize("sampler, start", [("amo", 0), ("euler", 2)])
def test_edit_equals_two_pass_reference_eager(models, family, sampler, start):
    model = models[family]
    ref_a, ref_b = two_pass_edit(model, sampler, start)
    swap = TextSwap(donors=(1, 1), blocks=(BLOCK,), start_step=start)
    edit = AmoPipeline(model)(GenerateConfig([A, B], steps=STEPS, sampler=sampler, seed=5, text_swap=swap)).latents
    err_a, err_b = (edit[0] - ref_a[0]).abs().max().item(), (edit[1] - ref_b[0]).abs().max().item()
    print(f"{family} {sampler} start {start}: edit vs two-pass A {err_a:.2e}, B {err_b:.2e}")
    assert err_a <= 1e-5 and err_b <= 1e-5
    plain_a = AmoPipeline(model)(GenerateConfig([A], steps=STEPS, sampler=sampler, seed=5)).latents
    assert moved((edit[0] - plain_a[0]).abs().max().item(), err_a)


def test_extra_rows_leave_the_other_images_as_generated_alone(models, family):
    """An edit batch [A edited, B, plain A]: B and the plain A equal each generated alone (same seed)."""
    pipe = AmoPipeline(models[family])
    swap = TextSwap(donors=(1, 1, 2), blocks=(BLOCK,))
    batch = pipe(GenerateConfig([A, B, A], steps=3, seed=5, text_swap=swap)).latents
    alone_a = pipe(GenerateConfig([A], steps=3, seed=5)).latents
    alone_b = pipe(GenerateConfig([B], steps=3, seed=5)).latents
    assert (batch[1] - alone_b[0]).abs().max().item() <= 1e-5
    assert (batch[2] - alone_a[0]).abs().max().item() <= 1e-5
    assert (batch[0] - alone_a[0]).abs().max().item() > 1e-3


class _SwapEngines:
    """``ort_engines[family, "swap" | "plain"]``: the shared 2-image engine with or without the K/V
    swap inputs (conftest.exported), opened; exported when first asked."""

    def __init__(self, models, exported):
        self.models, self.exported = models, exported

    def __getitem__(self, key):
        from amo_engine.engine.folder import open_engine

        family, kind = key
        return open_engine(self.exported(family, batch=2, kv_swap=kind == "swap"), self.models[family])


@pytest.fixture
def ort_engines(models, exported):
    return _SwapEngines(models, exported)


@pytest.mark.slow
def test_swap_engine_at_identity_is_the_plain_engine(models, family, ort_engines):
    from amo_engine.engine.backends import open_backend
    from amo_engine.model.inputs import sample_feeds

    model, swap, plain = models[family], ort_engines[family, "swap"], ort_engines[family, "plain"]
    assert swap.hook.kv_swap and not plain.hook.kv_swap
    assert swap.spec.input_names == plain.spec.input_names + ["kv_donor_index", "kv_swap_gate"]
    feeds = sample_feeds(swap.spec)
    feeds["kv_donor_index"] = torch.arange(feeds["kv_donor_index"].shape[0])  # identity donors, gates as sampled
    with open_backend("ort", swap, model) as run_swap, open_backend("ort", plain, model) as run_plain:
        got = {k: v.clone() for k, v in run_swap(feeds).items()}
        expected = run_plain({k: v for k, v in feeds.items() if not k.startswith("kv_")})
    with torch.no_grad():
        eager = make_backbone(model.pipe.transformer, HookConfig(kv_swap=True))(**feeds)
    for name, e in zip(("velocity", "attn"), eager):
        assert (got[name] - expected[name]).abs().max().item() <= 1e-6
        assert (got[name] - e).abs().max().item() <= 1e-5


@pytest.mark.slow
def test_edit_on_ort_equals_two_pass_reference(models, family, ort_engines):
    from amo_engine.engine.backends import open_backend

    model, engine = models[family], ort_engines[family, "swap"]
    ref_a, ref_b = two_pass_edit(model, "amo", start=1, steps=3)
    swap = TextSwap(donors=(1, 1), blocks=(BLOCK,), start_step=1)
    with open_backend("ort", engine, model) as backend:
        pipe = AmoPipeline(model, engine.hook, backend)
        edit = pipe(GenerateConfig([A, B], steps=3, sampler="amo", seed=5, text_swap=swap)).latents
        plain = pipe(GenerateConfig([A, B], steps=3, sampler="amo", seed=5)).latents  # no swap: inputs at identity
    eager_plain = AmoPipeline(model)(GenerateConfig([A, B], steps=3, sampler="amo", seed=5)).latents
    assert (plain - eager_plain).abs().max().item() <= 1e-4  # the engines' loop parity gate
    err_a, err_b = (edit[0] - ref_a[0]).abs().max().item(), (edit[1] - ref_b[0]).abs().max().item()
    print(f"{family} ort: edit vs two-pass A {err_a:.2e}, B {err_b:.2e}")
    # B's row has no swap: its error is ONNX Runtime's float difference from eager over the loop
    # (~9e-6 for FLUX on one machine); the swap itself adds at most 1e-5 beyond it
    assert err_b <= 2e-5 and err_a <= err_b + 1e-5


def test_text_swap_errors(models):
    model = models["sd3"]
    pipe = AmoPipeline(model)

    def run(swap, prompts=(A, B), **kw):
        pipe(GenerateConfig(list(prompts), steps=2, text_swap=swap, **kw))

    with pytest.raises(ValueError, match="donor index 2 out of range"):
        run(TextSwap((2, 1), (BLOCK,)))
    with pytest.raises(ValueError, match="names donors for 1 images but the request has 2"):
        run(TextSwap((0,), (BLOCK,)))
    with pytest.raises(ValueError, match=r"edit block 7 out of range: this model has joint blocks 0\.\.3"):
        run(TextSwap((1, 1), (7,)))
    with pytest.raises(ValueError, match="start step 2 out of range for 2 steps"):
        run(TextSwap((1, 1), (BLOCK,), start_step=2))
    with pytest.raises(ValueError, match="num_images_per_prompt=1"):
        run(TextSwap((1, 1), (BLOCK,)), num_images_per_prompt=2)
    backbone = make_backbone(tiny_transformer("sd3"), HookConfig(kv_swap=True))
    feeds = swap_feeds(backbone, [1, 1], [1.0, 0.0, 0.0])
    with pytest.raises(ValueError, match=r"kv_swap_gate has shape \(3,\); this model takes \(4,\) \(it has 4 joint blocks\)"):
        backbone(**feeds)


def test_edit_refused_by_an_engine_without_swap_inputs(models, ort_engines):
    from amo_engine.engine.backends import open_backend

    model, engine = models["flux"], ort_engines["flux", "plain"]
    with open_backend("ort", engine, model) as backend:
        with pytest.raises(ValueError, match="exported without the text K/V swap inputs: re-export it with: ") as err:
            AmoPipeline(model, engine.hook, backend)(GenerateConfig([A, B], steps=2,
                                                                    text_swap=TextSwap((1, 1), (BLOCK,))))
    pasted = pasted_export(str(err.value))
    assert pasted.kv_swap and pasted.batch == 2 and pasted.out == engine.folder and pasted.model == "tiny-flux"


def test_an_engine_for_fewer_images_names_the_batch_to_export(models, ort_engines):
    from amo_engine.engine.backends import open_backend

    model, engine = models["sd3"], ort_engines["sd3", "swap"]
    with open_backend("ort", engine, model) as backend:
        with pytest.raises(ValueError, match=r"runs 4 rows per call, this request needs 6 \(3 images\): export one "
                                             r"for 3 images: ") as err:
            AmoPipeline(model, engine.hook, backend)(GenerateConfig([A, B, A], steps=2,
                                                                    text_swap=TextSwap((1, 1, 2), (BLOCK,))))
    pasted = pasted_export(str(err.value))
    assert pasted.batch == 3 and pasted.kv_swap and pasted.out == engine.folder
