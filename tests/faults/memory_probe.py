"""Peak memory of refusing one file, measured in a fresh process (run as a script).

    python -m tests.faults.memory_probe FILE  ->  JSON {"refused", "reason", "file_bytes",
        "tracemalloc_peak_bytes", "rss_before_bytes", "rss_peak_bytes", "rss_increase_bytes"}

The process imports everything first, records its peak RSS, then reads the file: the increase of the
peak is what the read took (ru_maxrss is a high-water mark, so nothing transient is missed).
"""

from __future__ import annotations

import json
import resource
import sys
import tracemalloc
from pathlib import Path


def probe(path: Path) -> dict:
    import nibabel  # noqa: F401  - imported before the baseline
    import numpy  # noqa: F401

    from ctplatform.ingest.readers import read_scan
    from ctplatform.ingest.scan import ScanError

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    tracemalloc.start()
    refused, reason = False, ""
    try:
        read_scan(path)
    except ScanError as e:
        refused, reason = True, str(e)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "refused": refused,
        "reason": reason,
        "file_bytes": path.stat().st_size,
        "tracemalloc_peak_bytes": peak,
        "rss_before_bytes": before,
        "rss_peak_bytes": after,
        "rss_increase_bytes": after - before,
    }


if __name__ == "__main__":
    print(json.dumps(probe(Path(sys.argv[1]))))
