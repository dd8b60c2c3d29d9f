"""pgne: PostgreSQL LISTEN/NOTIFY exporter for Prometheus."""

__version__ = "0.1.0"
