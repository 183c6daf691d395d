"""What a stage computes with, as one small text file per stage (stage `code`, `paths.code`).

Each line is a module the stage runs (its own file, the library modules it imports, transitively, and the
selected task's file) with a hash of its parsed code: docstrings removed, then `ast.unparse`, so comments,
docstrings and formatting do not count and everything else does. A stage depends on its file, not on the
.py files, so DVC re-runs it when the code it runs changes what it could compute, and never for a comment.
"""

from __future__ import annotations

import ast
import hashlib
from pathlib import Path

# Plumbing (validation, file I/O, error printing, the entry point) cannot change an output, and neither can
# what it imports to validate: the walk neither lists it nor goes through it. The memory plan is a check of
# that kind (a stage runs unchanged or stops before loading weights), so refining its estimate re-runs nothing;
# so is the progress bar, which only draws.
# The rooms' __init__ files hold only a docstring (tests/test_layout.py checks).
PLUMBING = {"dpo_pipeline", "dpo_pipeline.cli", "dpo_pipeline.config", "dpo_pipeline.errors", "dpo_pipeline.files",
            "dpo_pipeline.fingerprint", "dpo_pipeline.models", "dpo_pipeline.judging", "dpo_pipeline.evaluation",
            "dpo_pipeline.reporting", "dpo_pipeline.models.memory", "dpo_pipeline.progress"}
# Files a module reads at run time besides code: they count whole, byte for byte.
DATA = {"dpo_pipeline.reporting.page": ["dpo_pipeline/reporting/page.html"]}
TASKS = "dpo_pipeline.tasks"  # a stage importing it runs the selected task's module, loaded by path


def module_file(module: str, root: Path) -> Path:
    rel = Path(*module.split("."))
    return rel.with_suffix(".py") if (root / rel.with_suffix(".py")).exists() else rel / "__init__.py"


def imports(module: str, root: Path, seen: set[str] | None = None) -> set[str]:
    """The dpo_pipeline modules `module` imports, transitively, plumbing left out (imports inside functions
    count: they run when the stage takes that path)."""
    seen = set() if seen is None else seen
    for node in ast.walk(ast.parse((root / module_file(module, root)).read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:  # `from a.b import c`: a.b, and a.b.c if a module
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            if (name.split(".")[0] == "dpo_pipeline" and name not in seen and name not in PLUMBING
                    and (root / module_file(name, root)).exists()):
                seen.add(name)
                imports(name, root, seen)
    return seen


def stage_files(stage: str, root: Path, task_module: str) -> list[str]:
    """The files whose code stage `stage` runs: its module, its library modules, their data, the task file."""
    modules = imports(f"stages.{stage}", root)
    files = {f"stages/{stage}.py"} | {str(module_file(m, root)) for m in modules - {TASKS}}
    files |= {f for m in modules for f in DATA.get(m, [])}
    if TASKS in modules:
        files |= {"dpo_pipeline/tasks/__init__.py", task_module}
    return sorted(files)


def code_hash(path: Path) -> str:
    if path.suffix != ".py":
        return hashlib.sha256(path.read_bytes()).hexdigest()
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return hashlib.sha256(ast.unparse(tree).encode()).hexdigest()


def fingerprint(stage: str, root: Path, task_module: str) -> str:
    return "".join(f"{f} {code_hash(root / f)}\n" for f in stage_files(stage, root, task_module))


def stages(root: Path) -> list[str]:
    """The stage modules: stages/<name>.py, but this one's own stage."""
    return sorted(p.stem for p in (root / "stages").glob("*.py") if p.stem not in ("__init__", "code"))
