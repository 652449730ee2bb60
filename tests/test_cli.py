"""The command line: generate writes PNGs, --help teaches, bad input gets one clear line."""

from __future__ import annotations

import os

import pytest
from PIL import Image

from amo_engine.cli import build_parser, main


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
    assert "ms/step" in printed and f"amo on {family}" in printed
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
