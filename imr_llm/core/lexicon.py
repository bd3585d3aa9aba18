"""Small controlled vocabularies and pure parsers for what IMR letters state plainly.

Every function returns values *with* their span in the text it was given, so callers can ground
them. Order matters in the tables: the first matching entry wins.
"""
from __future__ import annotations

import re
from bisect import bisect_right
from datetime import date

NUMBER_WORDS = {
    "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
    "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14,
    "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19, "twenty": 20,
    "twenty-four": 24, "thirty": 30, "thirty-six": 36, "forty": 40, "sixty": 60, "ninety": 90,
    "once": 1, "twice": 2, "single": 1,
}
_NUM = r"(?:\d+|" + "|".join(sorted(NUMBER_WORDS, key=len, reverse=True)) + r")"


def to_int(tok: str) -> int | None:
    tok = tok.lower().strip()
    if tok.isdigit():
        return int(tok)
    return NUMBER_WORDS.get(tok)


US_STATE_NAMES = {
    "alabama", "alaska", "arizona", "arkansas", "california", "colorado", "connecticut", "delaware",
    "florida", "georgia", "hawaii", "idaho", "illinois", "indiana", "iowa", "kansas", "kentucky",
    "louisiana", "maine", "maryland", "massachusetts", "michigan", "minnesota", "mississippi",
    "missouri", "montana", "nebraska", "nevada", "new hampshire", "new jersey", "new mexico",
    "new york", "north carolina", "north dakota", "ohio", "oklahoma", "oregon", "pennsylvania",
    "rhode island", "south carolina", "south dakota", "tennessee", "texas", "utah", "vermont",
    "virginia", "washington", "west virginia", "wisconsin", "wyoming", "district of columbia",
}


# --- categories ----------------------------------------------------------------------------------

from .drugs import NAMES_PATTERN as _DRUG_NAMES  # noqa: E402

