"""Our entry points leave the user's diffusers model exactly as they found it (no hook state)."""

from __future__ import annotations

import torch

from amo_engine.model.attention import SpanTap
from amo_engine.model.load import load_model
from amo_engine.pipeline.generate import AmoPipeline, GenerateConfig

PROMPT = "A poster with the slogan 'Adventure Awaits'"


def stock_output(pipe, batch: int = 1) -> torch.Tensor:
    kw = {"guidance_scale": 3.5} if pipe.__class__.__name__ == "FluxPipeline" else {}
    out = pipe(prompt=[PROMPT] * batch, num_inference_steps=2, height=64, width=64, output_type="latent",
               max_sequence_length=32, generator=torch.Generator().manual_seed(0), **kw)
    return out.images


def test_stock_pipeline_unchanged_after_our_calls(preset_cache, family, tmp_path):
    fresh = load_model(f"tiny-{family}", cache_dir=preset_cache).pipe
    expected = {b: stock_output(fresh, b) for b in (1, 2)}
    model = load_model(f"tiny-{family}", cache_dir=preset_cache)
    processors = dict(model.pipe.transformer.attn_processors)
    rope = getattr(model.pipe.transformer, "pos_embed", None)

    AmoPipeline(model)(GenerateConfig(prompts=[PROMPT, "A sign 'OPEN'"], sampler="amo", steps=2))
    assert model.pipe.transformer.attn_processors == processors
    assert getattr(model.pipe.transformer, "pos_embed", None) is rope
    for b in (1, 2):  # batch 2 after a batch-2 AMO run raised a size mismatch before the fix
        assert torch.equal(stock_output(model.pipe, b), expected[b])

    from amo_engine.engine.export import ExportConfig, export_engine
    from amo_engine.engine.verify import engine_parity, judge_parity

    export_engine(model, ExportConfig(out=tmp_path / "engine", exporter="torchscript"))
    ok, detail = judge_parity(engine_parity(model, tmp_path / "engine", "ort", "cpu"), "float32")
    assert ok, detail  # the engine made from the model after our calls is still the model
    assert model.pipe.transformer.attn_processors == processors
    assert torch.equal(stock_output(model.pipe, 2), expected[2])


def test_score_rows_are_the_first_span_tokens_by_position():
    """More span tokens than max_span_tokens: the first S by position are read, in order."""
    mask = torch.zeros(2, 40)
    mask[0, [3, 5, 7, 20, 30, 31]] = 1.0
    mask[1, 10:40] = 1.0
    ctx = SpanTap.for_call(mask, max_span_tokens=4, active=(0,))
    assert ctx.span_index.tolist() == [[3, 5, 7, 20], [10, 11, 12, 13]]
    assert ctx.span_weight.tolist() == [[1.0] * 4, [1.0] * 4]
    short = SpanTap.for_call(mask[:1], max_span_tokens=8, active=(0,))
    assert short.span_index[0, :6].tolist() == [3, 5, 7, 20, 30, 31]
    assert short.span_weight[0].tolist() == [1.0] * 6 + [0.0] * 2
