"""The user's guide stays short, true to the repository and free of history: README.md, docs/*.md,
ARCHITECTURE.md and CHANGELOG.md checked as plain files (no network, nothing run)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
GUIDE = [README, *DOCS]                                          # what a user reads as current
LINKED = [*GUIDE, ROOT / "ARCHITECTURE.md", ROOT / "CHANGELOG.md"]  # every relative link must resolve
MAX_README_LINES = 250

FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.S | re.M)
INLINE_CODE = re.compile(r"`([^`\n]+)`")
LINK = re.compile(r"!?\[[^\]\n]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
MAKE = re.compile(r"(?:^|[\s;&(|])make\s+([A-Za-z][\w.-]*)", re.M)
PY_M = re.compile(r"\bpython3?\s+-m\s+([A-Za-z_][\w.]*)(<?)")
ISSUE = re.compile(r"\bissues?\s*#?\d+", re.I)
HEXWORD = re.compile(r"(?<![\w/.#-])[0-9a-fA-F]{7,40}(?![\w/-])")


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def code_text(text: str) -> str:
    """The commands a page shows: its fenced blocks and its inline code spans."""
    blocks = [m.group(0) for m in FENCE.finditer(text)]
    prose = FENCE.sub("", text)
    return "\n".join(blocks + INLINE_CODE.findall(prose))


def makefile_targets() -> set[str]:
    targets = set()
    for line in (ROOT / "Makefile").read_text().splitlines():
        if line.startswith(".PHONY:"):
            targets.update(line.split(":", 1)[1].split())
            continue
        m = re.match(r"^([A-Za-z][\w.-]*(?:\s+[A-Za-z][\w.-]*)*)\s*:(?![:=])", line)
        if m:
            targets.update(m.group(1).split())
    return targets


def module_exists(name: str) -> bool:
    """A module of this repository (stages/, tools/, dpo_pipeline/, bench/, ...) or an installed one, found
    without importing it."""
    parts = name.split(".")
    local = ROOT.joinpath(*parts)
    if local.with_suffix(".py").is_file() or (local / "__init__.py").is_file():
        return True
    if parts[0] == "vllm":  # vLLM lives in the vLLM environment (make vllm), not this one: looked up there
        found = list((ROOT / ".venv-vllm").glob(f"lib/python*/site-packages/{'/'.join(parts)}.py"))
        return bool(found) or not (ROOT / ".venv-vllm").exists()
    spec = importlib.util.find_spec(parts[0])
    if spec is None:
        return False
    if len(parts) == 1:
        return True
    for base in spec.submodule_search_locations or []:
        sub = Path(base).joinpath(*parts[1:])
        if sub.with_suffix(".py").is_file() or (sub / "__init__.py").is_file():
            return True
    return False


def test_docs_exist():
    assert DOCS, "docs/ has no pages"


def test_readme_is_short():
    n = len(README.read_text().splitlines())
    assert n <= MAX_README_LINES, f"README.md has {n} lines, at most {MAX_README_LINES}: move a topic to docs/"


@pytest.mark.parametrize("page", LINKED, ids=rel)
def test_relative_links_resolve(page: Path):
    broken = []
    for target in LINK.findall(FENCE.sub("", page.read_text())):
        if re.match(r"^(https?:|mailto:|#)", target):
            continue
        path = target.split("#", 1)[0]
        if not (page.parent / path).exists():
            broken.append(target)
    assert not broken, f"{rel(page)}: links to missing files: {broken}"


@pytest.mark.parametrize("page", GUIDE, ids=rel)
def test_make_targets_exist(page: Path):
    targets = makefile_targets()
    missing = sorted({t for t in MAKE.findall(code_text(page.read_text())) if t not in targets})
    assert not missing, f"{rel(page)}: `make {missing[0]}` names no Makefile target (missing: {missing})"


@pytest.mark.parametrize("page", GUIDE, ids=rel)
def test_python_modules_exist(page: Path):
    named = {mod for mod, placeholder in PY_M.findall(code_text(page.read_text()))
             if not placeholder and not mod.endswith(".")}  # python -m stages.<name>: a pattern, not a module
    missing = sorted(mod for mod in named if not module_exists(mod))
    assert not missing, f"{rel(page)}: `python -m {missing[0]}` is no module here or installed ({missing})"


@pytest.mark.parametrize("page", [*GUIDE, ROOT / "params.yaml"], ids=rel)
def test_no_issue_numbers(page: Path):
    found = ISSUE.findall(page.read_text())
    assert not found, f"{rel(page)}: mentions issue numbers {found}: history belongs in CHANGELOG.md"


@pytest.mark.parametrize("page", [*GUIDE, ROOT / "params.yaml"], ids=rel)
def test_no_commit_hashes(page: Path):
    found = [w for w in HEXWORD.findall(page.read_text())
             if re.search(r"\d", w) and re.search(r"[a-fA-F]", w)]
    assert not found, f"{rel(page)}: commit hashes {found}: history belongs in CHANGELOG.md"


def quick_start() -> str:
    text = README.read_text()
    section = text.split("## Quick start", 1)
    assert len(section) == 2, "README.md: no '## Quick start' section"
    block = FENCE.search(section[1])
    assert block, "README.md: the quick start has no command block"
    return block.group(0)


def test_quick_start_commands():
    commands = [line.split("#", 1)[0].strip() for line in quick_start().splitlines()[1:-1]]
    assert "make run" in commands and "make test" in commands, \
        f"README.md: the quick start should show `make run` and `make test`, shows {commands}"


def test_ci_runs_the_readme_test_command():
    commands = [line.split("#", 1)[0].strip() for line in quick_start().splitlines()[1:-1]]
    tests = [c for c in commands if c.startswith("make test")]
    assert tests, "README.md: the quick start names no `make test`"
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.lstrip().startswith("#")]
    assert tests[0] in ci, f".ci/run: does not run the README's test command `{tests[0]}`"