# Entries in priority order: the first *entry* that matches anywhere in the request decides (so a
# specific pattern of a category can sit above a general one of another). Measured on the 141 items
# of the 63 real DWC letters in evals/: "Wrist braces #2" is equipment, not a medication count;
# "Medication management consultation" a visit; "Myofascial release" a modality, not surgery.
CATEGORY_ENTRIES = [
    ("transportation", r"\btransport\w*"),
    ("home_health", r"home\s+health|home\s+care|nursing\s+care|\bRN\b|\bLVN\b|home\s+(?:health\s+)?aides?|\baides?\b|attendant|"
                    r"housekeeping|caregiver|home\s+assistance"),
    ("program", r"functional\s+restoration|\bFRP\b|pain\s+(?:management\s+)?program|weight\s+loss\s+program|gym\s+membership|"
                r"detox\w*|rehabilitation\s+program|aftercare\s+program|\bHELP\s+program|multidisciplinary"),
    ("acupuncture", r"acupunct\w*|electro-?acupunct\w*"),
    ("chiropractic", r"chiropract\w*|\bchiro\b|manipulat\w*|\bCMT\b"),
    ("psych", r"psych\w*|cognitive\s+behavio\w*|\bCBT\b|biofeedback|counsel+ing|behavio\w*\s+(?:therapy|medicine)"),
    ("physical_therapy", r"physical\s+therap\w*|physiotherap\w*|\bPT\b|aqua(?:tic)?\s+therap\w*|pool\s+therapy|"
                         r"work\s+(?:hardening|conditioning)|occupational\s+therap\w*|\bOT\b|therapeutic\s+exercise"),
    # devices first: "heat therapy pad", "hot/cold therapy wrap", "TENS unit" are equipment
    ("dme", r"\bTENS\b|\bH-?wave\b|interferential|\b(?:pad|wrap|unit|device|machine|stimulator)s?\b"),
    ("modality", r"infrared|\bheat\b|myofascial\s+release|massage|traction|shock\s*wave|\bESWT\b|electrical\s+(?:muscle\s+)?stimulation|"
                 r"\bE-?stim\b|neurostimulation|\bLLLT\b|laser\s+therapy|paraffin|diathermy|iontophoresis|hot\s+packs?|cold\s+packs?|"
                 r"cryotherapy|kinesio\s+tap\w*|dry\s+needling|whirlpool"),
    ("injection", r"inject\w*|epidural|\bESI\b|facet|nerve\s+block|\bblocks?\b|trigger\s+points?\b(?!\s+impedance)|radiofrequency|"
                  r"rhizotomy|\bPRP\b|platelet[- ]rich|botox|botulinum|viscosupplement\w*|synvisc|orthovisc|cortisone|"
                  r"hyaluron\w*|\bablation\b"),
    ("imaging", r"\bMRI\b|magnetic\s+resonance|\bCT\b(?:\s+scan)?|computed\s+tomograph\w*|x-?rays?|radiograph\w*|"
                r"ultrasound|sonogra\w*|bone\s+scan|\bimaging\b|arthrogram|\bDEXA\b|myelogra\w*|discogra\w*"),
    ("diagnostic", r"\bEMG\b|\bNCV\b|\bNCS\b|electrodiagnos\w*|nerve\s+conduction|electromyograph\w*|sleep\s+study|"
                   r"urine\s+(?:drug\s+)?(?:screen|test)\w*|\bUDS\b|\blabs?\b|laborator\w*|blood\s+(?:test|work|draw)|"
                   r"functional\s+capacity\s+evaluation|\bFCE\b|\bEKG\b|\bECG\b|electrocardiogra\w*|echocardiogra\w*|"
                   r"grip\s+(?:strength\s+)?test|range\s+of\s+motion|\bROM\b|\bCBC\b|\bpanel\b|\bprofile\b|genetic\s+test\w*|"
                   r"\btest(?:s|ing)?\b|\bscreening\b|\bVNG\b|audiogra\w*|\bQFCE\b"),
    # visits that name a drug, a surgery or a specialist: the request is the visit
    ("consultation", r"medication\s+management|pre-?\s?op(?:erative)?\s+(?:medical\s+)?clearance|medical\s+clearance|"
                     r"transfer\s+of\s+care|\bTOC\b|"
                     r"(?:surg\w*|surgeon|specialist|ortho\w*|neurolog\w*|pain\s+management)\s+(?:\w+\s+){0,2}?(?:consult\w*|evaluation|eval\b|referral)|"
                     r"(?:consult\w*|referral|evaluation|eval)\s+(?:with|to|by)\s+(?:an?\s+)?(?:\w+\s+){0,3}?(?:surgeon|specialist)"),
    ("dme", r"\bbraces?\b|\bcane\b|walker|wheelchair|\bDME\b|durable\s+medical|cold\s+therapy|hot/cold|cryotherapy\s+unit|"
            r"orthotic\w*|orthosis|insoles?|\bsplints?\b|pillows?|mattress|\bbed\b|compression\s+(?:device|unit|stockings?|garments?|sleeves?)|"
            r"continuous\s+passive\s+motion|\bCPM\b|\bsupplies\b|\bsupports?\b|\bbinder\b|\bcollar\b|commode|shower\s+(?:chair|bench|stool)|"
            r"tub\s+(?:chair|bench)|toilet|grab\s+bars?|scooter|crutch\w*|hearing\s+aids?|gloves?|\bcushion\b|\bstockings?\b|"
            r"reacher|\bsling\b|\bboot\b|bone\s+(?:growth\s+)?stimulat\w*|\bCPAP\b|\bhome\s+exercise\s+kit|\bequipment\b"),
    ("medication", r"\d+(?:\.\d+)?\s*(?:mg|mcg|%|gm|ml)\b|#\s*\d+|\btablets?\b|\btabs?\b|\bcapsules?\b|\bcream\b|\bgel\b|"
                   r"\bpatch(?:es)?\b|\bointment\b|\bcompound\w*|\btopical\b|\bmedications?\b|\bprescriptions?\b|\brefills?\b|"
                   r"\bpills?\b|\boral\s+suspension\b|" + _DRUG_NAMES),
    ("surgery", r"surger\w*|surgical|surgeon|arthroscop\w*|fusion|laminectom\w*|discectom\w*|microdiscectom\w*|"
                r"decompression|arthroplast\w*|replacement|\brepair\b|reconstruction|\w+ectomy|\w+otomy|\w+plasty|"
                r"\bORIF\b|open\s+reduction|internal\s+fixation|carpal\s+tunnel\s+release|release\b|debridement|\bACDF\b|"
                r"assistant\s+surgeon|co-?surgeon|\bimplant\w*|hardware\s+removal"),
    ("consultation", r"consult\w*|referral|evaluation|\beval\b|follow[- ]?up|office\s+visits?|specialist|second\s+opinion|\bvisits?\b"),
]
CATEGORY_NAMES = list(dict.fromkeys(c for c, _ in CATEGORY_ENTRIES)) + ["other"]
_CATEGORY_RES = [(c, re.compile(p, re.IGNORECASE)) for c, p in CATEGORY_ENTRIES]
_CATEGORY_ANY = re.compile("|".join(f"(?P<c{i}>{p})" for i, (_, p) in enumerate(CATEGORY_ENTRIES)), re.IGNORECASE)


def _first_by_table(rx: re.Pattern, names: list[str], text: str) -> dict[str, tuple[int, int]]:
    """First match of every alternative of a combined ``(?P<cN>...)|...`` regex, in one scan."""
    found: dict[str, tuple[int, int]] = {}
    for m in rx.finditer(text):
        i = int(m.lastgroup[1:])
        found.setdefault(names[i], (m.start(), m.end()))
    return found


