"""The shape issue 38 set, kept by a test: every package folder says in its docstring what lives there, and a module
over 400 lines says why in its own."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("align", "reward", "merge")
LONG = 400
REASON = "One module over 400 lines:"


def modules() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def docstring(path: Path) -> str:
    return ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""


@pytest.mark.parametrize("path", [p for p in modules() if p.name == "__init__.py"], ids=lambda p: str(p.parent))
def test_every_package_folder_says_what_lives_there(path):
    assert len(docstring(path).split()) >= 12, f"{path.relative_to(ROOT)}: say what lives here and what it may import"


def test_a_module_over_400_lines_says_why():
    unexplained = [
        f"{p.relative_to(ROOT)} ({n} lines)"
        for p in modules()
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > LONG and REASON not in docstring(p)
    ]
    assert not unexplained, f"over {LONG} lines with no '{REASON} <why>' in the docstring: {', '.join(unexplained)}"
