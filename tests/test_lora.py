"""LoRA (Paper A's third application): the fine-tune writes adapters stock diffusers loads; engines
take adapters as per-row inputs: parity with diffusers' load_lora_weights, zeros = the plain engine,
rows with different adapters = each alone, and bad adapters refused in one line."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from amo_engine.cli import main
from amo_engine.engine.backends import open_backend
from amo_engine.engine.folder import open_engine
from amo_engine.model.adapters import AdapterError, fill_rows, parse_choice, read_adapter
from amo_engine.model.backbone import HookConfig
from amo_engine.model.families import make_backbone
from amo_engine.model.inputs import sample_feeds
from amo_engine.model.lora import PROJECTIONS, layout_for
from amo_engine.pipeline.generate import AmoPipeline, GenerateConfig

from conftest import FAMILIES
from test_backbone import explicit_reference_scores, stock_velocity

PROMPT = "a sign that says 'OPEN'"
RANK = 4  # the test engines' slots


def write_adapter(model, folder, rank: int, seed: int, blocks=None, projections=PROJECTIONS, alpha=None,
                  name: str = "adapter.safetensors"):
    """A random adapter for ``model`` written by diffusers' save_lora_weights (peft's LoRA layers on a
    copy of the transformer): the file a user brings."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from amo_engine.train.lora import target_modules

    transformer = copy.deepcopy(model.pipe.transformer)
    config = LoraConfig(r=rank, lora_alpha=alpha or rank, init_lora_weights=False,
                        target_modules=target_modules(model.family, transformer.config, blocks, projections))
    torch.manual_seed(seed)
    transformer.add_adapter(config)
    state = get_peft_model_state_dict(transformer)
    type(model.pipe).save_lora_weights(folder, transformer_lora_layers=state, weight_name=name,
                                       transformer_lora_adapter_metadata=config.to_dict())
    return folder / name


def with_diffusers_lora(model, path):
    """A copy of ``model``'s transformer with the adapter loaded by stock diffusers."""
    pipe = type(model.pipe)(**{**model.pipe.components, "transformer": copy.deepcopy(model.pipe.transformer)})
    pipe.load_lora_weights(path.parent, weight_name=path.name)
    return pipe.transformer


@pytest.fixture(scope="module")
def adapters(models, tmp_path_factory):
    """Per family two adapters: A (rank 4, alpha 8: scale 2, every block) and B (rank 2, block 0 only)."""
    root = tmp_path_factory.mktemp("adapters")
    out = {}
    for family in FAMILIES:
        folder = root / family
        out[family] = (write_adapter(models[family], folder, RANK, seed=1, alpha=2 * RANK, name="a.safetensors"),
                       write_adapter(models[family], folder, 2, seed=2, blocks=(0,), name="b.safetensors"))
    return out


def read(model, path, scale=1.0):
    return read_adapter(path, model.family, model.pipe.transformer.config, scale)


# ---------------------------------------------------------------- the maths


@pytest.mark.parametrize("kind", ["eager", "ort"])
def test_engine_with_an_adapter_matches_diffusers_load_lora_weights(models, exported, adapters, family, kind):
    """Every row carrying adapter A: velocity equals the diffusers transformer with A loaded by
    load_lora_weights (fp32, <= 1e-5) and attn equals the explicit full-softmax reference on it (<= 1e-6)."""
    if kind == "ort" and family in ("sd35", "auraflow"):
        pytest.skip("one engine per family is enough in the fast tier; sd3 and flux cover both joint orders")
    model = models[family]
    folder = exported(family, lora_rank=RANK)
    engine = open_engine(folder)
    layout = layout_for(model.family, model.pipe.transformer.config, RANK, None, PROJECTIONS)
    feeds = sample_feeds(engine.spec, seed=3)
    rows = feeds["lora_down"].shape[0]
    fill_rows(feeds["lora_down"], feeds["lora_up"], layout, [read(model, adapters[family][0])] * rows)
    with open_backend(kind, folder if kind != "eager" else None, model, engine.hook) as backend:
        out = {k: v.float().clone() for k, v in backend(feeds).items()}
    stock = with_diffusers_lora(model, adapters[family][0])
    velocity_err = (out["velocity"] - stock_velocity(stock, feeds)).abs().max().item()
    reference = make_backbone(stock, engine.hook, model.pipe.vae_scale_factor)
    attn_err = (out["attn"] - explicit_reference_scores(reference, stock, feeds)).abs().max().item()
    plain_err = (out["velocity"] - stock_velocity(model.pipe.transformer, feeds)).abs().max().item()
    print(f"{family} {kind}: velocity vs diffusers+LoRA {velocity_err:.2e}, attn {attn_err:.2e}; "
          f"the adapter moves velocity by {plain_err:.2e}")
    assert velocity_err <= 1e-5 and attn_err <= 1e-6
    assert plain_err > 1e-4  # the adapter moves velocity well past the parity tolerance


