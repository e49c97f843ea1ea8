"""Pseudonymous volume ids for scans whose only name is a folder or file name.

Hospital exports often name folders after the patient (`DOE_JOHN_MRN123_ct_chest_1901-02-03`).
With a key (`ingest.pseudonymise_key`, a file kept outside the store, or the environment variable
`CTPLATFORM_PSEUDONYM_KEY_FILE`), such ids become `p` + 24 hex digits of HMAC-SHA256(key, relative
path): stable across re-runs (resume and skip still work), not reversible without the key, and the
folder name never reaches a volume id, a Zarr path, the manifest's `source` column or an error.

    key = load_key(cfg.ingest.pseudonymise_key, cfg.store_path)
    volume_id = pseudonym(key, "site_a/DOE_JOHN_MRN123_ct_chest_1901-02-03")
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from pathlib import Path

ENV_KEY_FILE = "CTPLATFORM_PSEUDONYM_KEY_FILE"
#: What the manifest's `source` column holds for a pseudonymised row.
PSEUDONYMISED_SOURCE = "(pseudonymised)"
#: Minimum key length: a short key could be guessed, and the hash with it.
MIN_KEY_BYTES = 16
_FILE_NAME = re.compile(r"[^\s/:()'\",;]+\.(?:dcm|nii\.gz|nii|npz|ima)\b", re.IGNORECASE)


def load_key(key_file: str | None, store_root: str | None = None) -> bytes | None:
    """The key from `key_file` (or $CTPLATFORM_PSEUDONYM_KEY_FILE); None when neither is set.

    Refused (ValueError) when missing, shorter than 16 bytes, or inside the store (the key would
    travel with the data it protects).
    """
    key_file = key_file or os.environ.get(ENV_KEY_FILE) or None
    if not key_file:
        return None
    path = Path(key_file).expanduser()
    if store_root and "://" not in store_root:
        store = Path(store_root).expanduser().resolve()
        if path.resolve().is_relative_to(store):
            raise ValueError("the pseudonymisation key file lies inside the store; keep it outside (it would travel with the data)")
    if not path.is_file():
        raise ValueError(f"pseudonymisation key file {path} does not exist (create one: head -c 32 /dev/urandom > FILE)")
    key = path.read_bytes().strip()
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"pseudonymisation key file {path} holds {len(key)} bytes; use at least {MIN_KEY_BYTES}")
    return key


def pseudonym(key: bytes, name: str) -> str:
    """'p' + 24 hex digits of HMAC-SHA256(key, name): a valid store id revealing nothing of `name`."""
    return "p" + hmac.new(key, name.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()[:24]


def scrub(text: str, path: str | Path, private: str) -> str:
    """`text` with the scan's path, each component of `private` (its names below the input root,
    '/'-joined) and every scan file name replaced by placeholders."""
    out = text.replace(str(path), "<source>")
    for part in sorted({p for p in private.split("/") if len(p) >= 3}, key=len, reverse=True):
        out = out.replace(part, "<name>")
    return _FILE_NAME.sub("<file>", out)
