"""Loads events_config.yml: finds it, reads it (bounded), parses the YAML and validates it.

The file is pg_notify_exporter's format, unchanged. The YAML loader is pgne.yamlfile, the
checks pgne.validation, and what comes back is a pgne.model.Config: frozen dataclasses, so
nothing downstream touches the raw YAML.
"""
from __future__ import annotations

import os
from pathlib import Path

from pgne.errors import UserError
from pgne.model import Config
from pgne.validation import TemplateCatalog, validate
from pgne.yamlfile import read_bounded, read_yaml, shown_path

DEFAULT_CONFIG_PATH = "config/events_config.yml"
# Bounds that keep a hostile file cheap to refuse, in `check` and in the master's SIGHUP reload.
# PyYAML parses about 0.2 MB/s of config on a slow machine: 4 MiB is some 20,000 database entries.
MAX_CONFIG_BYTES = 4 * 1024 * 1024


def parse_config(path: str, text: str, templates: TemplateCatalog, base_dir: Path | None = None) -> Config:
    """Validate `text` (the content of `path`); raise UserError listing every problem."""
    return validate(path, read_yaml(path, text), templates, base_dir or Path(path).resolve().parent)


def config_path(cli_value: str | None) -> str:
    """-c/--config, else $PGNE_CONFIG, else config/events_config.yml."""
    return cli_value or os.environ.get("PGNE_CONFIG") or DEFAULT_CONFIG_PATH


def load_config(path: str, templates: TemplateCatalog) -> Config:
    try:
        text = read_bounded(path, MAX_CONFIG_BYTES).decode("utf-8")
    except FileNotFoundError:
        raise UserError(f"{shown_path(path)}: no such file (give one with -c/--config or $PGNE_CONFIG)") from None
    except OSError as exc:
        raise UserError(f"{shown_path(path)}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: cannot read: {exc}") from None
    return parse_config(path, text, templates)
