"""Moved to the floor: `ctplatform.scans.preprocess` (ingest and predict share one read path). This name
stays an alias of that module so existing imports keep working; new code imports ctplatform.scans."""

import sys

from ctplatform.scans import preprocess as _moved

sys.modules[__name__] = _moved
