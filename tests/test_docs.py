"""The documentation cannot drift: every ``amo-engine`` command in README.md and docs/*.md parses with
the CLI's own parser, and every one marked with a duration of at most RUN_UP_TO seconds
(a trailing comment ending ``~N s``) runs as written, in page order, in a fresh folder after the README's main job — as a
newcomer pasting them would. The README's Python example runs too."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from amo_engine.cli import build_parser, main

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUN_UP_TO = 90  # seconds on 2 cores: longer commands are parsed, not run
DURATION = re.compile(r"#.*~(\d+)\s*(s|min)\s*$")


def blocks(page: Path, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", page.read_text(), flags=re.S)


def commands(page: Path) -> list[tuple[list[str], float | None, str]]:
    """(argv after ``amo-engine``, documented seconds or None, the line) for each command of the page's
    bash blocks; ``a && b`` chains are split, continuation lines joined."""
    found = []
    for block in blocks(page, "bash"):
        for line in block.replace("\\\n", " ").splitlines():
            match = DURATION.search(line)
            seconds = None if match is None else int(match[1]) * (60 if match[2] == "min" else 1)
            for part in line.split(" && "):
                words = shlex.split(part, comments=True)
                if words and Path(words[0]).name == "amo-engine":
                    found.append((words[1:], seconds, part.strip()))
    return found


ALL = [(page.name, line, argv, seconds) for page in PAGES for argv, seconds, line in commands(page)]


def test_the_pages_have_commands():
    assert len(ALL) > 20 and {page for page, *_ in ALL} >= {"README.md", "text-editing.md", "engines.md"}


@pytest.mark.parametrize("page, line, argv, seconds", ALL, ids=[f"{p}:{i}" for i, (p, *_) in enumerate(ALL)])
def test_every_documented_command_parses(page, line, argv, seconds):
    try:
        build_parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"{page}: this command does not parse: {line}")


@pytest.mark.slow
def test_the_cheap_documented_commands_run_as_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    first_block = blocks(ROOT / "README.md", "bash")[0]
    for part in first_block.strip().split(" && "):  # the main job's own amo-engine commands first
        words = shlex.split(part)
        if Path(words[0]).name == "amo-engine":
            assert main(words[1:]) == 0, part
    for page in PAGES:
        for argv, seconds, line in commands(page):
            if seconds is None or seconds > RUN_UP_TO:
                continue
            assert main(argv) == 0, f"{page.name}: {line}\n{capsys.readouterr().err}"
    for code in blocks(ROOT / "README.md", "python"):
        exec(compile(code, "README.md", "exec"), {})
    assert (tmp_path / "happy.png").is_file()


def test_ci_runs_exactly_the_readme_test_command():
    readme_tests = blocks(ROOT / "README.md", "bash")[1].strip()
    assert readme_tests in (ROOT / ".ci" / "run").read_text().splitlines()


def test_the_documented_cluster_config_is_ray_serve_schema():
    """docs/serving.md's cluster config parses in Ray Serve's own schema, and every arg it passes is
    one build_app takes (a runtime field or a ServiceConfig field)."""
    import dataclasses

    yaml = pytest.importorskip("yaml")
    schema = pytest.importorskip("ray.serve.schema")
    from amo_engine.serve.app import RUNTIME_ARGS, ServiceConfig

    (text,) = blocks(ROOT / "docs" / "serving.md", "yaml")
    config = yaml.safe_load(text)
    parsed = schema.ServeDeploySchema.model_validate(config)
    app = parsed.applications[0]
    assert app.import_path == "amo_engine.serve.app:build_app"
    service = {f.name for f in dataclasses.fields(ServiceConfig)}
    assert set(app.args) <= set(RUNTIME_ARGS) | service, set(app.args) - set(RUNTIME_ARGS) - service
    assert {d.name for d in app.deployments} == {"renderer", "gateway"}
