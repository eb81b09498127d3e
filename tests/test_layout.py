"""The package's tree is its architecture: stage subpackages along the path data takes, each
importing only from itself and the stages before it."""

from __future__ import annotations

import ast
from pathlib import Path

import glmtune

PACKAGE = Path(glmtune.__file__).parent
STAGES = ("core", "data", "model", "training", "comparison", "export")


def imported_stages(path: Path, package: Path = PACKAGE) -> set[tuple[str, int]]:
    """(subpackage, line) of every glmtune import in one module, lazy ones inside functions too."""
    here = path.relative_to(package.parent).with_suffix("").parts  # ("glmtune", "model", "lora")
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(here[:len(here) - node.level])
                target = base + (node.module.split(".") if node.module else [])
                targets = [target + [alias.name] for alias in node.names] if len(target) == 1 else [target]
            else:
                targets = [(node.module or "").split(".")]
        elif isinstance(node, ast.Import):
            targets = [alias.name.split(".") for alias in node.names]
        else:
            continue
        for target in targets:
            if target[0] == "glmtune" and len(target) > 1 and target[1] in STAGES:
                found.add((target[1], node.lineno))
    return found


def test_every_module_lives_in_a_stage_subpackage():
    # __main__.py is the `glmtune` command, above every stage: it dispatches to each stage's job.
    loose = sorted(p.name for p in PACKAGE.glob("*.py") if p.name not in ("__init__.py", "__main__.py"))
    assert not loose, f"modules outside the stage subpackages: {loose}"
    assert sorted(p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()) == sorted(STAGES)


def test_no_stage_imports_from_a_later_one():
    reaching_up = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).parts
        if len(parts) < 2:
            continue
        stage = STAGES.index(parts[0])
        reaching_up += [f"{path.relative_to(PACKAGE)}:{line} imports from {target}/"
                        for target, line in sorted(imported_stages(path)) if STAGES.index(target) > stage]
    assert not reaching_up, "\n".join(reaching_up)


def test_the_check_sees_a_reach_up(tmp_path):
    """The check above can fail: a core module importing from training is caught."""
    fake = tmp_path / "glmtune" / "core"
    fake.mkdir(parents=True)
    module = fake / "probe.py"
    module.write_text("def f():\n    from ..training.runs import RunRecord\n", encoding="utf-8")
    assert imported_stages(module, tmp_path / "glmtune") == {("training", 2)}
