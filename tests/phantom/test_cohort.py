"""Cohorts on disk: true affines, truth files, tables the other stages read, confounded splits, resume, CLI."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from ctplatform.labels import label_index
from ctplatform.phantom.anatomy import ORGAN_CODES
from ctplatform.phantom.cohort import ConfounderSpec, assign, generate_cohort, volume_id
from ctplatform.phantom.generate import Confounder, make_phantom
from ctplatform.phantom.nifti import CONFOUNDER_BIT, LESION_BITS, read_truth

N = 5


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("cohort")
    listing = generate_cohort(out, N, seed=3, size="tiny", confounder="fat:great_vessel_atherosclerosis:0.8",
                              workers=2, preview=1, progress=False)
    return out, listing


def regenerate(row: pd.Series, seed: int = 3, spec: str = "fat:great_vessel_atherosclerosis:0.8"):
    """The in-memory phantom a cohort row was written from (assignment is a pure function)."""
    a = assign(N, seed, ConfounderSpec.parse(spec), None, None)[int(row["volume_id"].split("-")[1])]
    conf = Confounder(a["confounder_kind"], a["confounder_value"])
    return make_phantom(a["seed"], "tiny", a["findings"], conf)


def ras_to_ipl(img) -> np.ndarray:
    """Independent of the generator's code: nibabel's canonical RAS array, flipped into I-P-L."""
    can = nib.as_closest_canonical(img)
    assert nib.aff2axcodes(can.affine) == ("R", "A", "S")
    return np.asanyarray(can.dataobj).transpose(2, 1, 0)[::-1, ::-1, ::-1]


def test_tables(cohort):
    out, listing = cohort
    assert list(listing["volume_id"]) == [volume_id(3, i) for i in range(N)]
    scans = pd.read_csv(out / "scans.csv", dtype={"volume_id": str})
    assert {"volume_id", "path", "format", "split", "confounder_value", "fat_mm"} <= set(scans.columns)
    assert set(scans["format"]) == {"nifti"} and "shifted" in set(scans["split"])
    assert len(set(scans["orientation"])) > 1  # orientations vary
    labels = pd.read_csv(out / "labels.csv")
    assert {"volume_id", "abnormality", "location", "value", "split"} <= set(labels.columns)
    for vid, g in labels.groupby("volume_id"):
        idx = {label_index(a, loc) for a, loc in zip(g["abnormality"], g["location"])}
        assert idx == set(range(80)), vid
        assert g["split"].nunique() == 1
    from ctplatform.phantom.cohort import labels_table

    truth = labels_table(out)
    assert list(truth.columns) == ["volume_id", "abnormality", "location", "value"] and len(truth) == len(labels)
    assert set(labels_table(out, "shifted")["volume_id"]) == set(scans.loc[scans["split"] == "shifted", "volume_id"])
    reports = pd.read_csv(out / "reports.csv")
    assert list(reports["volume_id"]) == list(listing["volume_id"]) and reports["report"].str.contains("FINDINGS").all()
    codes = pd.read_csv(out / "truth" / "lesion_codes.csv")
    lesion_rows = codes[codes["label"] != "confounder"]
    assert dict(zip(lesion_rows["label"], lesion_rows["bit"])) == LESION_BITS
    # the confounder region is a truth bit too, named as ingest's codes convention reads it
    conf = codes[codes["label"] == "confounder"].iloc[0]
    assert (conf["bit"], conf["kind"], conf["target"]) == (CONFOUNDER_BIT, "fat", "great_vessel_atherosclerosis")
    assert list(scans["truth"]) == [f"truth/{v}_lesions.nii.gz" for v in scans["volume_id"]]
    assert (scans["truth_codes"] == "truth/lesion_codes.csv").all()
    assert (out / "preview" / f"{volume_id(3, 0)}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_files_state_the_true_orientation(cohort):
    """Scans, organ truth and lesion truth reoriented by nibabel alone equal the generated phantom."""
    out, listing = cohort
    for _, row in listing.iterrows():
        ph = regenerate(row)
        scan = nib.load(out / row["path"])
        assert "".join(nib.aff2axcodes(scan.affine)) == row["orientation"]
        assert np.array_equal(ras_to_ipl(scan), ph.hu)
        organs = nib.load(out / "truth" / f"{row['volume_id']}.nii.gz")
        assert np.allclose(organs.affine, scan.affine) and np.array_equal(ras_to_ipl(organs), ph.organs)
        org, lesions, spacing = read_truth(out, row["volume_id"])
        assert np.array_equal(org, ph.organs) and np.allclose(spacing, ph.spacing_mm, atol=1e-4)
        assert lesions.keys() == ph.lesions.keys() and all(np.array_equal(lesions[k], ph.lesions[k]) for k in lesions)
        bits = ras_to_ipl(nib.load(out / "truth" / f"{row['volume_id']}_lesions.nii.gz"))
        fat = ph.organs == ORGAN_CODES["subcutaneous_fat"]
        assert fat.any() and np.array_equal((bits >> CONFOUNDER_BIT) & 1 > 0, fat)
        rec = json.loads((out / "truth" / f"{row['volume_id']}.json").read_text())
        assert rec["report"] == ph.report and [tuple(r) for r in rec["label_rows"]] == ph.label_rows


def test_world_anatomy(cohort):
    """In world (RAS) millimetres: heart on the patient's left, spine behind it, apices above it."""
    out, listing = cohort
    for _, row in listing.iterrows():
        img = nib.load(out / "truth" / f"{row['volume_id']}.nii.gz")
        org = np.asanyarray(img.dataobj)

        def centre(mask):
            ijk = np.argwhere(mask)
            return nib.affines.apply_affine(img.affine, ijk)

        heart = centre(org == ORGAN_CODES["heart"]).mean(axis=0)
        right = centre(org == ORGAN_CODES["right_lung"])
        left = centre(org == ORGAN_CODES["left_lung"])
        assert right[:, 0].mean() > left[:, 0].mean()  # RAS x grows toward the patient's right
        assert heart[0] < (right[:, 0].mean() + left[:, 0].mean()) / 2  # heart left of the midline
        bone = centre(org == ORGAN_CODES["bone"])
        mid = (right[:, 0].mean() + left[:, 0].mean()) / 2
        spine = bone[np.abs(bone[:, 0] - mid) < 10]
        assert np.median(spine[:, 1]) < heart[1]  # posterior: smaller A
        assert max(right[:, 2].max(), left[:, 2].max()) > heart[2] + 50  # apices superior


