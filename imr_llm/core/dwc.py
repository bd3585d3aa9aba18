"""DWC's own vocabulary beside ours: request category / subcategory, drug class, case outcome and
reviewer specialty, as DWC's IMR decision search and yearly reports use them (``dwc-taxonomy.md``).

One table maps our category to DWC's category and default subcategory; finer subcategories are
chosen by the request's own words (first matching rule wins). Medications take DWC's drug class
from ``drugs.DRUGS`` (where DWC is finer than us: Topical Analgesics vs Topical Compounds,
Proton Pump Inhibitors vs H2 Blocker vs GI Agents, Sedative-hypnotics...).
"""
from __future__ import annotations

import re

I = re.IGNORECASE

# our category -> (DWC category, default subcategory, [(pattern, finer subcategory or (category, subcategory))])
CATEGORY_MAP: dict[str, tuple[str, str | None, list[tuple[str, str | tuple[str, str]]]]] = {
    "physical_therapy": ("Rehabilitation", "Physical Therapy/Occupational Therapy (PT/OT)", []),
    "acupuncture": ("Rehabilitation", "Acupuncture", []),
    "chiropractic": ("Rehabilitation", "Chiropractic", []),
    "modality": ("Rehabilitation", "Other Therapies", [(r"electrical\s+(?:muscle\s+)?stimulation|E-?stim|neurostimulation",
                                                        ("DMEPOS", "Electrical Stimulation"))]),
    "psych": ("Psych Services", "Therapies", [(r"evaluation|consult\w*|assessment|testing", "Evaluation & Management")]),
    "injection": ("Injection", "Injection", [(r"facet|medial\s+branch", "Facet Injection")]),
    "imaging": ("Diagnostic Testing", "Imaging / Radiology", []),
    "diagnostic": ("Diagnostic Testing", "Other Diagnostic Tests", [
        (r"\bEMG\b|\bNCV\b|\bNCS\b|nerve\s+conduction|electromyograph|electrodiagnos", "EMG/NCV/NCS"),
        (r"\blabs?\b|laborator|urine|blood|drug\s+(?:screen|test)|\bUDS\b|panel|\bCBC\b|patholog|genetic", "Lab & Pathology")]),
    "dme": ("DMEPOS", "DME", [
        (r"\bTENS\b|H-?wave|interferential|stimulat|\bNMES\b", "Electrical Stimulation"),
        (r"braces?|orthotic|orthosis|splint|supports?\b|insoles?|collar|\bboot\b|prosthe|\bsling\b|binder", "Prosthetics/Orthotics"),
        (r"supplies|electrodes|gloves?|batter(?:y|ies)|pads?\b|wraps?\b", "Supplies")]),
    "medication": ("Pharmaceuticals", None, []),
    "surgery": ("Surgery", "Non-arthroscopic Surgery", [
        (r"assistant\s+surgeon|co-?surgeon|pre-?op|post-?op|anesthesi|hospital\s+stay|inpatient|cold\s+therapy|surgical\s+(?:assistant|facility)",
         "Adjunct Surgical Services"),
        (r"arthroscop", "Arthroscopic Surgery"),
        (r"fusion|laminectom|laminotom|discectom|foraminotom|spinal|spine|lumbar|cervical|thoracic|\bACDF\b|kyphoplast|vertebr|"
         r"\b[CLT]\d", "Spine")]),
    "consultation": ("Evaluation & Management", "Medical Specialties", [
        (r"pre-?\s?op\w*\s+(?:medical\s+)?clearance|medical\s+clearance", ("Surgery", "Adjunct Surgical Services")),
        (r"surg\w*\s+(?:\w+\s+){0,2}?(?:consult|evaluation|eval\b|referral)|(?:consult|evaluation|referral)\s+(?:with|to)\s+(?:an?\s+)?(?:\w+\s+){0,3}?surgeon",
         ("Surgery", "Surgical Consult")),
        (r"dent(?:al|ist)", "Dental Services")]),
    "home_health": ("Home Health", "Home Health", []),
    "program": ("Programs", "Programs", []),
    "transportation": ("Transportation", "Transportation", []),
}
_RULES = {cat: [(re.compile(p, I), sub) for p, sub in rules] for cat, (_, _, rules) in CATEGORY_MAP.items()}

