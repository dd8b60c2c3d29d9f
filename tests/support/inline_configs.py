"""In-memory configs of the unit tests (no database, no network): BASE, the smallest valid
config, edited with `config()`; `parse()` / `errors()`; the fixture and golden files."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from pgne.config import parse_config
from pgne.errors import UserError
from pgne.model import Config
from pgne.render import Renderer

HERE = Path(__file__).resolve().parent.parent / "unit"
FIXTURES = HERE / "fixtures"
GOLDEN = HERE / "golden"
# A byte-for-byte copy of pg_notify_exporter's README example (../shared/fixtures/).
README_FIXTURE = FIXTURES / "pg_notify_exporter_readme_config.yml"
RICH_FIXTURE = FIXTURES / "rich_config.yml"
OBSERVED_FIXTURE = FIXTURES / "observed_config.yml"  # columns_to_observe

# The name every in-memory config is parsed under: it starts every error line.
NAME = "events_config.yml"

# One host, one database, one monitor: the smallest valid config. Tests edit it with `config()`.
BASE = """\
- localhost:
  - database: test
    tag: business_tag
    perform_setup: true
    username: postgres
    password: secret
    enabled: true
    monitors:
    - table: one
      enabled: yes
      function: notification_with_payload
      events: [insert]
"""


def yaml_text(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def config(replace: dict[str, str] | None = None, append: str = "", indent: int = 0) -> str:
    """BASE with exact-substring replacements (each must occur once), then `append` (dedented,
    then indented by `indent` spaces: 0 for a host, 2 for a database, 4 for a monitor, 6 for a
    key of BASE's last monitor)."""
    text = BASE
    for old, new in (replace or {}).items():
        assert text.count(old) == 1, f"{old!r} occurs {text.count(old)} times in BASE"
        text = text.replace(old, new)
    return text + textwrap.indent(yaml_text(append), " " * indent)


def parse(text: str, renderer: Renderer | None = None, base_dir: Path | None = None) -> Config:
    return parse_config(NAME, text, renderer or Renderer(), base_dir=base_dir or HERE)


def errors(text: str, renderer: Renderer | None = None, base_dir: Path | None = None) -> list[str]:
    """The error lines that parsing `text` raises (fails the test if it parses)."""
    with pytest.raises(UserError) as info:
        parse(text, renderer, base_dir)
    assert info.value.exit_code == 2
    return info.value.lines
