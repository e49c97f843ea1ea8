"""make_phantom: exact label/mask/report consistency, anatomy in place, HU, determinism, requests."""

from __future__ import annotations

import numpy as np
import pytest

from ctplatform.labels import LOCATION_GROUP, all_labels, encode_volume_labels
from ctplatform.phantom.anatomy import ORGAN_CODES
from ctplatform.phantom.findings import SUPPORTED
from ctplatform.phantom.generate import SIZES, Confounder, make_phantom, render
from tests.phantom.reportcheck import FORBIDDEN, asserted

MEDIASTINAL = {ORGAN_CODES[k] for k in ("heart", "great_vessels", "mediastinum", "airways")}
SIDE = {"right_lung": ORGAN_CODES["right_lung"], "left_lung": ORGAN_CODES["left_lung"]}
ALL_FINDINGS = {k: True for k in SUPPORTED}


def positives(ph) -> set[tuple[str, str]]:
    names = {(lab.abnormality, lab.group): lab.name for lab in all_labels()}
    return {(names[(a, LOCATION_GROUP[loc])], loc) for a, loc, v in ph.label_rows if v}


@pytest.fixture(scope="module")
def demo_all():
    """Every finding at once, at demo size (the case where overlaps and crowding are worst)."""
    return make_phantom(11, "demo", dict(ALL_FINDINGS, lung_pneumothorax={"side": "left"}, lung_pleural_effusion={"side": "right"}))


@pytest.fixture(scope="module")
def normal():
    return make_phantom(5, "demo", {})


def check_consistent(ph) -> None:
    rows = positives(ph)
    labels = {lab for lab, _ in rows}
    # label positive <=> lesion mask non-empty
    assert labels == set(ph.lesions), (labels, set(ph.lesions))
    for name, mask in ph.lesions.items():
        assert mask.dtype == bool and mask.shape == ph.hu.shape and mask.any(), name
    # report asserts exactly the positive (label, location) pairs; negations never count
    assert asserted(ph.report) == rows, (ph.report, rows)
    # 80 labels, one row per location for positives, group-location zero rows for negatives
    keys = {(a, LOCATION_GROUP[loc]) for a, loc, _ in ph.label_rows}
    assert len(keys) == 80
    y, bits = encode_volume_labels(ph.label_rows)
    assert int(y.sum()) == len(labels)
    # each lesion lies inside the organ its label allows, on the side the rows give
    for name, mask in ph.lesions.items():
        organs = ph.organs[mask]
        if name.startswith("lung_"):
            sides = {loc for lab, loc in rows if lab == name}
            allowed = set(SIDE.values()) if "lung" in sides else {SIDE[s] for s in sides}
            assert set(np.unique(organs)) <= allowed, (name, np.unique(organs), sides)
            for s in sides - {"lung"}:
                assert (organs == SIDE[s]).any(), (name, s)
        else:
            assert set(np.unique(organs)) <= MEDIASTINAL, (name, np.unique(organs))


def test_all_findings_consistent(demo_all):
    assert set(demo_all.lesions) == set(SUPPORTED)
    check_consistent(demo_all)
    assert not any(w in demo_all.report.lower() for w in FORBIDDEN)


@pytest.mark.parametrize("seed", range(12))
def test_sampled_findings_consistent(seed):
    ph = make_phantom(seed, "tiny")
    check_consistent(ph)
    assert not any(w in ph.report.lower() for w in FORBIDDEN)


def test_normal_scan(normal):
    assert normal.lesions == {}
    assert all(v == 0 for _, _, v in normal.label_rows)
    check_consistent(normal)
    assert "No pleural effusion" in normal.report or "no pleural effusion" in normal.report


def test_tissue_hu(normal):
    hu, org = normal.hu.astype(np.float32), normal.organs
    lung = np.isin(org, (1, 2)) & (hu < -500)  # parenchyma (vessels and airways excluded)
    assert -900 < np.median(hu[lung]) < -800
    assert np.isin(org, (1, 2)).sum() > 0.6 * lung.sum()  # vessels are texture, not the bulk
    assert -130 < np.median(hu[org == ORGAN_CODES["subcutaneous_fat"]]) < -60
    assert 20 < np.median(hu[org == ORGAN_CODES["heart"]]) < 60  # non-contrast blood and myocardium
    assert 20 < np.median(hu[org == ORGAN_CODES["great_vessels"]]) < 60
    assert np.percentile(hu[org == ORGAN_CODES["bone"]], 75) > 300
    assert np.median(hu[org == ORGAN_CODES["background"]]) < -950
    assert np.median(hu[org == ORGAN_CODES["airways"]]) < -300  # the trachea is air
    # scanner noise: the standard deviation in homogeneous fat is that of a real scanner
    fat = hu[org == ORGAN_CODES["subcutaneous_fat"]]
    assert 5 < fat.std() < 45


