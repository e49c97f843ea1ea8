"""Radiology-style reports written from the drawn lesions, so every assertion is true by construction.

Rules that keep the text parseable by a rule-based labeller (SARLE) and exactly consistent with the
labels:
- every positive label is asserted at least once, with its side ("right", "left") or lobe, and
  nothing absent is asserted; a negated mention ("No pleural effusion.") never counts;
- one sentence only joins findings at the same location (an effusion with the atelectasis beside
  it, cardiomegaly with pericardial fluid), or negated ones ("No pleural effusion or pneumothorax.");
- hedged findings ("Probable ...", "likely ...") are present findings;
- vocabulary that would make a labeller find a label the phantom does not draw is never used
  (e.g. "opacity", "density", "plaque", "scattered", "lesion", "linear", "dilated", "disease").
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ctplatform.phantom.lesions import Lesion

LOBE_WORDS = {"RUL": "right upper lobe", "RML": "right middle lobe", "RLL": "right lower lobe",
              "LUL": "left upper lobe", "LLL": "left lower lobe"}


def _size_word(depth_mm: float) -> str:
    return "small" if depth_mm < 22 else ("moderate" if depth_mm < 34 else "large")


def _cap(s: str) -> str:
    return s[0].upper() + s[1:]


def _both(words: list[str]) -> str:
    return " and ".join(words) if len(words) <= 2 else ", ".join(words[:-1]) + " and " + words[-1]


_LUNG_KINDS = ("nodule", "mass", "consolidation", "groundglass", "emphysema", "atelectasis", "effusion", "pneumothorax")
Findings = dict[str, list[Lesion]]  # lesion kind -> the scan's lesions of that kind


@dataclass
class _Report:
    """A report being written: its two sections, and the generator every wording choice draws from
    (always in the same order, so a seed gives the same report)."""

    rng: np.random.Generator
    findings: list[str] = field(default_factory=list)
    impression: list[str] = field(default_factory=list)

    def choose(self, options: list[str]) -> str:
        return options[int(self.rng.integers(len(options)))]

    def text(self) -> str:
        lines = ["FINDINGS:", " ".join(self.findings), "", "IMPRESSION:"]
        lines += [f"{i}. {s}" for i, s in enumerate(self.impression, 1)]
        return "\n".join(lines)


def write_report(lesions: list[Lesion], cardiomegaly: bool, pericardial_mm: float, rng: np.random.Generator) -> str:
    """FINDINGS and IMPRESSION sections for one scan, written region by region as a radiologist reads."""
    by = {les.kind: [x for x in lesions if x.kind == les.kind] for les in lesions}
    rep = _Report(rng)
    _lungs(rep, by)
    _pleura(rep, by)
    _heart_and_vessels(rep, by, cardiomegaly, pericardial_mm)
    _mediastinum(rep, by)
    _closing(rep)
    return rep.text()


def _lungs(rep: _Report, by: Findings) -> None:
    """Emphysema, nodules and masses, consolidation, ground glass (or clear lungs)."""
    if not any(k in by for k in _LUNG_KINDS):
        rep.findings.append(rep.choose(["The lungs are clear.", "Lungs are clear bilaterally.", "The lungs are well aerated and clear."]))
    for les in by.get("emphysema", []):
        bullae = any(r[0] >= 9.0 for _, r, _ in les.blobs)
        if les.params.get("bilateral_wording"):  # both lungs named: rows right_lung + left_lung
            s = rep.choose(["Centrilobular emphysema, most pronounced in the upper lobes.",
                   "Emphysematous changes are present in both upper lobes.", "Bilateral upper lobe emphysema."])
            if bullae:
                s = s[:-1] + rep.choose([", with apical bullae.", ". Paraseptal bullae are seen at the apices."])
            rep.impression.append(rep.choose(["Bilateral emphysema.", "Emphysema in both lungs."]))
        else:  # no side stated: row lung
            s = rep.choose(["Centrilobular emphysema.", "Moderate centrilobular emphysema with upper lobe predominance.",
                   "Mild emphysema."])
            if bullae:
                s = s[:-1] + rep.choose([", with bullae.", ". Paraseptal emphysema with bullae."])
            rep.impression.append("Emphysema.")
        rep.findings.append(s)
    for les in sorted(by.get("nodule", []), key=lambda x: -x.size_mm):
        d, lobe = int(les.size_mm), LOBE_WORDS[les.lobe]
        rep.findings.append(rep.choose([f"There is a {d} mm nodule in the {lobe}.",
                           f"A {d} mm solid nodule is present in the {lobe}.",
                           f"{_cap(lobe)} nodule measuring {d} mm.",
                           f"A {d / 10:.1f} cm pulmonary nodule is seen in the {lobe}." if d > 10 else f"Small {d} mm nodule in the {lobe}."]))
        rep.impression.append(f"{d} mm {lobe} nodule." if d > 10 else rep.choose([f"Subcentimeter {lobe} nodule.", f"{d} mm {lobe} nodule."]))
    for les in by.get("mass", []):
        cm, lobe = les.size_mm / 10.0, LOBE_WORDS[les.lobe]
        rep.findings.append(rep.choose([f"There is a {cm:.1f} cm mass in the {lobe}.",
                           f"A lobulated mass in the {lobe} measures {cm:.1f} cm.",
                           f"{_cap(lobe)} mass measuring {cm:.1f} cm."]))
        rep.impression.append(f"{cm:.1f} cm {lobe} mass.")
    if "nodule" not in by and "mass" not in by and any(k in by for k in _LUNG_KINDS):
        rep.findings.append(rep.choose(["No pulmonary nodules.", "No suspicious pulmonary nodule or mass."]))
    for les in by.get("consolidation", []):
        lobe = LOBE_WORDS[les.lobe]
        rep.findings.append(rep.choose([f"Consolidation in the {lobe} with air bronchograms.",
                           f"There is consolidation of the {lobe}.",
                           f"Probable consolidation in the {lobe}."]))
        rep.impression.append(f"{_cap(lobe)} consolidation.")
    if "consolidation" not in by and any(k in by for k in _LUNG_KINDS):
        rep.findings.append(rep.choose(["No focal consolidation.", "There is no consolidation."]))
    for les in by.get("groundglass", []):
        where = _both([LOBE_WORDS[lb] for lb in les.params["lobes"]])
        rep.findings.append(rep.choose([f"Patchy ground-glass attenuation in the {where}.",
                           f"Areas of ground-glass attenuation are seen in the {where}.",
                           f"There is ground-glass attenuation in the {where}."]))
        rep.impression.append(f"Ground-glass attenuation in the {where}.")


def _pleura(rep: _Report, by: Findings) -> None:
    """Effusions (with adjacent atelectasis where both are present), atelectasis, pneumothorax."""
    effusions = by.get("effusion", [])
    atel = by.get("atelectasis", [])
    eff_sides = {s: les.params["depth"][s] for les in effusions for s in les.sides}
    atel_sides = [s for les in atel for s in les.sides]
    joined: set[str] = set()
    for side, depth in eff_sides.items():
        size = _size_word(depth)
        if side in atel_sides and rep.rng.random() < 0.6:
            rep.findings.append(rep.choose([f"{_cap(size)} {side} pleural effusion with adjacent compressive atelectasis.",
                               f"There is a {size} {side} pleural effusion with associated atelectasis."]))
            joined.add(side)
        else:
            rep.findings.append(rep.choose([f"{_cap(size)} {side} pleural effusion.", f"There is a {size} {side} pleural effusion.",
                               f"Probable {size} {side} pleural effusion."]))
        rep.impression.append(f"{_cap(size)} {side} pleural effusion.")
    rest = [s for s in atel_sides if s not in joined]
    if len(rest) == 2:
        rep.findings.append(rep.choose(["Dependent atelectasis in the right lower lobe and left lower lobe.",
                           "Atelectasis at the right and left lung bases.", "Bibasilar atelectasis."]))
    elif rest:
        rep.findings.append(rep.choose([f"Dependent atelectasis in the {rest[0]} lower lobe.",
                           f"Subsegmental atelectasis at the {rest[0]} lung base.",
                           f"Findings likely represent atelectasis in the {rest[0]} lower lobe."]))
    for les in by.get("pneumothorax", []):
        size = "small" if les.size_mm < 22 else "moderate"
        rep.findings.append(rep.choose([f"{_cap(size)} {les.side} pneumothorax.", f"There is a {size} {les.side} pneumothorax.",
                           f"A {size} pneumothorax is present on the {les.side}."]))
        rep.impression.append(f"{_cap(size)} {les.side} pneumothorax.")
    if not effusions and "pneumothorax" not in by:
        rep.findings.append(rep.choose(["No pleural effusion or pneumothorax.", "There is no pleural effusion or pneumothorax."]))
    elif not effusions:
        rep.findings.append("No pleural effusion.")
    elif "pneumothorax" not in by:
        rep.findings.append("No pneumothorax.")


def _heart_and_vessels(rep: _Report, by: Findings, cardiomegaly: bool, pericardial_mm: float) -> None:
    """Heart size, pericardial effusion, aortic calcification."""
    peri_size = "small" if pericardial_mm < 11 else "moderate"
    if cardiomegaly and pericardial_mm > 0:
        rep.findings.append(rep.choose([f"Cardiomegaly with a {peri_size} pericardial effusion.",
                           f"The heart is enlarged, with a {peri_size} pericardial effusion."]))
    elif cardiomegaly:
        rep.findings.append(rep.choose(["Cardiomegaly without pericardial effusion.", "The heart is enlarged. No pericardial effusion.",
                           "Mild cardiomegaly. No pericardial effusion."]))
    elif pericardial_mm > 0:
        rep.findings.append(rep.choose([f"Heart size is normal. {_cap(peri_size)} pericardial effusion.",
                           f"There is a {peri_size} pericardial effusion. The heart is normal in size."]))
    else:
        rep.findings.append(rep.choose(["The heart is normal in size without pericardial effusion.",
                           "Heart size is normal. No pericardial effusion."]))
    if cardiomegaly:
        rep.impression.append("Cardiomegaly.")
    if pericardial_mm > 0:
        rep.impression.append(f"{_cap(peri_size)} pericardial effusion.")
    if "plaque" in by:
        rep.findings.append(rep.choose(["Atherosclerotic calcification of the thoracic aorta.",
                           "Moderate atherosclerotic calcifications of the aortic arch and descending aorta.",
                           "Atherosclerosis of the thoracic aorta with mural calcifications."]))
        rep.impression.append("Aortic atherosclerosis.")
    elif "calcification" in by:
        rep.findings.append(rep.choose(["Mild calcification of the aortic arch.", "A few calcifications in the descending aorta.",
                           "Calcification of the thoracic aorta."]))
    else:
        rep.findings.append(rep.choose(["The thoracic aorta is normal in caliber without calcification.",
                           "The aorta is normal in caliber. No aortic calcification."]))


def _mediastinum(rep: _Report, by: Findings) -> None:
    """Lymph nodes."""
    for les in by.get("nodes", []):
        largest = int(np.argmax(les.params["sizes"]))
        st, d = les.params["stations"][largest], les.params["sizes"][largest]
        rep.findings.append(rep.choose([f"Mediastinal lymphadenopathy, the largest a {d} mm {st} lymph node.",
                           f"Enlarged mediastinal lymph nodes, including a {st} node measuring {d} mm.",
                           f"There is mediastinal lymphadenopathy with a {d} mm {st} lymph node."]))
        rep.impression.append("Mediastinal lymphadenopathy.")
    if "nodes" not in by:
        rep.findings.append(rep.choose(["No mediastinal lymphadenopathy.", "No enlarged mediastinal or hilar lymph nodes."]))


def _closing(rep: _Report) -> None:
    """Airways and bones; an impression for a scan without findings."""
    rep.findings.append(rep.choose(["The central airways are patent.", "The trachea and main bronchi are patent."]))
    rep.findings.append(rep.choose(["Osseous structures are unremarkable.", "No acute osseous abnormality.",
                       "The visualized upper abdomen is unremarkable."]))
    if not rep.impression:
        rep.impression.append(rep.choose(["No acute cardiopulmonary abnormality.", "Normal CT of the chest."]))