def categorize(request: str) -> tuple[str, int, int] | None:
    """Category of a request line (first matching table entry), with the span of the words that decided it."""
    found: dict[int, tuple[int, int]] = {}
    for m in _CATEGORY_ANY.finditer(request):
        found.setdefault(int(m.lastgroup[1:]), (m.start(), m.end()))
    if not found:
        return None
    i = min(found)
    return CATEGORY_ENTRIES[i][0], *found[i]


# The guideline section MAXIMUS applied names the kind of treatment: the signal used when the
# request's own words name none ("Jamar grip test" aside, mostly brand names of compounds).
_SECTION_CATEGORIES = [
    ("medication", r"opioid|NSAID|anti-?inflammatory|muscle\s+relaxant|topical\s+analgesic|compound|proton\s+pump|\bPPI|"
                   r"medication|anti-?epilep|antidepressant|benzodiazepine|insomnia|cyclobenzaprine|lidoderm|capsaicin|"
                   r"barbiturate|medical\s+food|antiemetic|ondansetron"),
    ("dme", r"durable\s+medical\s+equipment|\bDME\b|\bTENS\b|H-wave|interferential|back\s+brac|cold/heat|hot/cold"),
    ("acupuncture", r"acupuncture"),
    ("chiropractic", r"manual\s+therapy|manipulation"),
    ("physical_therapy", r"physical\s+medicine|physical\s+therapy"),
    ("modality", r"physical\s+methods|shock\s*wave|laser|infrared|massage|traction|heat"),
    ("injection", r"epidural|injection|facet|nerve\s+block"),
    ("diagnostic", r"electrodiagnostic|\bEMG|\bNCS|urine\s+drug|functional\s+capacity|\blab"),
    ("imaging", r"special\s+studies|\bMRI|imaging|x-ray|radiograph"),
    ("home_health", r"home\s+health"),
    ("program", r"functional\s+restoration|chronic\s+pain\s+programs?|gym\s+membership"),
    ("psych", r"psycholog|cognitive\s+behav|biofeedback"),
    ("consultation", r"office\s+visits?|introduction|consult|evaluation"),
    ("surgery", r"surgical\s+considerations|surgery"),
    ("transportation", r"transportation"),
]
_SECTION_RES = [(c, re.compile(p, re.IGNORECASE)) for c, p in _SECTION_CATEGORIES]
_SECTIONS = re.compile(r"Section\(s\):\s*(?P<v>[^.]+)", re.IGNORECASE)


def category_from_guideline(text: str) -> tuple[str, int, int] | None:
    """Category named by the first guideline section ("Section(s): Opioids, criteria for use")."""
    for m in _SECTIONS.finditer(text):
        for cat, rx in _SECTION_RES:
            h = rx.search(m.group("v"))
            if h:
                return cat, m.start("v") + h.start(), m.start("v") + h.end()
    return None


# --- body regions -------------------------------------------------------------------------------

REGIONS = [
    ("cervical", r"cervical|\bneck\b|\bC\d(?:-C?\d)?\b"),
    ("thoracic", r"thoracic|mid[- ]back|upper\s+back|\bT\d{1,2}(?:-T?\d{1,2})?\b"),
    ("lumbar", r"lumbar|lumbosacral|low(?:er)?\s+back|\bL\d(?:-[LS]?\d)?\b"),
    ("sacral", r"sacr(?:al|um|oiliac)|\bSI\s+joint"),
    ("shoulder", r"shoulders?|rotator\s+cuff"),
    ("elbow", r"elbows?"),
    ("wrist", r"wrists?|carpal|distal\s+radi(?:us|al)"),  # a distal radius fracture is a wrist fracture
    ("hand", r"\bhands?\b|fingers?|thumbs?"),
    ("hip", r"\bhips?\b"),
    ("knee", r"\bknees?\b(?!\s+(?:scooter|walker))|menisc\w*"),
    ("ankle", r"ankles?"),
    ("foot", r"\bfoot\b|\bfeet\b|plantar"),
    ("head", r"\bhead\b|cranial|\bTMJ\b|jaw|\bbrain\w*"),
    ("spine", r"\bspine\b|spinal"),
    ("upper_extremity", r"upper\s+(?:extremit\w*|limbs?)|\barms?\b|forearms?"),
    ("lower_extremity", r"lower\s+(?:extremit\w*|limbs?)|\blegs?\b|\bthighs?\b|\bcalf\b"),
]
REGION_NAMES = [r for r, _ in REGIONS] + ["other"]
_REGION_RES = [(r, re.compile(p, re.IGNORECASE)) for r, p in REGIONS]
_REGION_ANY = re.compile("|".join(f"(?P<c{i}>{p})" for i, (_, p) in enumerate(REGIONS)), re.IGNORECASE)
_SPINE_PARTS = {"cervical", "thoracic", "lumbar", "sacral"}