def test_zero_adapters_equal_the_plain_engine(models, exported):
    """The LoRA engine at its identity fill (zeros) against the engine without LoRA inputs (<= 1e-6)."""
    model = models["sd3"]
    plain, lora = open_engine(exported("sd3")), open_engine(exported("sd3", lora_rank=RANK))
    feeds = sample_feeds(lora.spec, seed=5)
    lora.spec.refill(feeds, ["lora_down", "lora_up"])
    with open_backend("ort", plain.folder, model) as a, open_backend("ort", lora.folder, model) as b:
        want = {k: v.clone() for k, v in a({k: v for k, v in feeds.items() if k in plain.spec.input_names}).items()}
        got = b(feeds)
    for name in ("velocity", "attn"):
        assert (got[name] - want[name]).abs().max().item() <= 1e-6


def test_an_adapter_of_smaller_rank_is_zero_padded(models, adapters):
    """Adapter B (rank 2, block 0) in rank-4 slots over every block equals the backbone whose slots
    are exactly B's (rank 2, block 0): the padding and the empty slots add nothing."""
    model = models["flux"]
    b = read(model, adapters["flux"][1])
    wide = make_backbone(model.pipe.transformer, HookConfig(lora_rank=RANK), model.pipe.vae_scale_factor)
    tight = make_backbone(model.pipe.transformer, HookConfig(lora_rank=2, lora_blocks=(0,)),
                          model.pipe.vae_scale_factor)
    outs = []
    for backbone in (wide, tight):
        feeds = sample_feeds(backbone.io_spec(1, 64, 64, 16), seed=2)
        fill_rows(feeds["lora_down"], feeds["lora_up"], backbone.lora_layout, [b])
        with torch.no_grad():
            outs.append(backbone(**feeds)[0])
    assert torch.allclose(outs[0], outs[1], rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", ["eager", "ort"])
def test_rows_with_different_adapters_equal_each_alone(models, exported, adapters, kind):
    """The batching invariant with adapters: in one call of 3 images carrying A, B and none, each
    image is bit-identical to that image generated alone with its adapter (same call batch). The
    engine holds it at every row; eager torch on the CPU rounds a row differently at another row
    position (~3e-6, adapters or not), so there each image leads its batch and the others rotate."""
    model = models["sd3"]
    a, b = (read(model, p) for p in adapters["sd3"])
    folder = exported("sd3", batch=3, lora_rank=RANK) if kind == "ort" else None
    hook = open_engine(folder).hook if folder else HookConfig(lora_rank=RANK)  # eager: slots fixed like an engine's
    prompts, seeds, chosen = [PROMPT, "a sign that says 'CAT'", "plain grass"], [4, 5, 6], [a, b, None]
    kw = dict(steps=3, sampler="amo", pad_images_to=3)
    with open_backend(kind, folder, model, hook) as backend:
        pipe = AmoPipeline(model, hook, backend if kind == "ort" else None)
        for i in range(3):
            order = [(i + k) % 3 for k in range(3)] if kind == "eager" else [0, 1, 2]
            mixed = pipe(GenerateConfig([prompts[j] for j in order], seed=[seeds[j] for j in order],
                                        adapters=[chosen[j] for j in order], **kw))
            alone = pipe(GenerateConfig([prompts[i]], seed=seeds[i], adapters=[chosen[i]], **kw))
            assert torch.equal(alone.latents[0], mixed.latents[order.index(i)]), f"image {i}"
        plain = pipe(GenerateConfig([prompts[0]], seed=4, **kw))
    assert not torch.equal(plain.latents[0], mixed.latents[order.index(0)])  # A changed its image


def test_the_python_api_takes_adapters(models, adapters):
    """AmoFlowPipeline(..., lora=FILE, lora_scale=) is the pipeline with that adapter read at that scale."""
    import numpy as np

    from amo_engine import AmoFlowPipeline

    model, (a, _) = models["sd3"], adapters["sd3"]
    got = AmoFlowPipeline(AmoPipeline(model))(PROMPT, num_inference_steps=2, seed=3, lora=a, lora_scale=0.5)
    want = AmoPipeline(model)(GenerateConfig([PROMPT], steps=2, seed=3, adapters=[read(model, a, 0.5)]))
    plain = AmoPipeline(model)(GenerateConfig([PROMPT], steps=2, seed=3))
    assert np.array_equal(np.asarray(got.images[0]), np.asarray(want.images[0]))
    assert not torch.equal(want.latents, plain.latents)


# ---------------------------------------------------------------- the fine-tune


def test_finetune_writes_an_adapter_stock_diffusers_loads_and_resumes_exactly(tmp_path, monkeypatch):
    """A tiny fine-tune on the glyph model: the adapter loads with pipe.load_lora_weights and covers
    exactly the chosen blocks; a run interrupted after a checkpoint resumes to the same adapter."""
    from safetensors.torch import load_file

    from amo_engine.model.load import load_model
    from amo_engine.train.lora import ADAPTER, FinetuneConfig, Finetuner

    def config(run):
        return FinetuneConfig(tmp_path / run, blocks=(4, 5), rank=2, steps=4, batch=2, samples_per_word=2,
                              checkpoint_every=2, progress=False)

    whole = Finetuner(config("whole")).run()
    keys = load_file(whole)
    assert {k.split(".")[2] for k in keys} == {"4", "5"} and all(k.startswith("transformer.") for k in keys)
    assert len(keys) == 2 * 15  # 8 projections at block 4, 7 at SD3's last block
    pipe = load_model("glyph").pipe
    pipe.load_lora_weights(whole.parent, weight_name=ADAPTER)
    assert type(pipe.transformer.transformer_blocks[4].attn.to_q).__module__.startswith("peft")

    broken = Finetuner(config("resumed"))
    real = broken.batch_at
    monkeypatch.setattr(broken, "batch_at", lambda step: (_ for _ in ()).throw(KeyboardInterrupt) if step == 3
                        else real(step))
    with pytest.raises(KeyboardInterrupt):
        broken.run()
    resumed = Finetuner(config("resumed"))
    assert resumed.load_checkpoint() and resumed.step == 2
    again = load_file(Finetuner(config("resumed")).run())
    assert sorted(keys) == sorted(again), sorted(set(keys) ^ set(again))[:4]
    assert all(torch.equal(keys[k], again[k]) for k in keys)
    settings = json.loads((tmp_path / "whole" / "finetune.json").read_text())
    assert settings["blocks"] == [4, 5] and settings["command"].startswith("amo-engine")


def test_finetune_refuses_bad_settings_before_loading(tmp_path, capsys):
    assert main(["finetune", "--run-dir", str(tmp_path / "r"), "--rank", "0"]) == 2
    assert "--rank must be >= 1" in capsys.readouterr().err
    assert main(["finetune", "--run-dir", str(tmp_path / "r"), "--words", "nowhere.txt"]) == 2
    assert "--words nowhere.txt: not train, held-out or a file" in capsys.readouterr().err
    assert main(["finetune", "--run-dir", str(tmp_path / "r"), "--model", "tiny-sd3", "--steps", "1"]) == 2
    assert "tiny-sd3 is not a glyph model" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


# ---------------------------------------------------------------- bad adapters


def test_bad_adapters_are_refused_by_name(models, adapters, tmp_path):
    from safetensors.torch import load_file, save_file

    model, (a, _) = models["sd3"], adapters["sd3"]
    state = load_file(a)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(a.read_bytes()[: a.stat().st_size // 2])
    with pytest.raises(AdapterError, match="is not a readable safetensors file .*write it again"):
        read(model, truncated)
    half = tmp_path / "half.safetensors"
    save_file({k: v for k, v in state.items() if not k.endswith("to_q.lora_B.weight")}, str(half))
    with pytest.raises(AdapterError, match=r"to_q has lora_B missing: a truncated adapter"):
        read(model, half)
    text = tmp_path / "text.safetensors"
    save_file({**state, "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(2, 8)},
              str(text))
    with pytest.raises(AdapterError, match=r"keys for what this engine does not adapt \(text_encoder\.text_model"):
        read(model, text)
    wide = tmp_path / "wide.safetensors"
    save_file({k: torch.zeros(v.shape[0], v.shape[1] * 2) if "lora_A" in k else v for k, v in state.items()}, str(wide))
    with pytest.raises(AdapterError, match="an adapter for another model"):
        read(model, wide)
    with pytest.raises(AdapterError, match="no LoRA file at"):
        read(model, tmp_path / "missing.safetensors")
    assert parse_choice("x.safetensors:0.5") == ("x.safetensors", 0.5) and parse_choice("x") == ("x", 1.0)


def test_generate_refuses_adapters_the_engine_cannot_hold(models, exported, adapters, preset_cache, tmp_path, capsys):
    """Higher rank than the slots, blocks without slots, an engine without LoRA inputs: one line with
    the export command that covers it, before any generation; no image written."""
    a, b = adapters["sd3"]
    narrow = exported("sd3", lora_rank=2, lora_blocks=(1,))
    plain = exported("sd3")
    out = tmp_path / "x.png"
    base = ["generate", "--model", "tiny-sd3", "--cache-dir", str(preset_cache), "--prompt", PROMPT, "--steps", "2",
            "--out", str(out), "--quiet", "--backend", "ort"]
    assert main([*base, "--engine", str(narrow), "--lora", str(a)]) == 2
    err = capsys.readouterr().err.strip()
    assert "has rank 4, the engine's LoRA slots hold rank 2: re-export it with: amo-engine export" in err
    assert "--lora-slots 4 --lora-blocks 0,1" in err and len(err.splitlines()) == 1
    assert main([*base, "--engine", str(narrow), "--lora", str(b)]) == 2
    assert "adapts layers the engine has no slots for (block:projection 0:" in capsys.readouterr().err
    assert main([*base, "--engine", str(plain), "--lora", f"{b}:0.5"]) == 2
    assert "this engine was exported without LoRA inputs: re-export it with:" in capsys.readouterr().err
    assert main([*base, "--engine", str(plain), "--lora", str(b), "--lora", str(b)]) == 2
    assert "2 --lora for 1 --prompt" in capsys.readouterr().err
    assert not out.exists()


def test_export_lora_flags_and_manifest(models, exported, preset_cache, tmp_path, capsys):
    from amo_engine.engine.hints import reexport_command

    engine = open_engine(exported("sd3", lora_rank=2, lora_blocks=(1,)))
    assert (engine.hook.lora_rank, engine.hook.lora_blocks) == (2, (1,))
    layout = layout_for(models["sd3"].family, models["sd3"].pipe.transformer.config, 2, (1,), PROJECTIONS)
    assert engine.spec.shape("lora_down")[1:3] == (len(layout.layers), 2) == (engine.spec.shape("lora_up")[1],
                                                                               engine.spec.shape("lora_up")[3])
    manifest = json.loads((engine.folder / "manifest.json").read_text())
    assert manifest["hook"]["lora"] == {"rank": 2, "blocks": [1], "projections": list(PROJECTIONS)}
    assert "--lora-slots 2 --lora-blocks 1" in reexport_command(engine.manifest, engine.folder)
    assert main(["export", "--model", "tiny-sd3", "--cache-dir", str(preset_cache), "--out", str(tmp_path / "e"),
                 "--lora-blocks", "1"]) == 2
    assert "--lora-blocks and --lora-projections apply to --lora-slots" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["export", "--model", "tiny-sd3", "--out", str(tmp_path / "e"), "--lora-slots", "4",
              "--lora-projections", "to_x"])
    assert "--lora-projections 'to_x': name some of to_q" in capsys.readouterr().err
    assert not (tmp_path / "e").exists()


# ---------------------------------------------------------------- the study and the cost arm


def test_the_study_pairs_arms_by_word_and_seed():
    from amo_engine.train.lora_study import StudyConfig, compare, markdown, summarise

    cfg = StudyConfig(out_dir=None, sizes=(2,))
    rows = []
    for arm, hits in (("base", (0, 0, 1, 0)), ("localized-s2", (1, 1, 1, 0)), ("all-s2", (1, 0, 0, 0))):
        for i, hit in enumerate(hits):
            rows += [{"arm": arm, "set": s, "word": f"W{i}", "seed": 1, "exact": bool(hit)} for s in
                     ("new", "unseen", "original")]
    summary = summarise(rows, cfg)
    assert [e["new"]["exact"] for e in summary] == [0.25, 0.75, 0.25]
    pair = next(c for c in compare(rows, cfg) if (c["a"], c["b"], c["set"]) == ("localized-s2", "all-s2", "new"))
    assert (pair["pairs"], pair["a_only"], pair["b_only"], pair["p"]) == (4, 2, 0, 0.5)
    table = markdown({"summary": summary, "comparisons": compare(rows, cfg)}, cfg)
    assert "| localized | 2 | 75.0% (4) |" in table and "| localized-s2 | all-s2 | 2 / 0, p=0.5 |" in table


@pytest.mark.slow
def test_the_lora_cost_arm_runs(tmp_path):
    """bench/hook_cost.py --feature lora on the tiny config: the three arms, the goals and the switch line."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("hook_cost", Path(__file__).parent.parent / "bench" / "hook_cost.py")
    hook_cost = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook_cost)
    hook_cost.main(["--feature", "lora", "--config", "tiny-sd3", "--calls", "1", "--lora-rank", "4", "--out",
                    str(tmp_path)])
    table = (tmp_path / "lora_cost-tiny-sd3.md").read_text()
    assert "| LoRA slots carrying an adapter |" in table and "- ORT LoRA slots at zeros / plain:" in table
    assert "switching adapters in the loaded engine: read the file" in table
    result = json.loads((tmp_path / "lora_cost-tiny-sd3.json").read_text())
    assert result["switch"]["rank"] == 4 and result["switch"]["fill_ms"] > 0
