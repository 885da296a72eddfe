"""docs/retries.md stays true: every policy PIM uses is listed with its figures, and
every row of every table names at least one test that exists."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from pim.engine.retry import POLICIES

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "retries.md"


def _rows(text: str) -> list[list[str]]:
    """Data rows of the markdown tables: cells of lines starting with '|', headers and rules left out."""
    rows, header = [], True
    for line in text.splitlines():
        if not line.startswith("|"):
            header = True
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if header:
            header = False  # the header line; the rule line follows
            continue
        if all(set(c) <= set("-: ") for c in cells):
            continue
        rows.append(cells)
    return rows


def _defined(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}


def test_every_policy_is_in_the_doc_with_its_figures():
    text = DOC.read_text()
    for p in POLICIES:
        row = next((r for r in _rows(text) if r[0].strip("`") == p.name), None)
        assert row is not None, f"policy {p.name} is not in {DOC.name}"
        figures = " ".join(row)
        assert f"{p.attempts} tries" in figures, (p.name, figures)
        if p.deadline is not None:
            assert f"{p.deadline:g} s" in figures, (p.name, figures)


def test_every_row_names_tests_that_exist():
    rows = [r for r in _rows(DOC.read_text()) if r[0].strip("`") not in {p.name for p in POLICIES}]
    assert len(rows) >= 40
    missing = []
    for row in rows:
        refs = re.findall(r"(tests/[\w/]+\.py)::(test_\w+)", row[-1])
        if not refs:
            missing.append(f"{row[0]}: no test named")
        for file, name in refs:
            path = ROOT / file
            if not path.exists() or name not in _defined(path):
                missing.append(f"{row[0]}: {file}::{name} does not exist")
    assert missing == []
