"""Finds the files installed with the package: built-in SQL templates and the config schema.

They are installed as the packages `pgne.sql_templates` and `pgne.schema` (see setup.py);
in a source checkout that is not installed they are the top-level folders of the same name.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

_SOURCE_ROOT = Path(__file__).resolve().parent.parent


def _package_dir(package: str, source_dir: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            if Path(location).is_dir():
                return Path(location)
    return _SOURCE_ROOT / source_dir


def builtin_templates_dir() -> Path:
    return _package_dir("pgne.sql_templates", "sql_templates")


def config_schema_path() -> Path:
    return _package_dir("pgne.schema", "schema") / "events_config.schema.json"