def test_lungs_threshold_like_real_lungs(normal):
    """Under HU < -300 each lung is one large connected dark region (PARTITION's first step)."""
    from scipy import ndimage

    dark = normal.hu < -300
    for code in (1, 2):
        lung = normal.organs == code
        lab, n = ndimage.label(dark & lung)
        sizes = np.bincount(lab.ravel())[1:]
        assert sizes.max() > 0.95 * (dark & lung).sum()
        assert (dark & lung).sum() > 0.85 * lung.sum()


def test_anatomy_in_place(normal):
    """Store orientation I-P-L: heart left of the midline, spine behind it, apices above the heart."""
    org = normal.organs
    z, y, x = (np.argwhere(org == ORGAN_CODES["heart"]).mean(axis=0))
    rz, ry, rx = np.argwhere(org == ORGAN_CODES["right_lung"]).mean(axis=0)
    lz, ly, lx = np.argwhere(org == ORGAN_CODES["left_lung"]).mean(axis=0)
    assert rx < x and rx < lx  # right lung at low x (x grows toward the patient's left)
    mid = (rx + lx) / 2
    assert x > mid  # heart on the patient's left
    bone = np.argwhere(org == ORGAN_CODES["bone"])
    spine = bone[np.abs(bone[:, 2] - mid) < 5]
    assert np.median(spine[:, 1]) > y  # spine posterior to the heart
    apex = np.argwhere(np.isin(org, (1, 2)))[:, 0].min()
    assert apex < z  # apices above (toward the head of) the heart


def test_deterministic_and_seed_dependent():
    a, b = make_phantom(3, "tiny"), make_phantom(3, "tiny")
    assert np.array_equal(a.hu, b.hu) and np.array_equal(a.organs, b.organs)
    assert a.report == b.report and a.label_rows == b.label_rows
    assert a.lesions.keys() == b.lesions.keys() and all(np.array_equal(a.lesions[k], b.lesions[k]) for k in a.lesions)
    c = make_phantom(4, "tiny")
    assert a.hu.shape != c.hu.shape or not np.array_equal(a.hu, c.hu)


def test_same_patient_at_every_size():
    """Anatomy and lesions are placed on a fixed plan: the size changes voxels, not the patient."""
    t, d = make_phantom(8, "tiny"), make_phantom(8, "demo")
    assert t.report == d.report and t.label_rows == d.label_rows
    assert t.fat_mm == d.fat_mm


def test_slab_rendering_is_seamless():
    """Rendering slab by slab (with halos) gives exactly the volume rendered in one piece."""
    import ctplatform.phantom.generate as gen

    captured = {}
    real = gen.render

    def spy(p, lesions, grid, scanner, slab):
        captured.update(p=p, lesions=lesions, grid=grid, scanner=scanner)
        return real(p, lesions, grid, scanner, slab)

    gen.render = spy
    try:
        make_phantom(2, "tiny", {"lung_nodule": True, "lung_pleural_effusion": True})
    finally:
        gen.render = real
    one = render(captured["p"], captured["lesions"], captured["grid"], captured["scanner"], 10_000)
    many = render(captured["p"], captured["lesions"], captured["grid"], captured["scanner"], 7)
    assert np.array_equal(one[0], many[0]) and np.array_equal(one[1], many[1])
    assert one[2].keys() == many[2].keys() and all(np.array_equal(one[2][k], many[2][k]) for k in one[2])


def test_requested_nodule_lobe_and_size():
    ph = make_phantom(21, "demo", {"lung_nodulegr1cm": {"lobe": "RUL", "size_mm": 14}})
    assert set(ph.lesions) == {"lung_nodule", "lung_nodulegr1cm"}
    assert "right upper lobe" in ph.report and ("14 mm" in ph.report or "1.4 cm" in ph.report)
    assert positives(ph) == {("lung_nodule", "right_lung"), ("lung_nodulegr1cm", "right_lung")}
    mask = ph.lesions["lung_nodule"]
    vol = mask.sum() * np.prod(ph.spacing_mm)
    assert 0.5 < vol / (np.pi / 6 * 14**3) < 1.6  # a 14 mm sphere, give or take lobulation and voxels
    zc = np.argwhere(mask)[:, 0].mean() / ph.hu.shape[0]
    assert zc < 0.55  # upper lobe: upper half of the scan
    check_consistent(ph)


def test_small_nodule_is_not_gr1cm():
    ph = make_phantom(22, "tiny", {"lung_nodule": {"side": "left", "size_mm": 6}})
    assert set(ph.lesions) == {"lung_nodule"}
    assert positives(ph) == {("lung_nodule", "left_lung")}
    check_consistent(ph)


