"""The layout table of docs/development.md is the architecture: every module of pgne/ in it once, and a module
imports only modules of its own row or of rows above it (no import runs back up the table)."""
from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ROW = re.compile(r"^\| (`pgne/\w+\.py`(?:, `pgne/\w+\.py`)*) \|", re.MULTILINE)


def layout_rows() -> list[list[str]]:
    text = (REPO / "docs" / "development.md").read_text(encoding="utf-8")
    section = text[text.index("## Layout"):text.index("## Architecture")]
    return [re.findall(r"`pgne/(\w+)\.py`", match) for match in ROW.findall(section)]


def pgne_imports(module: str) -> set[str]:
    """The pgne modules a module imports, at its top or inside functions."""
    tree = ast.parse((REPO / "pgne" / f"{module}.py").read_text(encoding="utf-8"))
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "pgne":
            imported.update(alias.name for alias in node.names if alias.name != "__version__")
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pgne."):
            imported.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            imported.update(a.name.split(".")[1] for a in node.names if a.name.startswith("pgne."))
    return imported


def test_the_layout_table_names_every_module_once():
    listed = [module for row in layout_rows() for module in row]
    modules = sorted(p.stem for p in (REPO / "pgne").glob("*.py") if not p.stem.startswith("__"))
    assert sorted(listed) == modules
    assert len(listed) == len(set(listed))


def test_no_module_imports_one_listed_below_it():
    rank = {module: i for i, row in enumerate(layout_rows()) for module in row}
    upward = {module: sorted(m for m in pgne_imports(module) if rank.get(m, -1) > rank[module])
              for module in rank}
    assert {module: later for module, later in upward.items() if later} == {}