def body_regions(text: str) -> list[tuple[str, int, int]]:
    """Body regions named in ``text`` (first mention each), in text order.

    "spine" alone is kept only when no specific spinal level is named ("cervical spine" -> cervical).
    """
    hits = [(reg, s, e) for reg, (s, e) in _first_by_table(_REGION_ANY, REGION_NAMES, text).items()]
    if any(h[0] in _SPINE_PARTS for h in hits):
        hits = [h for h in hits if h[0] != "spine"]
    return sorted(hits, key=lambda h: h[1])


def region_supported(region: str, quote: str) -> bool:
    for reg, rx in _REGION_RES:
        if reg == region:
            return bool(rx.search(quote))
    return region == "other"


# --- quantities and frequencies -------------------------------------------------------------------

_QTY_PATTERNS = [
    # "Eight (8) Additional ..." / "Twelve additional ..." / "6 Physical therapy ..."
    re.compile(rf"^\s*(?:(?:retrospective|prospective|request\s+for|additional)\s+)*(?P<w>{_NUM})\b(?:\s*\((?P<d>\d+)\))?(?!\s*(?:mg|mcg|%|/|-(?:level|day|week)|times?\b|x\b|to\s+\d))", re.IGNORECASE),
    # "2x6" / "2 x 6" (times per week x weeks)
    re.compile(r"\b(?<!-)(?P<a>\d+)\s*[xX]\s*(?P<b>\d+)\b(?!\s*(?:mg|mcg))"),  # not "L4-5 x 2"
    # "... 12 sessions" / "(12) visits"
    None,  # frequency x duration ("2 times a week for 6 weeks", "two times four visits"): _freq_total
    re.compile(rf"\(?\b(?P<w>{_NUM})\)?(?!\s*(?:times?|x)\b)\s+(?:additional\s+|more\s+|further\s+|post-?operative\s+|initial\s+)?(?:\w+\s+){{0,3}}?(?:sessions?|visits?|treatments?)\b", re.IGNORECASE),
    # medications "#60", "qty 60", "quantity: 90"
    re.compile(r"(?:#\s*|\bqty:?\s*|\bquantity:?\s*)(?P<d>\d+)", re.IGNORECASE),
]


def quantity(request: str) -> tuple[int, int, int] | None:
    """Number of sessions/units requested, with its span; None when the line states none."""
    for rx in _QTY_PATTERNS:
        if rx is None:
            total = _freq_total(request)
            if total:
                return total
            continue
        m = rx.search(request)
        if not m:
            continue
        gd = m.groupdict()
        if gd.get("a"):
            return int(gd["a"]) * int(gd["b"]), m.start(), m.end()
        if gd.get("d") and not gd.get("w"):
            return int(gd["d"]), m.start("d") - (1 if request[m.start("d") - 1:m.start("d")] == "#" else 0), m.end("d")
        val = to_int(gd["w"])
        if gd.get("d"):
            val = int(gd["d"])
            return val, m.start("w"), m.end()
        if val is not None and 0 < val < 1000:
            return val, m.start("w"), m.end("w")
    m = _TIMES_N.search(request)
    if m and (n := to_int(m.group("n"))):
        return n, m.start(), m.end()
    return None


# "N times a week for K weeks", "N to M times per week x K weeks", "N times weekly for K weeks",
# "twice a week for K weeks", "N times a week times K weeks", "2 times 6" (times per week x weeks)
def _per(k: str = "") -> str:
    return rf"(?<!-)(?P<lo{k}>{_NUM})(?:\s*(?:to|-)\s*(?P<hi{k}>{_NUM}))?\s*(?:x|times?)"



_FREQ_DUR = re.compile(
    rf"\b(?:{_per()}|(?P<tw>once|twice))\s*(?:(?:a|per|each|/)\s*(?:week|wk)|weekly)\s*,?\s*(?:for|x|times)\s+(?P<dur>{_NUM})\s*(?:weeks?|wks?)\b"
    rf"|\b{_per('2')}\s+(?P<dur2>{_NUM})\b(?!\s*(?:mg|mcg|%|/|weeks?|days?|months?|times?|x\b))(?:\s+(?:visits?|sessions?))?",
    re.IGNORECASE)
# "office visit times 3", "MRI ... times 1": a count after "times" that no unit follows
_TIMES_N = re.compile(rf"\btimes\s+(?P<n>{_NUM})\b(?!\s*(?:a\s+|per\s+|weekly|weeks?|days?|months?|x\b))", re.IGNORECASE)


