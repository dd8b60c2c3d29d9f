"""What the test suites (and the benchmarks) share: one plain module per concern,
in the manner of query-exporter's `integration_tests/fixtures/`. Tests import them as
`from support.<module> import ...` (pytest puts tests/ on sys.path: it has no __init__.py).

- `waiting`: `wait_until`, the one poll-until-a-deadline loop.
- `processes`: processes by pid (`children_of`, `process_gone`, `wait_gone`), `free_port`, and
  running pgne commands (`pgne_env`, `run_pgne`).
- `databases`: the one database handle (`Database`), its create/drop (`create_database`,
  `drop_database`, `throwaway_database`, the `DatabasePool` behind the `pg_database` fixture), the
  one SQL helper (`query`, and `run_sql` for several statements) and catalog queries.
- `configs`: the one events_config.yml builder (`database_entry`, `config_text`), for the tests
  and the benchmarks; `inline_configs`: the unit tests' in-memory configs (`config`, `parse`,
  `errors`) and their fixture and golden files.
- `exporter`: a `pgne run` subprocess (`PgneProcess`) and pgne commands in this process
  (`apply_in_process`, `status_in_process`).
- `metrics`: reading /metrics (`parse_metrics`, `http_get`, per-database series, `settle`,
  `MonotonicWatch`).
- `listener`: `Listener`, a LISTEN session that sums pgne's NOTIFY payloads.
- `outbox`: pgne.totals and pgne.event_log read back for `delivery: outbox` tests.
- `clusters`: throwaway clusters of pgne.cluster for tests that stop or crash a server.
- `faults`: a partitionable TCP proxy, a background writer, measured durations.
- `statefiles`: prometheus_client multiprocess files written as a process would.

conftest.py files hold only fixtures.
"""
