"""A writer job over a store, as ingest runs one, for fault tests (concurrency, kill -9).

    python -m tests.store_writer STORE SOURCE N [--start K] [--hold SECONDS] [--at TIME] [--reverse]

writes volumes item-K .. item-(N-1) whose every voxel names SOURCE and the slice (so a volume mixing
two writers, or with missing slices, is told from a whole one), each under its lease, records its
manifest row, and prints `wrote <id>` after each (`skipped <id>` when a verified volume from the same
source is there, `refused <id> <message>` when another job holds it). --hold sleeps inside the
lease before writing, widening the window in which writers collide.
"""

from __future__ import annotations

import argparse
import hashlib
import time

import numpy as np

from ctplatform.store import LeaseHeldError, Store

SHAPE = (30, 16, 16)
CHUNK_SLICES = 6


def source_value(source: str) -> int:
    return int(hashlib.sha256(source.encode()).hexdigest()[:3], 16)  # 0..4095


def volume_for(source: str) -> np.ndarray:
    """Voxel = source value * 100 + slice index: every slice says who wrote it and where it belongs."""
    z = np.arange(SHAPE[0], dtype=np.int32)[:, None, None]
    return np.broadcast_to((source_value(source) % 300) * 100 + z, SHAPE).astype(np.int16)


def source_sha(source: str) -> str:
    return hashlib.sha256(source.encode()).hexdigest()


def row_for(volume_id: str, source: str, status: str = "ok") -> dict:
    return {"volume_id": volume_id, "source": source, "status": status, "sha256": source_sha(source),
            "shape": list(SHAPE), "error": ""}


def write_one(store: Store, volume_id: str, source: str, hold: float = 0.0) -> str:
    """'wrote', 'skipped' or 'refused <message>'."""
    try:
        with store.lease(store.volume_path(volume_id)):
            if store.has_volume(volume_id, source_sha(source)):
                store.write_record("manifest", row_for(volume_id, source))
                return "skipped"
            time.sleep(hold)
            store.write_volume(volume_id, volume_for(source), {"source_sha256": source_sha(source)},
                               chunk_slices=CHUNK_SLICES)
            store.write_record("manifest", row_for(volume_id, source))
            return "wrote"
    except LeaseHeldError as e:
        return f"refused {e}"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("store")
    p.add_argument("source")
    p.add_argument("n", type=int)
    p.add_argument("--start", type=int, default=0)
    p.add_argument("--hold", type=float, default=0.0)
    p.add_argument("--reverse", action="store_true", help="last id first (writers meet in the middle)")
    p.add_argument("--at", type=float, default=0.0, help="start at this time.time() (writers start together)")
    a = p.parse_args()
    store = Store(a.store)
    store.group
    time.sleep(max(0.0, a.at - time.time()))
    order = range(a.start, a.n)
    for i in reversed(order) if a.reverse else order:
        vid = f"item-{i}"
        out = write_one(store, vid, a.source, a.hold)
        word, _, rest = out.partition(" ")
        print(f"{word} {vid} {rest}".rstrip(), flush=True)
    store.sync_table("manifest")


if __name__ == "__main__":
    main()