def test_ingest_reads_the_listing(cohort):
    """`ctplatform ingest --input OUT/scans.csv` finds every scan and reads it into the store orientation."""
    discover = pytest.importorskip("ctplatform.ingest.discover")
    readers = pytest.importorskip("ctplatform.ingest.readers")
    out, listing = cohort
    rows = discover.discover(out / "scans.csv")
    assert [r["volume_id"] for r in rows] == list(listing["volume_id"])
    assert all(not r["error"] for r in rows)
    row = listing.iloc[0]
    scan = readers.read_scan(rows[0]["path"], rows[0]["format"] or None)
    assert np.array_equal(scan.hu, regenerate(row).hu.astype(np.float32))


def test_confounder_assignment():
    spec = ConfounderSpec("fat", "great_vessel_atherosclerosis", 0.8)
    rows = assign(400, 1, spec, None, None)
    df = pd.DataFrame([{"split": r["split"], "y": int(spec.label in r["findings"]), "c": r["confounder_value"]} for r in rows])
    assert set(df["split"]) == {"train", "valid", "test", "shifted"}
    for split, g in df.groupby("split"):
        assert 0.4 <= g["y"].mean() <= 0.6, split
        r = np.corrcoef(g["y"], g["c"])[0, 1]
        if split == "shifted":
            assert abs(r) < 0.1, (split, r)  # independent of the label
        else:
            assert r > 0.6, (split, r)  # (1 + 0.8) / 2 = 90% of scans agree
    # atherosclerosis implies calcification: absent targets never keep a carrier
    for r in rows:
        if spec.label not in r["findings"]:
            assert "great_vessel_atherosclerosis" not in r["findings"]
    marker = assign(60, 1, ConfounderSpec.parse("marker:lung_nodule:1.0"), None, None)
    for r in marker:
        if r["split"] != "shifted":
            assert r["confounder_value"] == float("lung_nodule" in r["findings"])
    none = assign(40, 1, ConfounderSpec("fat", strength=0.0), None, None)
    tr = [(int("great_vessel_atherosclerosis" in r["findings"]), r["confounder_value"]) for r in none if r["split"] == "train"]
    y, c = np.array(tr).T
    assert abs(np.mean(c[y == 1] > 18) - np.mean(c[y == 0] > 18)) < 0.2


