"""MkDocs hook: README.md is the documentation's home page.

README.md is the one page users read first and it holds the install and quick start, so the
site takes it as its `index.md` instead of keeping a second copy. Its links into `docs/`
(`docs/configuration.md#...`) become links between pages, so `mkdocs build --strict` checks
them, anchors included, like every other link."""
from __future__ import annotations

import re
from pathlib import Path

from mkdocs.structure.files import File, Files

README = Path(__file__).resolve().parent / "README.md"


def on_files(files: Files, config) -> Files:
    text = README.read_text(encoding="utf-8")
    text = re.sub(r"\]\(docs/", "](", text)
    files.append(File.generated(config, "index.md", content=text))
    return files