DWC_CATEGORIES = sorted({c for c, _, _ in CATEGORY_MAP.values()} | {"DMEPOS", "Surgery"})


def classify(category: str | None, request: str, dwc_drug_class: str | None = None) -> tuple[str, str | None, int, int] | None:
    """(DWC category, DWC subcategory, start, end) for one item: ``start:end`` are the words in
    ``request`` that chose a finer subcategory, or (-1, -1) when the category alone decided."""
    if category not in CATEGORY_MAP:
        return None
    dcat, sub, _ = CATEGORY_MAP[category]
    if category == "medication":
        return dcat, dwc_drug_class, -1, -1
    for rx, finer in _RULES[category]:
        m = rx.search(request)
        if m:
            if isinstance(finer, tuple):
                return finer[0], finer[1], m.start(), m.end()
            return dcat, finer, m.start(), m.end()
    return dcat, sub, -1, -1


def case_outcome(decisions: list[str]) -> str | None:
    """A letter's outcome in DWC's words: Uphold (every item upheld), Overturn (every item
    overturned), Partial Overturn (mixed)."""
    d = {x.lower() for x in decisions if x}
    if not d:
        return None
    if d == {"upheld"}:
        return "Uphold"
    if d == {"overturned"}:
        return "Overturn"
    return "Partial Overturn" if "overturned" in d else None


# DWC's reviewer specialty list, and the spellings letters use for some of them
SPECIALTIES = [
    "Addiction Psychiatry", "Allergy and Immunology", "Anesthesiology", "Cardiovascular Disease", "Child and Adolescent Psychiatry",
    "Chiropractic", "Colon and Rectal Surgery", "Critical Care Medicine", "Dentist", "Dermatology", "Diagnostic Radiology",
    "Emergency Medicine", "Family Practice", "Gastroenterology", "General Vascular Surgery", "Geriatric Medicine", "Hand Surgery",
    "Hospice & Palliative Medicine", "Infectious Disease", "Internal Medicine", "Interventional Cardiology", "Medical Oncology",
    "Medical Toxicology", "Nephrology", "Neurological Surgery", "Neurology", "Neuromuscular Medicine", "Neuroradiology",
    "Occupational Medicine", "Oncology", "Ophthalmology", "Optometry", "Oriental Medicine", "Orthopedic Surgery", "Otolaryngology",
    "Pain Management", "Pediatrics", "Physical Medicine & Rehabilitation", "Plastic Surgery", "Podiatric Surgery", "Podiatrist",
    "Preventive Medicine", "Psychiatry", "Psychologist", "Psychology", "Public Health & General Preventive Medicine",
    "Pulmonary Disease", "Radiology", "Registered Nurse", "Rheumatology", "Sleep Medicine", "Sports Medicine", "Surgery",
    "Surgical Critical Care", "Thoracic Surgery", "Urology",
]
_SYNONYMS = {
    "chiropractor": "Chiropractic", "pain medicine": "Pain Management", "family medicine": "Family Practice",
    "orthopaedic surgery": "Orthopedic Surgery", "orthopedics": "Orthopedic Surgery", "orthopaedics": "Orthopedic Surgery",
    "physical medicine and rehabilitation": "Physical Medicine & Rehabilitation", "pm&r": "Physical Medicine & Rehabilitation",
    "hospice and palliative medicine": "Hospice & Palliative Medicine", "neurosurgery": "Neurological Surgery",
    "public health and general preventive medicine": "Public Health & General Preventive Medicine",
    "allergy & immunology": "Allergy and Immunology", "acupuncturist": "Oriental Medicine", "acupuncture": "Oriental Medicine",
    "general surgery": "Surgery", "clinical psychology": "Psychology", "podiatry": "Podiatrist",
}
_BY_KEY = {re.sub(r"\s+", " ", s.lower()): s for s in SPECIALTIES}


def specialty(text: str) -> str | None:
    """DWC's name for a specialty as a letter writes it, or None when DWC's list has no such entry."""
    k = re.sub(r"\s+", " ", text.strip().lower()).rstrip(".")
    return _BY_KEY.get(k) or _SYNONYMS.get(k)