def test_fat_confounder_is_visible(cohort):
    """The recorded fat thickness is what the image shows (fat voxels along the anterior midline)."""
    out, listing = cohort
    measured = []
    for _, row in listing.iterrows():
        org, _, (sz, sy, sx) = read_truth(out, row["volume_id"])
        zmid = org.shape[0] // 2
        column = org[zmid, :, org.shape[2] // 2]
        measured.append((column == ORGAN_CODES["subcutaneous_fat"]).sum() * sy / 2)  # anterior + posterior
    r = np.corrcoef(measured, listing["fat_mm"])[0, 1]
    assert r > 0.8, (measured, list(listing["fat_mm"]))


def test_resume_and_parameter_guard(tmp_path):
    generate_cohort(tmp_path, 3, seed=5, size="tiny", workers=1, progress=False)
    vid = volume_id(5, 1)
    keep = (tmp_path / "scans" / f"{volume_id(5, 0)}.nii.gz").stat().st_mtime_ns
    (tmp_path / "truth" / f"{vid}.json").unlink()  # as if killed before finishing this scan
    (tmp_path / "scans" / f"{vid}.nii.gz").write_bytes(b"half-written")
    listing = generate_cohort(tmp_path, 3, seed=5, size="tiny", workers=1, progress=False)
    assert len(listing) == 3
    assert (tmp_path / "scans" / f"{volume_id(5, 0)}.nii.gz").stat().st_mtime_ns == keep  # not redone
    assert nib.load(tmp_path / "scans" / f"{vid}.nii.gz").shape  # redone and readable
    with pytest.raises(ValueError, match="different parameters"):
        generate_cohort(tmp_path, 3, seed=6, size="tiny", workers=1, progress=False)


def test_cli(tmp_path):
    from ctplatform.cli import main

    out = tmp_path / "c"
    assert main(["phantom", str(out), "--n", "2", "--size", "tiny", "--seed", "4", "--preview", "1",
                 "--prevalence", "lung_nodule=1.0", "--workers", "1"]) == 0
    labels = pd.read_csv(out / "labels.csv")
    assert labels[(labels["abnormality"] == "nodule") & (labels["value"] == 1)]["volume_id"].nunique() == 2
    assert (out / "preview").is_dir() and len(list((out / "preview").glob("*.png"))) == 1
    assert main(["phantom", str(tmp_path / "d"), "--n", "1", "--size", "tiny", "--confounder", "bogus"]) == 2


def test_a_failing_scan_does_not_stop_the_cohort(tmp_path, monkeypatch):
    import ctplatform.phantom.cohort as cohort_mod

    real = cohort_mod.make_one

    def flaky(out, cohort_seed, row, size, preview):
        if row["index"] == 1:
            raise RuntimeError("simulated generator failure")
        return real(out, cohort_seed, row, size, preview)

    monkeypatch.setattr(cohort_mod, "make_one", flaky)
    listing = generate_cohort(tmp_path, 3, seed=7, size="tiny", workers=1, progress=False)
    assert list(listing["volume_id"]) == [volume_id(7, 0), volume_id(7, 2)] and listing.attrs["failed"] == 1
    failed = pd.read_csv(tmp_path / "failed.csv")
    assert list(failed["volume_id"]) == [volume_id(7, 1)] and "simulated" in failed["error"][0]
    monkeypatch.setattr(cohort_mod, "make_one", real)
    listing = generate_cohort(tmp_path, 3, seed=7, size="tiny", workers=1, progress=False)  # the re-run fills the gap
    assert len(listing) == 3 and pd.read_csv(tmp_path / "failed.csv").empty


def test_scans_of_an_older_truth_format_are_made_again(tmp_path):
    """A cohort written before the confounder bit existed is brought up to date by a re-run."""
    from ctplatform.phantom.cohort import TRUTH_FORMAT

    generate_cohort(tmp_path, 2, seed=8, size="tiny", workers=1, progress=False)
    path = tmp_path / "truth" / f"{volume_id(8, 0)}.json"
    rec = json.loads(path.read_text())
    rec.pop("truth_format")
    path.write_text(json.dumps(rec))
    generate_cohort(tmp_path, 2, seed=8, size="tiny", workers=1, progress=False)
    assert json.loads(path.read_text())["truth_format"] == TRUTH_FORMAT