# "Daily RN for 4 weeks" (seen on a real letter): one a day for the duration
_DAILY_DUR = re.compile(rf"^\s*(?:daily|once\s+a\s+day)\b(?:\s+[\w/-]+){{0,3}}?\s+for\s+(?P<n>{_NUM})\s+(?P<u>weeks?|days?)\b", re.IGNORECASE)


def _freq_total(request: str) -> tuple[int, int, int] | None:
    """Total sessions from frequency x duration (the upper bound of "1 to 2 times")."""
    d = _DAILY_DUR.search(request)
    if d and (n := to_int(d.group("n"))):
        return n * (7 if d.group("u").lower().startswith("week") else 1), d.start(), d.end()
    m = _FREQ_DUR.search(request)
    if not m:
        return None
    per = 1 if (m.group("tw") or "").lower() == "once" else 2 if m.group("tw") else to_int(
        m.group("hi") or m.group("lo") or m.group("hi2") or m.group("lo2"))
    dur = to_int(m.group("dur") or m.group("dur2"))
    if per and dur and per * dur < 1000:
        return per * dur, m.start(), m.end()
    return None


_FREQ = re.compile(
    rf"\b(?:{_NUM}(?:\s*(?:to|-)\s*{_NUM})?\s+times?|once|twice)\s+(?:a|per|each)\s+(?:day|week|month)(?:\s*,?\s+(?:for|x|times)\s+{_NUM}\s+(?:days?|weeks?|months?))?"
    rf"|\b{_NUM}(?:\s*(?:to|-)\s*{_NUM})?\s*(?:x|times)\s*(?:a\s+)?(?:weekly|per\s+week|a\s+week|/\s*week|/\s*wk)(?:\s*,?\s*(?:for|x|times)\s*{_NUM}\s*(?:weeks?|wks?))?"
    r"|\b(?<!-)\d+\s*[xX]\s*\d+\b(?!\s*(?:mg|mcg))"
    rf"|\b(?<!-){_NUM}\s+times\s+{_NUM}\b(?!\s*(?:mg|mcg|%|/|weeks?|days?|months?|times?))"
    r"|\b(?:once|twice|three times)\s+(?:daily|weekly|monthly)|^\s*daily\b"
    r"|\b(?:every|q)\s*\d+\s*(?:-\s*\d+\s*)?(?:hours?|hrs?|h)\b|\b(?:b\.?i\.?d|t\.?i\.?d|q\.?i\.?d|q\.?d|p\.?r\.?n)\b\.?",
    re.IGNORECASE,
)


def frequency(request: str) -> tuple[str, int, int] | None:
    m = _FREQ.search(request)
    if not m:
        return None
    return m.group().strip(), m.start(), m.end()


# --- dates -----------------------------------------------------------------------------------------

MONTHS = {m: i + 1 for i, m in enumerate(
    ["january", "february", "march", "april", "may", "june", "july", "august", "september",
     "october", "november", "december"])}
MONTHS.update({k[:3]: v for k, v in list(MONTHS.items())})
MONTHS["sept"] = 9
DATE_RE = re.compile(
    r"\b(?P<m>\d{1,2})/(?P<d>\d{1,2})/(?P<y>\d{4}|\d{2})\b"
    r"|(?<![\d-])(?P<mh>\d{1,2})-(?P<dh>\d{1,2})-(?P<yh>\d{4}|\d{2})\b(?!-\d|\s*(?:weeks?|days?|months?|visits?|sessions?|times|tab\w*)\b)"  # 11-9-2016 (DWC letters write both); not in a run of numbers
    r"|(?<![\d/-])(?P<y2>\d{4})-(?P<m2>\d{2})-(?P<d2>\d{2})\b(?![-/]\d)"
    r"|\b(?P<mn>Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?|Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)\.?\s+(?P<d3>\d{1,2})(?:st|nd|rd|th)?,?\s+(?P<y3>\d{4})\b",
    re.IGNORECASE,
)


def parse_date(m: re.Match) -> str | None:
    """ISO date from a ``DATE_RE`` match; None when impossible (e.g. 13/45/2014)."""
    g = m.groupdict()
    try:
        if g["m"] or g["mh"]:
            m, d, y = (g["m"], g["d"], g["y"]) if g["m"] else (g["mh"], g["dh"], g["yh"])
            y = int(y)
            y = y + (2000 if y < 50 else 1900) if y < 100 else y
            return date(y, int(m), int(d)).isoformat()
        if g["y2"]:
            return date(int(g["y2"]), int(g["m2"]), int(g["d2"])).isoformat()
        return date(int(g["y3"]), MONTHS[g["mn"].lower().rstrip(".")], int(g["d3"])).isoformat()
    except (ValueError, KeyError):
        return None


def date_at(text: str, pos: int) -> tuple[str, int, int] | None:
    """The date written at ``text[pos:]`` (ISO, start, end), or None when none is or it is impossible."""
    m = DATE_RE.match(text, pos)
    iso = parse_date(m) if m else None
    return (iso, m.start(), m.end()) if iso else None


