"""The command line: generate writes PNGs, --help teaches, bad input gets one clear line."""

from __future__ import annotations

import os

import pytest
from PIL import Image

from amo_engine.cli import build_parser, main

from conftest import FAMILY_NAMES, FEATURE_FAMILIES, cli_in_fresh_process


@pytest.fixture(params=FEATURE_FAMILIES)
def family(request) -> str:
    """This module's features on every family once (conftest.FEATURE_FAMILIES)."""
    return request.param


def test_generate_writes_png_and_overlay(tmp_path, capsys, family):
    out, attn = tmp_path / "img.png", tmp_path / "attn.png"
    code = main([
        "generate", "--model", f"tiny-{family}", "--cache-dir", str(tmp_path / "cache"),
        "--prompt", "A sign that says 'OPEN'", "--sampler", "amo", "--steps", "3", "--seed", "10",
        "--out", str(out), "--save-attn", str(attn), "--quiet",
    ])
    assert code == 0
    assert Image.open(out).size == (128, 128)
    assert Image.open(attn).size[0] > 128
    printed = capsys.readouterr().out
    assert "ms/step" in printed and f"amo on {FAMILY_NAMES[family]}" in printed
    assert not list(tmp_path.glob(".*.png"))  # no temp files left behind


def test_batch_writes_numbered_files(tmp_path):
    out = tmp_path / "b.png"
    code = main(["generate", "--model", "tiny-flux", "--cache-dir", str(tmp_path / "c"), "--prompt", "'A'",
                 "--prompt", "'B'", "--steps", "2", "--out", str(out), "--quiet"])
    assert code == 0
    assert out.is_file() and (tmp_path / "b_1.png").is_file()


def test_help_teaches():
    text = build_parser()._subparsers._group_actions[0].choices["generate"].format_help()
    for phrase in ("--sampler", "overshoot", "Quote the text", "tiny-sd3", "--save-attn", "examples:"):
        assert phrase in text


def test_errors_are_one_clear_line(tmp_path, capsys):
    code = main(["generate", "--model", "no-such-model", "--prompt", "x", "--out", str(tmp_path / "x.png")])
    assert code == 2
    err = capsys.readouterr().err
    assert "unknown model 'no-such-model'" in err and "Traceback" not in err
    assert not (tmp_path / "x.png").exists()
    with pytest.raises(SystemExit):
        main(["generate", "--prompt", "x", "--sampler", "heun"])
    with pytest.raises(SystemExit):
        main(["generate", "--prompt", "x", "--blocks", "a,b"])


def test_output_files_get_normal_permissions(tmp_path):
    from amo_engine.atomic import atomic_path

    umask = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "f.txt") as tmp:
            tmp.write_text("x")
    finally:
        os.umask(umask)
    assert (tmp_path / "f.txt").stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("args,message", [
    (["--steps", "0"], "--steps must be >= 1"),
    (["--c", "-1"], "--c must be a finite number >= 0"),
    (["--model", "tiny-sd3", "--height", "100"], "height 100 px: tiny-sd3 draws sizes in multiples of 16 px (e.g. 96)"),
    (["--width", "100"], "width 100 px: glyph draws sizes in multiples of 8 px (e.g. 96)"),  # the glyph model (default)
    (["--size", "200x32"], "width 200 px: glyph draws at most 96 px a side"),  # no diffusers error in latent units
    (["--size", "96"], "size must be WIDTHxHEIGHT in pixels, e.g. 128x48; got '96'"),
    (["--size", "96x32", "--height", "32"], "--size sets both sides: drop --height and --width"),
    (["--model", "tiny-flux", "--backend", "ort"], "amo-engine export --model tiny-flux --out engines/tiny-flux"),
])
def test_bad_options_fail_before_any_import_or_load(args, message):
    """Checked before diffusers is imported: a fresh process must not have loaded it."""
    done = cli_in_fresh_process(["generate", "--prompt", "x", *args])
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert done.stdout.strip() == "False" and done.stderr.count("\n") == 1


