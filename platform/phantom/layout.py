"""Where a phantom cohort keeps its files: the one description of a cohort folder.

    OUT/scans/<id>.nii.gz            int16 HU, varied orientation/spacing/slice count, true affine
    OUT/truth/<id>.nii.gz            uint8 organ codes (anatomy.ORGAN_CODES) in the scan's own grid
    OUT/truth/<id>_lesions.nii.gz    uint16 lesion bits in the scan's grid (truth/lesion_codes.csv), and
                                     the confounder region's bit in a confounded cohort
    OUT/truth/<id>.json              per-scan record (written last: a scan with it is finished)
    OUT/scans.csv                    volume_id, path, format, split, truth, truth_codes, confounder, ...
                                     (ingest listing: ingest carries each scan's truth into the store)
    OUT/labels.csv                   volume_id, abnormality, location, value, split, confounder_value
    OUT/reports.csv                  volume_id, report
    OUT/cohort.json                  the generation parameters
    OUT/failed.csv                   scans that could not be made (volume_id, seed, error); a re-run retries them
    OUT/preview/<id>.png             with --preview
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class CohortLayout:
    """The paths of one cohort folder `root` (see the module docstring)."""

    root: Path

    def __init__(self, root: str | Path) -> None:
        object.__setattr__(self, "root", Path(root))

    # folders
    @property
    def scans_dir(self) -> Path:
        return self.root / "scans"

    @property
    def truth_dir(self) -> Path:
        return self.root / "truth"

    @property
    def preview_dir(self) -> Path:
        return self.root / "preview"

    # per scan
    @staticmethod
    def scan_relpath(volume_id: str) -> str:
        """The scan's path relative to the cohort, as the listing (scans.csv) gives it."""
        return f"scans/{volume_id}.nii.gz"

    def scan(self, volume_id: str) -> Path:
        return self.root / self.scan_relpath(volume_id)

    def organs(self, volume_id: str) -> Path:
        return self.truth_dir / f"{volume_id}.nii.gz"

    def lesions(self, volume_id: str) -> Path:
        return self.truth_dir / f"{volume_id}_lesions.nii.gz"

    def record(self, volume_id: str) -> Path:
        return self.truth_dir / f"{volume_id}.json"

    def preview(self, volume_id: str) -> Path:
        return self.preview_dir / f"{volume_id}.png"

    # the cohort's tables
    @property
    def listing(self) -> Path:
        return self.root / "scans.csv"

    @property
    def labels(self) -> Path:
        return self.root / "labels.csv"

    @property
    def reports(self) -> Path:
        return self.root / "reports.csv"

    @property
    def params(self) -> Path:
        return self.root / "cohort.json"

    @property
    def failed(self) -> Path:
        return self.root / "failed.csv"

    @property
    def lesion_codes(self) -> Path:
        return self.truth_dir / "lesion_codes.csv"