def dates_in(text: str) -> list[tuple[str, int, int]]:
    out = []
    for m in DATE_RE.finditer(text):
        iso = parse_date(m)
        if iso:
            out.append((iso, m.start(), m.end()))
    return out


# --- guideline sources ----------------------------------------------------------------------------

GUIDELINES = [
    ("MTUS Post-Surgical", r"post-?\s?surgical\s+(?:treatment\s+)?guidelines?|postsurgical\s+treatment"),
    ("MTUS Chronic Pain", r"chronic\s+pain(?:\s+medical)?(?:\s+treatment)?\s+guidelines?|chronic\s+pain\s+medical\s+treatment"),
    ("MTUS Acupuncture", r"acupuncture\s+(?:medical\s+)?treatment\s+guidelines?|MTUS,?\s+acupuncture"),
    ("MTUS ACOEM", r"(?:MTUS|CA\s+MTUS|California\s+MTUS)\s+(?:\(?ACOEM\)?|American\s+College)"),
    ("ACOEM", r"\bACOEM\b"),
    ("ODG", r"\bODG\b|Official\s+Disability\s+Guidelines?"),
    ("MTUS", r"\bMTUS\b|Medical\s+Treatment\s+Utilization\s+Schedule"),
    ("Medical literature", r"peer[- ]reviewed|medical\s+literature|journal|\bFDA\b|national\s+guideline"),
]
_GUIDE_RES = [(g, re.compile(p, re.IGNORECASE)) for g, p in GUIDELINES]
GUIDELINE_NAMES = [g for g, _ in GUIDELINES] + ["Other"]
_PAGES = re.compile(r"\bpages?\s*(?:\(s\))?:?\s*(\d+(?:\s*[-–]\s*\d+)?(?:\s*(?:,|and)\s*\d+(?:\s*[-–]\s*\d+)?)*)", re.IGNORECASE)
_CHAPTER = re.compile(r"\bChapter\s+(\d+)(?:\s+([A-Z][\w/ ]+?(?:Complaints|Disorders|Injuries|Conditions)))?", re.IGNORECASE)
_NO_GUIDE = re.compile(r"did\s+not\s+cite|no\s+(?:medical\s+)?evidence|not\s+cited", re.IGNORECASE)


def guideline_sources(text: str) -> list[dict]:
    """Normalised sources named in a guideline line: name, chapter/topic detail, pages, span."""
    if _NO_GUIDE.search(text) and not re.search(r"\bMTUS\b|\bODG\b|ACOEM", text):
        return []
    found: list[dict] = []
    # split at " and " / ";" between distinct guideline citations
    for part_m in re.finditer(r"[^;]+", text):
        part = part_m.group()
        taken: list[tuple[int, int]] = []
        for name, rx in _GUIDE_RES:
            m = rx.search(part)
            if not m:
                continue
            if any(s <= m.start() < e for s, e in taken):
                continue
            if name in ("ACOEM", "MTUS") and any(f["name"].startswith("MTUS") or f["name"] == "ACOEM" for f in found if f["_part"] == part_m.start()):
                continue
            taken.append((m.start(), m.end()))
            pages = _PAGES.search(part, m.end())
            chap = _CHAPTER.search(part)
            detail = None
            if chap:
                detail = f"Chapter {chap.group(1)}" + (f" {chap.group(2).strip()}" if chap.group(2) else "")
            end = max(m.end(), pages.end() if pages else 0, chap.end() if chap else 0)
            found.append({
                "name": name, "detail": detail,
                "pages": re.sub(r"\s+", "", pages.group(1)) if pages else None,
                "start": part_m.start() + m.start(), "end": part_m.start() + end, "_part": part_m.start(),
            })
    for f in found:
        f.pop("_part")
    return found


# --- denial / approval reasons ----------------------------------------------------------------------