def test_bilateral_findings_rows():
    ph = make_phantom(23, "tiny", {"lung_pleural_effusion": {"sides": ["right", "left"]}, "lung_emphysema": True})
    rows = positives(ph)
    assert {("lung_pleural_effusion", "right_lung"), ("lung_pleural_effusion", "left_lung"), ("lung_emphysema", "lung")} <= rows
    check_consistent(ph)


def test_confounders_change_only_the_feature():
    thin = make_phantom(9, "tiny", {}, Confounder("fat", 5.0))
    thick = make_phantom(9, "tiny", {}, ("fat", 30.0))
    marked = make_phantom(9, "tiny", {}, Confounder("marker", 1.0))
    assert thick.confounder_mask().sum() > 2.5 * thin.confounder_mask().sum()
    assert thin.report == thick.report == marked.report
    m = marked.confounder_mask()
    assert m.any() and not (make_phantom(9, "tiny", {}).organs == ORGAN_CODES["marker"]).any()
    assert marked.hu[m].max() > 1000  # a dense marker, outside the body
    assert not np.isin(marked.organs[m], (1, 2, 3, 4, 5)).any()


def test_store_organs_codes(normal):
    st = normal.store_organs()
    assert set(np.unique(st)) == {0, 1, 2, 3}
    assert np.array_equal(st == 1, normal.organs == 1) and np.array_equal(st == 2, normal.organs == 2)


def test_bad_requests_fail_clearly():
    with pytest.raises(ValueError, match="does not draw"):
        make_phantom(0, "tiny", {"heart_transplant": True})
    with pytest.raises(KeyError):
        make_phantom(0, "tiny", {"lung_unicorn": True})
    with pytest.raises(ValueError, match="lobe"):
        make_phantom(0, "tiny", {"lung_nodule": {"lobe": "XYZ"}})
    with pytest.raises(ValueError, match="10 mm"):
        make_phantom(0, "tiny", {"lung_nodule": {"size_mm": 25}})
    with pytest.raises(ValueError, match="unknown size"):
        make_phantom(0, "huge")


def test_sizes_geometry():
    d = make_phantom(1, "demo", {})
    assert d.hu.shape[1:] == (224, 224) and 1.4 < d.spacing_mm[1] < 1.75 and 80 <= d.hu.shape[0] <= 125
    assert SIZES["paper"].matrix == 512 and max(SIZES["paper"].fov_mm) / 512 < 0.85


def test_lesions_are_visible(demo_all):
    """Every lesion stands out from the tissue around it (learnable at demo size), none hides another."""
    from scipy import ndimage

    hu = demo_all.hu.astype(np.float32)
    for name, mask in demo_all.lesions.items():
        if name == "heart_cardiomegaly":
            continue
        ring = ndimage.binary_dilation(mask, iterations=2) & ~mask & np.isin(demo_all.organs, np.unique(demo_all.organs[mask]))
        contrast = hu[mask].mean() - hu[ring].mean()
        assert abs(contrast) > 25, (name, contrast)


def test_cardiomegaly_enlarges_the_same_patient():
    base = make_phantom(31, "tiny", {})
    big = make_phantom(31, "tiny", {"heart_cardiomegaly": True})
    heart = ORGAN_CODES["heart"]
    assert (big.organs == heart).sum() > 1.6 * (base.organs == heart).sum()
    assert big.fat_mm == base.fat_mm and big.hu.shape == base.hu.shape  # the rest of the patient is unchanged
    assert np.array_equal(big.lesions["heart_cardiomegaly"], big.organs == heart)


def test_platform_sarle_reads_the_reports_exactly():
    """The platform's rule-based labeller recovers exactly the truth rows from phantom reports."""
    labeler = pytest.importorskip("ctplatform.partition.sarle.labeler")
    for seed in range(16):
        ph = make_phantom(3000 + seed, "tiny", None if seed % 4 else ALL_FINDINGS)
        truth = {(a, loc) for a, loc, v in ph.label_rows if v}
        assert labeler.label_report(ph.report) == truth, ph.report


def test_zmarker_lies_above_every_lung_slice_beside_the_fat_confounder():
    """The separable confounder: a dense marker in slices no lung reaches, drawn with the fat one."""
    both = make_phantom(9, "tiny", {}, [Confounder("fat", 30.0), Confounder("zmarker", 1.0)])
    plain = make_phantom(9, "tiny", {}, Confounder("fat", 30.0))
    m = both.organs == ORGAN_CODES["marker"]
    lung = np.isin(both.organs, (ORGAN_CODES["right_lung"], ORGAN_CODES["left_lung"]))
    assert m.any() and both.hu[m].max() > 1000
    assert np.nonzero(m.any(axis=(1, 2)))[0].max() < np.nonzero(lung.any(axis=(1, 2)))[0].min()
    assert both.report == plain.report and both.marker and not plain.marker
    assert both.fat_mm == plain.fat_mm == 30.0
