"""The floor plan holds: every import points down, and the pure layers do no I/O.

    cli ─────────────┐                     command line, local runner, report, trigger
    jobs ────────────┤                     bronze, silver, gold, replay: the orchestration
    quality, transforms, synthetic         pure: rules and the gate; silver and gold
    common                                 contract, config, platform, Spark, the I/O module

A module may import its own package and the packages below it. quality and transforms are
pure DataFrame -> DataFrame code: they may not import the I/O module, the Spark factory or
the platform switch either.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "order_pipeline"
LAYER = {
    "common": 0,
    "quality": 1,
    "transforms": 1,
    "synthetic": 1,
    "jobs": 2,
    "cli": 3,
    "queries": 0,
}
PURE = {"quality", "transforms"}
IMPURE = {f"{PACKAGE}.common.io", f"{PACKAGE}.common.spark", f"{PACKAGE}.common.platform"}


def imports_of(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            found += [(node.lineno, n) for n in names if n.startswith(f"{PACKAGE}.")]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith(f"{PACKAGE}.")]
    return found


def violations(src: Path) -> list[str]:
    problems = []
    for path in sorted(src.rglob("*.py")):
        relative = path.relative_to(src)
        if len(relative.parts) < 2:
            continue
        package = relative.parts[0]
        for line, name in imports_of(path):
            target = name.split(".")[1]
            if target not in LAYER:
                continue  # e.g. order_pipeline.conf resources
            where = f"src/{relative.as_posix()}:{line}"
            if LAYER[target] > LAYER[package]:
                problems.append(f"{where}: {package} imports {name}, a layer above it")
            elif LAYER[target] == LAYER[package] and target != package:
                problems.append(f"{where}: {package} imports {name}, a sibling layer")
            if package in PURE and any(name == m or name.startswith(f"{m}.") for m in IMPURE):
                problems.append(f"{where}: pure {package} imports {name}")
    return problems


def test_every_import_points_down_and_pure_layers_do_no_io() -> None:
    assert violations(SRC) == []


def test_the_check_finds_an_upward_and_an_impure_import(tmp_path: Path) -> None:
    for package, source in {
        "common": "from order_pipeline.jobs.task import TaskContext\n",
        "quality": "from order_pipeline.common.io import Lakehouse\n",
        "transforms": "import order_pipeline.quality.gate\n",
        "jobs": "from order_pipeline.common import contract\n",
    }.items():
        (tmp_path / package).mkdir()
        (tmp_path / package / "module.py").write_text(source)
    assert violations(tmp_path) == [
        "src/common/module.py:1: common imports order_pipeline.jobs.task, a layer above it",
        "src/common/module.py:1: common imports order_pipeline.jobs.task.TaskContext, a layer above it",
        "src/quality/module.py:1: pure quality imports order_pipeline.common.io",
        "src/quality/module.py:1: pure quality imports order_pipeline.common.io.Lakehouse",
        "src/transforms/module.py:1: transforms imports order_pipeline.quality.gate, a sibling layer",
    ]
