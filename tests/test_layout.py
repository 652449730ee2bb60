"""The layout keeps its rules: every check command of docs/architecture.md prints nothing, and no two
modules import each other, directly or round a loop (lazy imports and parent packages included)."""

from __future__ import annotations

import ast
import re
import subprocess
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "amo_engine"


def rule_commands() -> list[str]:
    block = re.search(r"```sh\n(.*?)```", (ROOT / "docs" / "architecture.md").read_text(), flags=re.S)
    return [line for line in block[1].splitlines() if line.strip()]


def test_every_layer_rule_prints_nothing():
    commands = rule_commands()
    assert len(commands) == 6
    for command in commands:
        out = subprocess.run(["bash", "-c", command], cwd=ROOT, capture_output=True, text=True)
        assert out.stdout == "" and out.stderr == "", f"{command}\n{out.stdout}{out.stderr}"


def test_a_rule_sees_a_planted_violation(tmp_path):
    bad = tmp_path / "amo_engine" / "model"
    bad.mkdir(parents=True)
    (bad / "x.py").write_text("def f():\n    from amo_engine.pipeline.generate import AmoPipeline\n")
    model_rule = next(c for c in rule_commands() if c.endswith("amo_engine/model"))
    out = subprocess.run(["bash", "-c", model_rule], cwd=tmp_path, capture_output=True, text=True)
    assert "amo_engine/model/x.py:2" in out.stdout


def module_imports() -> dict[str, set[str]]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        modules[name] = path
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("amo_engine"):
                targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                           for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.startswith("amo_engine")]
            else:
                continue
            graph[name] |= {t for t in targets if t in modules and t not in (name, "amo_engine")}
    return graph


def test_no_import_circles():
    graph = module_imports()
    circles = []
    for start in list(graph):  # a module that reaches itself
        seen, todo = set(), list(graph[start])
        while todo:
            module = todo.pop()
            if module == start:
                circles.append(start)
                break
            if module not in seen:
                seen.add(module)
                todo.extend(graph.get(module, ()))
    assert circles == []
    assert graph["amo_engine.model.families"] and graph["amo_engine.engine.backends"]  # the walk saw imports