REASONS = [
    ("no_functional_improvement", r"(?:no|without|absence\s+of|lack\s+of|not\s+(?:\w+\s+){0,3}(?:demonstrated|documented|shown))\s+(?:\w+\s+){0,5}?functional\s+(?:improvement|benefit|gains?)"
                                  r"|functional\s+(?:improvement|benefit|gains?)\s+(?:\w+\s+){0,4}?(?:not|was\s+not|were\s+not|has\s+not)\s+(?:\w+\s+){0,2}?(?:demonstrated|documented|established|shown|outlined)"
                                  r"|no\s+(?:\w+\s+){0,3}evidence\s+of\s+(?:\w+\s+){0,3}(?:progress|(?:pain\s+)?improvement|functional)"
                                  r"|(?:response|benefit)s?\s+to\s+(?:prior\s+)?treatment\s+(?:was|were)\s+not\s+(?:discussed|documented)"),
    ("exceeds_guideline_visits", r"exceed\w*\s+(?:\w+\s+){0,6}?(?:guideline|recommend|MTUS|visits?|sessions?)|in\s+excess\s+of|beyond\s+(?:the\s+)?guideline"
                                 r"|(?:already|has)\s+(?:\w+\s+){0,3}(?:received|completed|had)\s+(?:\w+\s+){0,3}?(?:significant|\d+|numerous|extensive)\s+(?:\w+\s+){0,2}?(?:sessions|visits|therapy)"),
    ("transition_to_home_program", r"home\s+exercise\s+program|self-?\s?directed\s+home|independent\s+(?:home\s+)?exercise|transition\w*\s+(?:\w+\s+){0,3}home|home\s+program"),
    ("no_acute_flare", r"no\s+(?:\w+\s+){0,4}(?:acute\s+(?:flare|exacerbation)|flare-?\s?up|new\s+injur)|no\s+recent\s+reports?\s+of\s+acute"),
    ("not_recommended_by_guideline", r"not\s+recommended|guidelines?\s+(?:do|does)\s+not\s+(?:support|recommend)|not\s+supported\s+by\s+(?:the\s+)?(?:MTUS|guideline|ODG)"),
    ("no_objective_findings", r"no\s+(?:\w+\s+){0,3}(?:objective|specific\s+physical|neurologic\w*)\s+(?:\w+\s+){0,2}(?:findings|deficits|impairments)|no\s+(?:clear\s+)?(?:dermatomal|radicular)"),
    ("contraindicated", r"contraindicat\w*"),
    ("no_trial_of_conservative_care", r"(?:failure|failed)\s+of\s+conservative|conservative\s+(?:care|treatment)\s+(?:has\s+)?not\s+(?:been\s+)?(?:tried|exhausted)|no\s+(?:\w+\s+){0,2}trial\s+of"),
    ("long_term_use_not_supported", r"long-?\s?term\s+(?:use|opioid)|chronic\s+use|(?:no|without)\s+(?:\w+\s+){0,3}(?:urine\s+drug|pain\s+contract|opioid\s+agreement)"),
    # generic: last, so a specific code wins the sentence
    ("insufficient_documentation", r"(?:not|no|without)\s+(?:\w+\s+){0,3}(?:documented|documentation|outlined|discussed|submitted|clearly\s+(?:stated|described|outlined))"
                                   r"|unclear|not\s+clear|no\s+clinical\s+progress\s+notes?|fail\w*\s+to\s+(?:support|substantiate|document)|has\s+not\s+been\s+established|have\s+not\s+(?:adequately\s+)?demonstrated"),
]
REASON_NAMES = [r for r, _ in REASONS] + ["other"]
_REASON_RES = [(r, re.compile(p, re.IGNORECASE)) for r, p in REASONS]
# Cheap literal pre-checks: a code's regex runs only if one of its words is in the text at all.
_REASON_HINTS = {
    "no_functional_improvement": ("functional", "progress", "improvement", "benefit", "response"),
    "exceeds_guideline_visits": ("exceed", "excess", "beyond", "received", "completed", "had "),
    "transition_to_home_program": ("home",),
    "no_acute_flare": ("flare", "exacerbation", "new injur", "acute"),
    "not_recommended_by_guideline": ("not recommended", "not support", "not supported"),
    "no_objective_findings": ("objective", "physical", "neurolog", "dermatomal", "radicular"),
    "contraindicated": ("contraindicat",),
    "no_trial_of_conservative_care": ("conservative", "trial of"),
    "long_term_use_not_supported": ("long-term", "long term", "longterm", "chronic use", "urine drug", "pain contract", "opioid agreement"),
    "insufficient_documentation": ("document", "outlined", "discussed", "submitted", "clear", "progress note", "fail", "established", "demonstrated"),
}



_SENTENCE = re.compile(r"[^.!?]+(?:[.!?]+|$)")
# Sentences whose subject is the guideline describe the standard, not this case.
_GUIDE_SUBJECT = re.compile(r"^\s*(?:The\s+)?(?:California\s+)?(?:CA\s+)?(?:MTUS|ODG|ACOEM|Official\s+Disability|Chronic\s+Pain|Post-?\s?Surgical|"
                            r"Acupuncture)\b[^.]*?\b(?:Guidelines?|recommend\w*|support\w*|allow\w*|state\w*|limit\w*|require\w*|indicate\w*)\b"
                            r"|^\s*(?:As\s+stated|Per|According\s+to)\b[^.]*\b(?:Guidelines?|MTUS|ODG|ACOEM)\b", re.IGNORECASE)


