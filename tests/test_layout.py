"""The shape of the codebase, which a refactor must keep: stages are recipes, the library has rooms, imports
only go down, and nothing is long enough to hide in."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STAGES = {"code", "sft_data", "prepare", "sft", "sample", "judge", "train", "eval_baselines", "eval", "report"}
ROOMS = ("models", "judging", "evaluation", "reporting")


def python_files(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (ROOT / folder).rglob("*.py"))


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path) -> set[str]:
    """Every module name an import in `path` may load, at any depth (lazy imports included)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
    return names


def test_stages_holds_only_the_eight_recipes():
    files = {p.stem for p in (ROOT / "stages").iterdir() if p.suffix == ".py"} - {"__init__"}
    assert files == STAGES
    for name in STAGES:
        source = (ROOT / "stages" / f"{name}.py").read_text()
        tree = ast.parse(source)
        assert f"python -m stages.{name}" in ast.get_docstring(tree), name  # the docstring gives the command
        assert len(source.splitlines()) <= 150, name
        mains = [f for f in tree.body if isinstance(f, ast.FunctionDef) and f.name == "main"]
        assert mains and mains[0].args.args[0].arg == "params", f"{name}: main(params) takes validated params"


def test_the_library_never_imports_a_stage_or_a_tool():
    upward = {f"{module_name(p)} imports {n}" for p in python_files("dpo_pipeline") for n in imported(p)
              if n.split(".")[0] in ("stages", "tools")}
    assert not upward


def test_no_import_cycle_in_the_library():
    known = {module_name(p): p for p in python_files("dpo_pipeline")}
    graph = {m: {n for n in imported(p) if n in known and n != m} for m, p in known.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                pytest.fail("import cycle: " + " -> ".join(path[path.index(n):] + [m, n]))
            if n not in state:
                visit(n, path + [m])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])


def test_rooms_init_files_hold_only_a_docstring():
    """So importing dpo_pipeline.models.kl makes a stage depend on kl.py, not on the whole room."""
    for room in ROOMS:
        body = ast.parse((ROOT / "dpo_pipeline" / room / "__init__.py").read_text()).body
        assert len(body) == 1 and isinstance(body[0], ast.Expr), room


def test_no_function_over_60_lines_outside_tests():
    long = [f"{p.relative_to(ROOT)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for p in python_files("dpo_pipeline", "stages", "tools", "bench")
            for node in ast.walk(ast.parse(p.read_text()))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60]
    assert not long


def touches_sys_path(path: Path) -> bool:
    return any(isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "sys"
               and node.attr == "path" for node in ast.walk(ast.parse(path.read_text())))


def test_tests_and_benchmarks_share_doubles_through_the_support_package_only():
    """Imported as packages from the repository root (`python -m bench.<name>`, `python -m pytest`): sys.path
    left alone, and no test module imports another."""
    bad = {f"{p.relative_to(ROOT)} imports {n}" for p in python_files("tests", "bench") for n in imported(p)
           if n.startswith("tests.") and n.split(".")[1] != "support"}
    bad |= {f"{p.relative_to(ROOT)} touches sys.path" for p in python_files("tests", "bench") if touches_sys_path(p)}
    assert not bad
