"""Requests built on the text swap: edit pairs, safe-text twins and word lists, the edit and
localize commands, and their bad input (one line, nothing written)."""

from __future__ import annotations

import json
import shutil

import pytest

from amo_engine.cli import main
from amo_engine.pipeline.text_edit import edit_request, read_word_list, safe_text_request, swap_target

from conftest import cli_in_fresh_process, pasted_export


def test_swap_target_replaces_the_first_quoted_text():
    assert swap_target("a dark sign that says 'HAPPY'", "SMILE") == "a dark sign that says 'SMILE'"
    assert swap_target('a "BIG" sale, "NOW"', " HUGE ") == 'a "HUGE" sale, "NOW"'
    with pytest.raises(ValueError, match="quotes no text to edit: put the word in quotes"):
        swap_target("a sign that says hello", "WORLD")
    with pytest.raises(ValueError, match="--target-text is empty"):
        swap_target("a sign 'A'", "  ")


def test_edit_request_rows_and_donors():
    r = edit_request("a sign 'A'", "a sign 'B'", (2, 3), 1)
    assert r.prompts == ("a sign 'A'", "a sign 'B'") and r.swap.donors == (1, 1) and r.roles == ("edit", "target")
    assert r.swap.blocks == (2, 3) and r.swap.start_step == 1 and r.swap.groups(2) == (0, 0)
    kept = edit_request("a sign 'A'", "a sign 'B'", (2,), 0, keep_originals=True)
    assert kept.prompts[2] == "a sign 'A'" and kept.swap.donors == (1, 1, 2)
    with pytest.raises(ValueError, match="target prompt .* quotes no text"):
        edit_request("a sign 'A'", "a sign B", (2,), 0)


def test_donor_rows_follow_the_segment_major_layout():
    swap = edit_request("'A'", "'B'", (0,), 0, keep_originals=True).swap
    assert swap.donor_rows(3, 3) == [1, 1, 2]  # FLUX: one row per image
    assert swap.donor_rows(6, 3) == [1, 1, 2, 4, 4, 5]  # SD3 with CFG: [uncond ; cond]
    assert swap.gate(4) == [1.0, 0.0, 0.0, 0.0]


def test_safe_text_twins_only_quoted_listed_words():
    words = {"HATE": "LOVE", "WAR": "PEACE"}
    r = safe_text_request(["hate speech sign 'I hate you'", "a sign 'HELLO'", "a 'WARM' 'war' poster"], words, (4,), 0)
    assert r.prompts[3:] == ("hate speech sign 'I LOVE you'", "a 'WARM' 'PEACE' poster")  # whole words, quotes only
    assert r.swap.donors == (3, 1, 4, 3, 4) and r.swap.noise_groups == (0, 1, 2, 0, 2)
    assert r.replaced == ((0, "hate", "LOVE"), (2, "war", "PEACE")) and r.images == 3
    clean = safe_text_request(["a sign 'HELLO'"], words, (4,), 0)
    assert clean.swap is None and clean.prompts == ("a sign 'HELLO'",)


def test_word_lists(tmp_path):
    default = read_word_list(None)
    assert default["WAR"] == "PEACE" and len(default) >= 5
    good = tmp_path / "w.txt"
    good.write_text("# mine\nfoo\nbar = BAZ\n")
    assert read_word_list(good) == {"FOO": "LOVE", "BAR": "BAZ"}
    bad = tmp_path / "bad.txt"
    bad.write_text("ok\n=oops\n")
    with pytest.raises(ValueError, match=r"bad.txt line 2: '=oops' is not WORD or WORD=SUBSTITUTE"):
        read_word_list(bad)
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_word_list(tmp_path / "missing.txt")


@pytest.mark.parametrize("args,message", [
    (["edit", "--prompt", "a sign hello", "--target-text", "X"], "quotes no text to edit"),
    (["edit", "--prompt", "a sign 'A'", "--target-prompt", "a sign B"], "quotes no text"),
    (["edit", "--prompt", "a sign 'A'", "--target-text", "B", "--edit-start", "5", "--steps", "4"],
     "--edit-start 5 must be a step index 0..3"),
    (["generate", "--prompt", "a sign 'A'", "--safe-text", "/no/such/list.txt"], "no such file"),
    (["generate", "--prompt", "a sign 'A'", "--safe-text", "--num-images", "2"], "use --num-images 1"),
    (["localize", "--out-dir", "x", "--start-steps", "0,40"], "--start-steps must be step indices 0..27"),
    (["generate", "--prompt", "a sign 'A'", "--modulate", "nope"], "no such preset or file; presets: sharpen"),
    (["generate", "--prompt", "a sign 'A'", "--groups", "a|b"], "--groups names the entities for --modulate"),
])
def test_bad_edit_and_modulation_options_fail_before_any_import_or_load(args, message):
    done = cli_in_fresh_process(args)
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert done.stdout.strip() == "False" and done.stderr.count("\n") == 1


def test_edit_blocks_out_of_range_writes_nothing(tmp_path, capsys):
    out = tmp_path / "e.png"
    code = main(["edit", "--prompt", "a dark sign that says 'HAPPY'", "--target-text", "SMILE", "--edit-blocks", "9",
                 "--steps", "2", "--out", str(out), "--quiet"])
    assert code == 2 and not list(tmp_path.iterdir())
    assert "edit block 9 out of range: this model has joint blocks 0..5" in capsys.readouterr().err


def test_edit_on_an_engine_without_swap_inputs_is_refused(tmp_path, capsys, exported, preset_cache):
    engine = exported("sd3", batch=2, exporter="torchscript")
    code = main(["edit", "--model", "tiny-sd3", "--cache-dir", str(preset_cache), "--prompt", "a sign 'A'",
                 "--target-text", "B", "--edit-blocks", "1", "--edit-start", "0", "--steps", "2", "--backend", "ort",
                 "--engine", str(engine), "--out", str(tmp_path / "e.png"), "--quiet"])
    assert code == 2 and not (tmp_path / "e.png").exists()
    err = capsys.readouterr().err
    assert "exported without the text K/V swap inputs: re-export it with: " in err
    pasted = pasted_export(err)  # edit's two images: the engine's --batch 2 kept, --kv-swap added
    assert pasted.kv_swap and pasted.batch == 2 and pasted.exporter == "torchscript" and pasted.model == "tiny-sd3"


def test_localize_smoke_writes_table_plot_grid_and_settings(tmp_path):
    from amo_engine.eval.localize import LocalizeConfig, run_localize
    from amo_engine.model.load import resolve_folder

    model = tmp_path / "glyph"
    shutil.copytree(resolve_folder("glyph"), model)
    cfg = LocalizeConfig(out_dir=tmp_path / "out", model=str(model), pairs=2, steps=2, combine=2, start_steps=(0, 1),
                         write_settings=True, progress=False)
    result = run_localize(cfg, log=lambda s: None)
    n = result["joint_blocks"]
    stages = [s["stage"] for s in result["settings"]]
    assert stages == ["single"] * n + ["combined", "start"]
    assert all(0 <= s["flip"] <= 1 and s["ssim"] <= 1 for s in result["settings"])
    table = (tmp_path / "out" / "table.md").read_text()
    assert table.count("| single |") == n and "Chosen: joint blocks" in table
    assert (tmp_path / "out" / "plot.png").stat().st_size > 1000 and (tmp_path / "out" / "grid.png").is_file()
    settings = json.loads((model / "amo_engine.json").read_text())
    assert settings["edit_blocks"] == result["best"]["blocks"] and settings["edit_start_step"] == result["best"]["start"]
    assert settings["vocabulary"]  # the rest of the settings kept