_GENERIC_REASON = "insufficient_documentation"
_CASE_SUBJECT = re.compile(r"\bin\s+this\s+case\b|\bthe\s+(?:patient|applicant|injured\s+worker|employee)\b", re.IGNORECASE)


_CONCLUSION_SENT = re.compile(
    r"^\s*(?:therefore|thus|as\s+such|accordingly|consequently|hence|in\s+summary|based\s+on\s+the\s+(?:above|records?|documentation))\b"
    r"|\b(?:the|this)\s+(?:request|requested\s+\w+)\b[^.]{0,160}?\b(?:is|was|are|were)\s+(?:not\s+)?"
    r"(?:medically\s+necessary|supported|warranted|indicated|appropriate|reasonable|recommended)", re.IGNORECASE)
_CASE_SENT = re.compile(
    r"\bin\s+this\s+(?:case|instance|patient)\b|\bthe\s+(?:patient|injured\s+worker|applicant|claimant|employee|provider|"
    r"treating\s+(?:physician|provider))\b|\b(?:the\s+)?(?:submitted|provided|available|reviewed)\s+(?:medical\s+)?"
    r"(?:records?|documentation|notes?)\b|\bthere\s+(?:is|was|were)\s+no\s+(?:\w+\s+){0,3}?(?:documentation|evidence|"
    r"indication|mention|record)|\b(?:he|she)\s+(?:has|had|was|is|reported|complained)", re.IGNORECASE)


def sentence_role(sentence: str) -> str:
    """What a rationale sentence does: "case" (facts and reasons of this case), "conclusion" (the
    decision on this request), "guideline" (what a guideline says in general) or "other"."""
    case = bool(_CASE_SENT.search(sentence))
    if _CONCLUSION_SENT.search(sentence):
        return "conclusion"
    if case:
        return "case"
    if _GUIDE_SUBJECT.search(sentence) or re.search(r"\b(?:guidelines?|MTUS|ODG|ACOEM)\b", sentence):
        return "guideline"
    return "other"


def reasons(rationale: str, decision: str | None) -> list[tuple[str, int, int]]:
    """Normalised denial reasons of a rationale, first evidence of each code.

    A phrase counts for one code (first in table order); the generic insufficient_documentation
    counts only in a sentence with no specific code. Empty for approvals; sentences that describe
    the guideline itself (not this case) are skipped.
    """
    if decision and decision.lower().startswith("overturn"):
        return []
    sents = [(m.start(), m.end()) for m in _SENTENCE.finditer(rationale)]
    skip = {i for i, (a, b) in enumerate(sents)
            if _GUIDE_SUBJECT.search(rationale[a:b]) and not _CASE_SUBJECT.search(rationale[a:b])}
    starts = [a for a, _ in sents]
    per_sentence: dict[int, list[tuple[str, int, int]]] = {}
    low = rationale.lower()
    for code, rx in _REASON_RES:
        if not any(h in low for h in _REASON_HINTS.get(code, ("",))):
            continue
        for m in rx.finditer(rationale):
            i = bisect_right(starts, m.start()) - 1
            if i in skip or (i + 1 < len(starts) and m.end() > starts[i + 1]):
                continue  # guideline description, or a match running across sentences
            hits = per_sentence.setdefault(i, [])
            if any(c == code or not (m.end() <= a or m.start() >= b) for c, a, b in hits):
                continue  # one code per phrase, first in table order
            hits.append((code, m.start(), m.end()))
    out: dict[str, tuple[str, int, int]] = {}
    for i in sorted(per_sentence):
        hits = per_sentence[i]
        specific = [h for h in hits if h[0] != _GENERIC_REASON]
        for code, a, b in sorted(specific or hits, key=lambda h: h[1]):  # the generic code only alone
            out.setdefault(code, (code, a, b))
    return sorted(out.values(), key=lambda h: h[1])


# --- claimant facts ---------------------------------------------------------------------------------

AGE_SEX = re.compile(
    r"\b(?P<age>\d{1,3})[- ](?:year|yr)s?[- ]old\s+(?:(?:right|left)[- ]hand(?:ed)?\s+|(?:married|single|divorced|widowed)\s+)?"
    r"(?P<sex>male|female|man|woman|gentleman|lady|boy|girl)?",
    re.IGNORECASE,
)
SEX_ALONE = re.compile(r"\b(?:is|was)\s+an?\s+(?P<sex>male|female|man|woman|gentleman|lady)\b", re.IGNORECASE)
SEX_WORDS = {"male": "male", "man": "male", "gentleman": "male", "boy": "male",
             "female": "female", "woman": "female", "lady": "female", "girl": "female"}
INJURY_DATE = re.compile(
    r"(?:industrial\s+injury|date\s+of\s+injury|injur(?:y|ed))\s+(?:date\s+)?(?:of|on|dated)?\s*:?\s*(?=\S)",
    re.IGNORECASE,
)