def test_engine_score_config_wins_and_flags_that_disagree_are_named(tmp_path, capsys, preset_cache, exported):
    engine = exported("flux", exporter="torchscript")
    seen = {}
    import amo_engine.plots as plots

    real = plots.save_attention_overlay

    def spy(image, attn_map, path, **kw):
        seen["title"] = kw.get("title")
        return real(image, attn_map, path, **kw)

    with pytest.MonkeyPatch.context() as mp, pytest.warns(UserWarning) as caught:
        mp.setattr(plots, "save_attention_overlay", spy)
        code = main(["generate", "--model", "tiny-flux", "--cache-dir", str(preset_cache), "--backend", "ort",
                     "--engine", str(engine), "--prompt", "A sign 'OPEN'", "--steps", "2", "--blocks", "1",
                     "--max-span-tokens", "8", "--sampler", "euler", "--save-attn", str(tmp_path / "a.png"),
                     "--out", str(tmp_path / "o.png"), "--quiet"])
    assert code == 0
    notes = [str(w.message) for w in caught]
    assert "--blocks 1 is ignored: the engine computes the map from blocks 0,1 (re-export with --blocks to change it)" in notes
    assert any(n.startswith("--max-span-tokens 8 is ignored: the engine reads 64 span tokens") for n in notes)
    from amo_engine.cli import _plain_warning

    assert _plain_warning(notes[0], UserWarning, "x.py", 3) == f"amo-engine: warning: {notes[0]}\n"  # no source line
    assert seen["title"] == "quoted-text attention (shown only: euler does not use it)"


def test_cli_refuses_cuda_graph_without_cuda(capsys):
    """Needs no compiler: it lives here, not in the AOTInductor module that skips without one."""
    from amo_engine.cli import main

    assert main(["generate", "--model", "glyph", "--prompt", "a sign", "--backend", "ort", "--engine", "engines/x",
                 "--cuda-graph"]) == 2
    assert "--cuda-graph needs --backend aoti or trt on --device cuda" in capsys.readouterr().err


def test_an_unquoted_prompt_is_told_to_quote_it(capsys):
    assert main(["generate", "--prompt", "a", "dark", "sign", "that", "says", "HAPPY", "--steps", "2"]) == 2
    err = capsys.readouterr().err
    assert err.strip().endswith("""quote it whole, with the text to render in quotes inside it: --prompt "a dark sign """
                                """that says 'HAPPY'\"""") and err.count("\n") == 1


def test_an_unknown_model_is_named_before_torch_is_imported():
    import subprocess
    import sys

    code = ("import sys; from amo_engine.cli import main; rc = main(sys.argv[1:]); "
            "print('torch' in sys.modules, 'diffusers' in sys.modules); sys.exit(rc)")
    for argv in (["generate", "--model", "tiny-sd4", "--prompt", "x"], ["export", "--model", "tiny-sd4", "--out", "e"],
                 ["eval", "--model", "tiny-sd4", "--out-dir", "e"]):
        done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and "unknown model 'tiny-sd4'" in done.stderr, done.stderr
        assert done.stdout.split() == ["False", "False"], argv


def test_loadtest_to_a_port_where_nothing_listens_fails_within_seconds(capsys):
    import socket

    with socket.socket() as s:  # a free port, closed again: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert main(["loadtest", "--url", f"http://127.0.0.1:{port}"]) == 1
    assert f"nothing listens at http://127.0.0.1:{port} (connection refused)" in capsys.readouterr().err


def test_ctrl_c_is_one_line_and_status_130(tmp_path):
    import signal
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "import sys; from amo_engine.cli import main; "
                             "sys.exit(main(sys.argv[1:]))", "generate", "--prompt", "a dark sign that says 'HAPPY'",
                             "--steps", "100000", "--out", str(tmp_path / "x.png")],
                            stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stderr:  # the progress bar's first update: the loop is running
            if "step" in line or "\r" in line:
                break
        proc.send_signal(signal.SIGINT)
        err = proc.stderr.read()
        assert proc.wait(timeout=120) == 130
    finally:
        proc.kill()
    assert err.strip().splitlines()[-1] == "amo-engine generate: interrupted; nothing written"
    assert "Traceback" not in err and not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("argv, message", [
    (["--nodes", "2", "--replicas", "1"], "--nodes 2 places one replica a node: pass --replicas 2"),
    (["--url", "http://127.0.0.1:1", "--nodes", "2", "--replicas", "2"], "starts a cluster here: drop --url"),
    (["--kill-node-after", "3", "--replicas", "2"], "--kill-node-after kills a worker node: it needs --nodes 2"),
    (["--soak-minutes", "0"], "--soak-minutes and --soak-rate must be > 0"),
    (["--soak-minutes", "1", "--kill-replica-after", "2", "--replicas", "2"], "a soak run kills nothing"),
])
def test_loadtest_cluster_and_soak_options_refused_in_one_line(argv, message, capsys):
    assert main(["loadtest", "--model", "tiny-sd3", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
