"""prometheus_client multiprocess files written as a pgne process would (for the tests of the
state directory: compaction, exposition)."""
from __future__ import annotations

import os

from prometheus_client.mmap_dict import MmapedDict


def write_multiprocess_file(state_dir, prefix: str, pid: object, entries: dict) -> None:
    """A prometheus_client multiprocess file `<prefix>_<pid>.db`, written as a process would.
    entries: {key: value} or {key: (value, timestamp)}."""
    d = MmapedDict(os.path.join(state_dir, f"{prefix}_{pid}.db"))
    try:
        for k, v in entries.items():
            value, timestamp = v if isinstance(v, tuple) else (v, 0.0)
            d.write_value(k, value, timestamp)
    finally:
        d.close()
