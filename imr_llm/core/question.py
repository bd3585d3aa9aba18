"""Reading a question: the filters it states, what kind of answer it wants, and what was not understood.

Deterministic and offline. Recognisers find phrases (decisions, categories, drug classes, regions,
surgery history, reviewer licence and specialty, dates, ranges, partial authorizations); a negation
cue just before a phrase ("not", "no", "without", "except", "other than", "excluding", "never")
negates it; "A or B" within one kind becomes one condition with both values. Every character a
recogniser used is marked; content words left unmarked are reported as not used, so an answer never
silently counts something other than what was asked.
"""
from __future__ import annotations

import calendar
import re
from dataclasses import dataclass, field
from datetime import date

from . import drugs
from . import lexicon as lx
from .filters import Cond, Filters

I = re.IGNORECASE


@dataclass
class Reading:
    question: str
    mode: str  # count | list | why | stats
    filters: Filters
    unused: list[str] = field(default_factory=list)
    group_by: list[str] = field(default_factory=list)  # stats: the table's rows
    measures: str | None = None  # stats: "rate" (share overturned) or "top" (most frequent values)
    refused: str | None = None  # why the question cannot be answered as asked
    broadened: list[tuple[str, str]] = field(default_factory=list)  # (word, category) read as the whole category

    def sentence(self) -> str:
        what = {"count": "Counting disputed items", "list": "Listing disputed items", "why": "Searching the reasons of disputed items",
                "stats": "Overturn rate (95% interval) of disputed items" + (f" by {', '.join(self.group_by)}" if self.group_by else "")
                }[self.mode]
        conds = self.filters.describe()
        s = f"{what} {conds}" if self.filters.active() else f"{what} (no filter: all of them)"
        if self.broadened:
            s += "".join(f". {w!r} is read as every {c.replace('_', ' ')} request (requests are not filtered by procedure or drug name)"
                         for w, c in self.broadened)
        if self.unused:
            s += f". Not used from the question: {', '.join(repr(w) for w in self.unused)}"
        return s + "."

    def to_dict(self) -> dict:
        return {"mode": self.mode, "group_by": self.group_by, "filters": self.filters.to_dict(), "unused_words": self.unused,
                "sentence": self.sentence(), "refused": self.refused,
                "broadened": [{"word": w, "category": c} for w, c in self.broadened]}


# --- vocabularies ---------------------------------------------------------------------------------

_NEG = re.compile(r"(?:\b(?:not|no|without|except(?:\s+for)?|other\s+than|excluding|exclude|never|aside\s+from|besides|"
                  r"apart\s+from|but\s+not|isn't|wasn't|weren't|aren't|didn't|don't|doesn't|none\s+of)\b|\bnon-?)"
                  r"(?:\s+(?:a|an|any|the|those|ones?|been|be|get|got|being|in|for|were|was|by|from|to|of|with|prior|previous|"
                  r"decided|dated|made|issued|filed|injured|reviewed|requested))*\s*$", I)

_DECISIONS = [
    ("Upheld", r"\b(?:upheld|uphold\w*|denied|denials?|den(?:y|ies)|rejected|not\s+medically\s+necessary|not\s+approved|refused)\b"),
    ("Overturned", r"\b(?:overturn\w*|approved|granted|reversed|medically\s+necessary)\b"),
]

_DRUG_CLASS_WORDS = [
    ("opioid", r"opioids?|opiates?|narcotics?|pain\s*killers?"),
    ("nsaid", r"nsaids?|anti-?inflammator(?:y|ies)(?:\s+drugs?)?"),
    ("muscle_relaxant", r"muscle\s+relaxants?"),
    ("anticonvulsant", r"anti-?convulsants?|anti-?epilep\w+(?:\s+drugs?)?|neuropathic\s+(?:pain\s+)?(?:drugs?|medications?)"),
    ("antidepressant", r"anti-?depressants?"),
    ("topical", r"topicals?(?!\s+compound)(?:\s+(?:analgesics?|patch(?:es)?|creams?))?"),
    ("compounded", r"compound(?:ed|s)?(?:\s+(?:drugs?|creams?|medications?|topicals?))?"),
    ("benzodiazepine", r"benzodiazepines?|benzos?"),
    ("sleep_aid", r"sleep\s+(?:aids?|medications?)|hypnotics?|sedatives?"),
    ("ppi_gi", r"proton\s+pump\s+inhibitors?|ppis?|(?:gi|stomach|gastric)\s+(?:drugs?|medications?|protect\w*)"),
]
_DRUG_CLASS_RES = [(c, re.compile(rf"\b(?:{p})\b", I)) for c, p in _DRUG_CLASS_WORDS]

# Category words as people say them (the letter lexicon also applies, see _categories)
_CATEGORY_WORDS = [
    ("physical_therapy", r"physical\s+therap\w*|\bPT\b|physiotherap\w*|occupational\s+therap\w*"),
    ("medication", r"medications?|drugs?|pharmacy|prescriptions?|pharmaceuticals?|meds"),
    ("imaging", r"imaging|scans?|MRIs?|CTs?|x-?rays?"),
    ("diagnostic", r"diagnostic\s+tests?|electrodiagnostic\w*|EMGs?|NCVs?|NCSs?|labs?|lab\s+tests?"),
    ("injection", r"injections?|ESIs?|epidurals?|facet\s+(?:blocks?|injections?)|nerve\s+blocks?|trigger\s+points?"),
    ("dme", r"DME|durable\s+medical\s+equipment|equipment|braces?|TENS(?:\s+units?)?|supplies"),
    ("surgery", r"surgery\s+requests?|surgical\s+requests?|operations?|(?:requests?\s+for\s+)?surger(?:y|ies)(?=\s+(?:requests?|were|was|that|overturned|upheld|denied|approved))"),
    ("consultation", r"consult\w*|office\s+visits?|follow[- ]?ups?|referrals?|evaluations?"),
    ("home_health", r"home\s+health|home\s+care|nursing"),
    ("program", r"functional\s+restoration|programs?|gym\s+memberships?"),
    ("modality", r"modalit(?:y|ies)|infrared|shock\s*wave|ESWT|traction|massage|heat\s+therapy"),
    ("transportation", r"transportation|transport"),
    ("acupuncture", r"acupuncture"),
    ("chiropractic", r"chiropract\w*|chiro|manipulation"),
    ("psych", r"psych\w*|cognitive\s+behavio\w*|CBT|counsel+ing|biofeedback"),
]
_CATEGORY_RES = [(c, re.compile(rf"\b(?:{p})\b", I)) for c, p in _CATEGORY_WORDS]

_SPINE = ("cervical", "thoracic", "lumbar", "sacral", "spine")

_SPECIALTIES = [
    ("Orthopedic", r"orthop(?:a)?edic(?:\s+surg(?:eons?|ery))?|orthop(?:a)?edists?"),
    ("Physical Medicine", r"physiatrists?|physical\s+medicine(?:\s+(?:&|and)\s+rehabilitation)?|PM&R|PMR"),
    ("Pain Management", r"pain\s+(?:management|medicine)(?:\s+(?:specialists?|physicians?|doctors?))?|pain\s+specialists?"),
    ("Family Practice", r"family\s+(?:practice|medicine|physicians?|doctors?)"),
    ("Internal Medicine", r"internal\s+medicine|internists?"),
    ("Neurology", r"neurologists?|neurology"),
    ("Neurological Surgery", r"neurosurgeons?|neurological\s+surg(?:eons?|ery)"),
    ("Psychiatry", r"psychiatrists?|psychiatry"),
    ("Psycholog", r"psychologists?|psychology"),
    ("Anesthesiology", r"anesthesiologists?|anesthesiology"),
    ("Occupational Medicine", r"occupational\s+medicine|occupational\s+(?:health\s+)?physicians?"),
    ("Chiropractic", r"chiropractors?"),
    ("Acupuncture", r"acupuncturists?"),
    ("Sports Medicine", r"sports\s+medicine"),
    ("Emergency Medicine", r"emergency\s+medicine"),
    ("Preventive Medicine", r"preventive\s+medicine"),
    ("Rheumatology", r"rheumatologists?|rheumatology"),
    ("Podiatr", r"podiatrists?|podiatry|podiatric"),
    ("Plastic Surgery", r"plastic\s+surg(?:eons?|ery)"),
    ("Hand Surgery", r"hand\s+surg(?:eons?|ery)"),
]
_SPECIALTY_RE = re.compile("|".join(f"(?P<s{i}>\\b(?:{p})\\b)" for i, (_, p) in enumerate(_SPECIALTIES)), I)
_REVIEWER_CTX = re.compile(r"\b(?:reviewers?|reviewed|decided|decisions?\s+(?:by|from)|by|from|specialists?|surgeons?|"
                           r"physicians?|doctors?|board[- ]certified|specializ\w*|specialt\w*)\b", I)

_MONTHS = r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)"
_YEAR = r"(?:19|20)\d{2}"
# longest first and a word end, so "sixty" is never read as "six"
_NUMW = r"(?:\d+|" + "|".join(sorted("one two three four five six seven eight nine ten eleven twelve twenty thirty forty fifty "
                                     "sixty seventy eighty ninety".split(), key=len, reverse=True)) + r")\b"

_STOP = set("""a an the of in on at to for from by with and or as is are was were be been being do does did has have had
how many much which what who whom whose why when where that this these those there their its it they them me my i we our you
your show list give tell count number all any some each every per than then so such only just also please decisions decision
letters letter items item requests request cases case disputed dispute services service treatment treatments came come made
reviewers reviewer reviewed imr find get total were was ones one answer results matching match about did getting
claimant claimants patient patients worker workers injured applicant applicants employee employees people person""".split())


# --- the reader -------------------------------------------------------------------------------------

class _Marks:
    def __init__(self, text: str):
        self.text = text
        self.used = [False] * len(text)
        self.unread: list[tuple[str, int, int]] = []  # (words, span of their phrase): consumed, not applied
        self.broad: list[tuple[str, str]] = []  # (word, category): a word read as its whole category

    def free(self, s: int, e: int) -> bool:
        return not any(self.used[s:e])

    def mark(self, s: int, e: int) -> None:
        for i in range(s, e):
            self.used[i] = True

    def unused_words(self) -> list[str]:
        out = []
        for m in re.finditer(r"[A-Za-z][A-Za-z'-]*|\d+", self.text):
            if self.free(m.start(), m.end()) and m.group().lower() not in _STOP and len(m.group()) > 1:
                out.append(m.group())
        for w, s, e in self.unread:
            again = [m for m in re.finditer(rf"\b{re.escape(w)}\b", self.text, I) if not s <= m.start() < e]
            if w not in out and not again:
                out.append(w)
        return out


def _negated(text: str, start: int) -> tuple[bool, int]:
    """Is the phrase at ``start`` negated by the words just before it? (and where the cue starts)"""
    m = _NEG.search(text[max(0, start - 40):start])
    if not m:
        return False, start
    return True, max(0, start - 40) + m.start()


def _alternatives(text: str, hits: list[tuple[str, int, int]]) -> list[list[tuple[str, int, int]]]:
    """Group hits of one kind joined by "or"/","/"and"/"nor" into alternatives; others stand alone."""
    groups: list[list[tuple[str, int, int]]] = []
    for h in sorted(hits, key=lambda h: h[1]):
        if groups and re.fullmatch(r"\s*(?:,|/|or|and|nor|,\s*or|,\s*and|and/or)\s*(?:the\s+)?", text[groups[-1][-1][2]:h[1]], I):
            groups[-1].append(h)
        else:
            groups.append([h])
    return groups


def _add_groups(f: Filters, marks: _Marks, name: str, hits: list[tuple[str, int, int]]) -> None:
    text = marks.text
    for g in _alternatives(text, hits):
        s, e = g[0][1], g[-1][2]
        neg, ns = _negated(text, s)
        vals = tuple(dict.fromkeys(v for v, _, _ in g))
        existing = next((c for c in f.conds if c.field == name and c.negate == neg), None)
        if existing is not None:  # "PT ... and acupuncture" said apart: still one set of alternatives
            existing.values = tuple(dict.fromkeys(existing.values + vals))
            existing.words += " / " + text[ns:e]
        else:
            f.add(Cond(name, vals, negate=neg, words=text[ns:e]))
        marks.mark(ns, e)


def read(question: str, latest: str | None = None) -> Reading:
    """The reading of ``question``; ``latest`` (ISO date, the newest decision in the store) anchors
    "last year" / "this year" / "last month"."""
    text = question
    marks = _Marks(text)
    f = Filters()
    mode = _mode(text, marks)
    group_by, measures = _stats(text, marks)
    if group_by or measures:
        mode = "stats"
    _partial(text, marks, f)
    _license(text, marks, f)
    _specialty(text, marks, f)
    _surgery(text, marks, f)
    _ranges(text, marks, f)
    _dates(text, marks, f, latest)
    _drug_classes(text, marks, f)
    _categories(text, marks, f)
    _regions(text, marks, f)
    _decision(text, marks, f)
    if mode == "stats" and measures == "rate":
        # "what share of X were overturned?": the outcome is what is measured, not a filter
        f.conds = [c for c in f.conds if c.field != "decision" or c.negate]
    unused = marks.unused_words()
    refused = None
    if unused and not f.active() and mode in ("count", "list"):
        refused = (f"I could not read a filter in this question (not understood: {', '.join(unused)}); "
                   "nothing was counted. Ask with a decision, category, drug class, body region, reviewer licence "
                   "or specialty, date, quantity, or partial authorization.")
    cats = {v for c in f.conds if c.field == "category" for v in c.values}
    broad = list(dict.fromkeys((w, c) for w, c in marks.broad if c in cats))
    return Reading(question, mode, f, unused, group_by=group_by, measures=measures, refused=refused, broadened=broad)


_BY = [
    ("decision_month", r"months?|monthly"), ("decision_year", r"years?|yearly|annually"),
    ("drug_class", r"drug\s+class(?:es)?|class(?:es)?\s+of\s+drugs?"), ("body_region", r"(?:body\s+)?regions?|body\s+parts?"),
    ("dwc_category", r"DWC\s+categor(?:y|ies)"), ("dwc_subcategory", r"(?:DWC\s+)?subcategor(?:y|ies)"),
    ("category", r"categor(?:y|ies)|types?\s+of\s+(?:requests?|treatments?|services?)|request\s+types?|treatment\s+types?"),
    ("reviewer_specialty", r"(?:reviewer\s+)?specialt(?:y|ies)"), ("license_state", r"(?:licen[cs]e\s+)?states?"),
    ("guideline_source", r"guidelines?(?:\s+sections?)?|guideline\s+sources?"),
    ("denial_reason", r"(?:denial\s+)?reasons?|grounds"), ("case_outcome", r"(?:case\s+)?outcomes?"),
    ("partial_authorization", r"partial\s+authori[sz]ations?"),
    ("after_surgery", r"(?:prior|previous|past)\s+surger(?:y|ies)|surg(?:ery|ical)\s+history|history\s+of\s+surgery"),
]


def _stats(text: str, marks: _Marks) -> tuple[list[str], str | None]:
    """Statistical questions: rates ("what share", "overturn rate", "how often", "most often") and
    tables ("by month", "which drug classes", "top guideline sections")."""
    measures = None
    m = re.search(r"\bwhat\s+(?:is\s+the\s+)?(?:share|percentage|percent|proportion|fraction)(?:\s+of)?\b|"
                  r"\b(?:overturn(?:ing)?|reversal|approval|uphold|success|denial)\s+rates?\b|\bhow\s+often\b|\bmost\s+often\b|"
                  r"\b(?:odds|chances?|likelihood|likely)\b", text, I)
    if m:
        measures = "rate"
        marks.mark(m.start(), m.end())
    by: list[str] = []
    wo = re.search(r"\bwith\s+(?:and|or)\s+without\s+(?:an?\s+|prior\s+|previous\s+)*(?P<w>fusions?|surger(?:y|ies))\b", text, I)
    if wo:  # "claimants with and without surgery": the two groups side by side
        by.append("fusion" if wo.group("w").lower().startswith("fusion") else "after_surgery")
        marks.mark(wo.start(), wo.end())
    for fld, p in _BY:
        for bm in re.finditer(rf"\b(?:by|per|for\s+each|across)\s+(?:the\s+)?(?:{p})\b|"
                              rf"^\s*(?:which|what)\s+(?:{p})\b|\b(?:top|most\s+(?:common|frequent|cited))\s+(?:\d+\s+)?(?:{p})\b", text, I):
            if marks.free(bm.start(), bm.end()) or re.match(r"\s*(?:which|what)\b", bm.group(), I):
                by.append(fld)
                marks.mark(bm.start(), bm.end())
                break
    for cm in re.finditer(r"\b(?:cited|mentioned|applied|used|given|invoked)\b", text, I):
        if by:
            marks.mark(cm.start(), cm.end())
    if by and measures is None:
        measures = "rate" if re.search(r"\boverturn\w*|\bupheld|\bapproved", text, I) and not re.search(r"\b(?:top|cited|most\s+common)\b", text, I) else "top"
    return by, measures


def _mode(text: str, marks: _Marks) -> str:
    for mode, rx in (("count", r"^\s*(?:how\s+many|how\s+often|number\s+of|count(?:\s+the)?|what\s+(?:is\s+the\s+)?(?:share|fraction|percentage|proportion|number)\s+of)\b"),
                     ("list", r"^\s*(?:which|list(?:\s+the|\s+all)?|show\s+(?:me\s+)?(?:all|the)?|find(?:\s+all)?|what)\b(?!.*\bwhy\b)")):
        m = re.search(rx, text, I)
        if m:
            marks.mark(m.start(), m.end())
            return mode
    m = re.search(r"\b(?:why|what\s+(?:were|are)\s+the\s+(?:reasons|grounds)|on\s+what\s+grounds|reasons?|grounds|rationale)\b", text, I)
    if m:
        marks.mark(m.start(), m.end())
    return "why"


def _partial(text: str, marks: _Marks, f: Filters) -> None:
    for m in re.finditer(r"\bpartial(?:ly)?\s+overturn\w*|\bmixed\s+(?:outcomes?|decisions?|letters?)", text, I):
        if marks.free(m.start(), m.end()):  # DWC's case outcome: some items upheld, some overturned
            neg, ns = _negated(text, m.start())
            f.add(Cond("case_outcome", ("Partial Overturn",), negate=neg, words=text[ns:m.end()]))
            marks.mark(ns, m.end())
    for m in re.finditer(r"\b(?:DMEPOS|Diagnostic\s+Testing|Evaluation\s+(?:&|and)\s+Management|E&M|Rehabilitation(?!\s+program))\b", text, I):
        if marks.free(m.start(), m.end()):  # DWC's request categories by name
            name = {"dmepos": "DMEPOS", "e&m": "Evaluation & Management"}.get(m.group().lower(), m.group())
            name = "Evaluation & Management" if name.lower().startswith("evaluation") else name
            neg, ns = _negated(text, m.start())
            f.add(Cond("dwc_category", (name,), negate=neg, words=text[ns:m.end()]))
            marks.mark(ns, m.end())
    for m in re.finditer(r"\b(?:partial(?:ly)?\s+(?:authoriz\w*|approv\w*|certif\w*|modif\w*)|partial(?:s)?|"
                         r"modified\s+(?:by\s+(?:the\s+)?(?:UR|utilization\s+review|claims\s+administrator))?|"
                         r"(?:the\s+)?remaining\s+(?:IMR\s+)?(?:eligible\s+)?portion)\b", text, I):
        if marks.free(m.start(), m.end()):
            neg, ns = _negated(text, m.start())
            f.add(Cond("partial", negate=neg, words=text[ns:m.end()]))
            marks.mark(ns, m.end())


def _license(text: str, marks: _Marks, f: Filters) -> None:
    states = "|".join(sorted((re.escape(s) for s in lx.US_STATE_NAMES), key=len, reverse=True))
    for m in re.finditer(r"\b(?:licensed|licenced|license[ds]?|licensure)\s+(?:only\s+)?(?:outside(?:\s+of)?|out\s+of|beyond)\s+California\b|"
                         r"\bout[- ]of[- ]state\b|\bnon-California\b", text, I):
        neg, ns = _negated(text, m.start())
        f.add(Cond("licensed_outside_ca", negate=neg, words=text[ns:m.end()]))
        marks.mark(ns, m.end())
    rx = re.compile(rf"\b(?P<lic>(?:licensed|licenced|a\s+license|licenses?|licensure)\s+(?P<only>only\s+)?(?:to\s+practice\s+)?in\s+)"
                    rf"(?:the\s+state\s+of\s+)?(?P<st>(?:{states})(?:\s*(?:,|or|and|/)\s*(?:{states}))*)\b", I)
    for m in rx.finditer(text):
        if not marks.free(m.start(), m.end()):
            continue
        vals = tuple(s.strip().title() for s in re.findall(rf"{states}", m.group("st"), I))
        neg, ns = _negated(text, m.start())
        f.add(Cond("license_state", vals, negate=neg, words=text[ns:m.end()]))
        if m.group("only") and not neg:
            f.add(Cond("license_count", lo=1, hi=1, words=m.group("only")))
        marks.mark(ns, m.end())
    # "without a California license", "holding a Texas license"
    for m in re.finditer(rf"\b(?:an?\s+)?(?P<st>(?:{states})(?:\s*(?:,|or|and|/)\s*(?:{states}))*)\s+(?:medical\s+)?licen[cs]es?\b", text, I):
        if marks.free(m.start(), m.end()):
            vals = tuple(x.strip().title() for x in re.findall(rf"{states}", m.group("st"), I))
            neg, ns = _negated(text, m.start())
            f.add(Cond("license_state", vals, negate=neg, words=text[ns:m.end()]))
            marks.mark(ns, m.end())
    # "California-licensed reviewers", "reviewers from Texas"
    for m in re.finditer(rf"\b(?P<st>{states})[- ]licensed\b|\breviewers?\s+(?:from|in)\s+(?P<st2>{states})\b", text, I):
        if marks.free(m.start(), m.end()):
            neg, ns = _negated(text, m.start())
            f.add(Cond("license_state", ((m.group("st") or m.group("st2")).title(),), negate=neg, words=text[ns:m.end()]))
            marks.mark(ns, m.end())


def _specialty(text: str, marks: _Marks, f: Filters) -> None:
    hits = []
    for m in _SPECIALTY_RE.finditer(text):
        if not marks.free(m.start(), m.end()):
            continue
        around = text[max(0, m.start() - 40):m.end() + 25]
        if not _REVIEWER_CTX.search(around):
            continue  # "chiropractic requests" is a category, "by chiropractors" a reviewer
        hits.append((_SPECIALTIES[int(m.lastgroup[1:])][0], m.start(), m.end()))
    _add_groups(f, marks, "specialty", hits)


_PEOPLE = r"(?:claimants?|patients?|(?:injured\s+)?workers?|employees?|applicants?|people|persons?|individuals?)"
# Surgery in the history, named as surgery or as the operation ("after a laminectomy", "patients with a
# knee replacement"); fusion and arthrodesis are the fusion filter, anything else any past surgery.
_OPERATION = (r"(?P<what>fusions?|arthrodes[ie]s|surger(?:y|ies)|surgical|operations?|operative|op|laminectom(?:y|ies)|"
              r"(?:micro)?discectom(?:y|ies)|arthroscop(?:y|ies)|arthroplast(?:y|ies)|(?:joint\s+)?replacements?|"
              r"(?:rotator\s+cuff\s+|ligament\s+|meniscus\s+)?repairs?|reconstructions?|ORIF|decompressions?|"
              r"carpal\s+tunnel\s+releases?|\w+ectom(?:y|ies)|\w+otom(?:y|ies)|\w+plast(?:y|ies))\b"
              r"(?:\s+(?:surger(?:y|ies)|operations?))?(?:\s+syndrome)?")
_QUALIFIERS = r"(?:[\w/]+[\s-]+){0,3}?"
_HAD = r"(?:had|have\s+had|has\s+had|underwent|(?:have|has)\s+undergone)"
_NOT_HAD = (r"(?:did\s+not|didn't|have\s+not|haven't|has\s+not|hasn't|had\s+not|hadn't|never)\s+(?:had|have|undergone|undergo)|"
            r"(?:had|have|has)\s+(?:had\s+)?no")
_HISTORY_RES = [
    re.compile(r"\b(?:after|following|post[- ]?|status\s+post|s/p|with\s+(?:a\s+)?(?:prior|previous|history\s+of)|"
               rf"(?:who|that)\s+(?:{_NOT_HAD}|{_HAD})|{_NOT_HAD}|{_HAD}\s+(?:a\s+|an\s+)?(?:prior\s+|previous\s+)?|"
               r"history\s+of|without\s+(?:a\s+|any\s+)?(?:prior\s+)?|"
               r"no\s+(?:prior\s+|previous\s+)?)\s*" + _QUALIFIERS + _OPERATION, I),
    # "claimants with a fusion", "patients with back surgery": whom the request is for, not what it asks
    re.compile(rf"\b{_PEOPLE}\s+with(?:out)?\s+(?:an?\s+|no\s+)?" + _QUALIFIERS + _OPERATION + r"(?!\s+requests?\b)", I),
    # "fusion patients", "post-laminectomy syndrome claimants", "non-surgical patients" (qualifiers in
    # front are taken by _qualified)
    re.compile(r"\b(?:post[- ]?|non[- ]?)?" + _OPERATION + rf"(?:\s+syndrome)?\s+{_PEOPLE}\b", I),
]
_QUALIFIER_WORD = re.compile(r"(?:spinal|spine|back|neck|single|multi\w*|one|two|three|\w+-level|[LCT]\d[-/][LCST]?\d|"
                             r"anterior|posterior|lateral|interbody|open|arthroscopic|prior|previous|past|earlier|failed|"
                             r"total|partial|left|right|bilateral)$", I)
# A planned operation is not history ("patients with a requested fusion"); nor is "post-operative PT"
# (the request names its timing; the operation may be in the same letter's requests).
_PLANNED = re.compile(r"\b(?:request\w*|propos\w*|recommend\w*|pending|plann\w*|scheduled|upcoming|candidates?|"
                      r"authori[sz]\w*|future|possible)\b", I)
_NOT_QUALIFIERS = {"a", "an", "the", "prior", "previous", "earlier", "past", "any", "history", "of", "with", "who", "had",
                   "have", "has", "undergone", "underwent", "after", "following", "post", "status", "no", "without", "never",
                   "not", "did", "didn't", "haven't", "hasn't", "hadn't", "that", "s", "p", "non", "one", "two", "three",
                   "failed", "syndrome"}


def _qualified(text: str, start: int) -> int:
    """Where the qualifiers just before ``start`` begin ("lumbar spinal fusion patients")."""
    while True:
        m = re.search(r"([A-Za-z0-9/-]+)\s+$", text[:start])
        if not m or not (_QUALIFIER_WORD.match(m.group(1)) or any(rx.fullmatch(m.group(1)) for _, rx in lx._REGION_RES)):
            return start
        start = m.start()


def _surgery(text: str, marks: _Marks, f: Filters) -> None:
    """Surgery in the claimant's history ("after fusion", "claimants with a fusion", "fusion patients",
    "patients who had no surgery"); a surgery *request* is a category, read by ``_categories``."""
    found = sorted({(_qualified(text, m.start()) if rx is _HISTORY_RES[2] else m.start(), m.end(), m.start("what"),
                     m.end("what"), m.group("what")) for rx in _HISTORY_RES for m in rx.finditer(text)})
    for start, end, ws, we, what in found:
        if not marks.free(ws, we):
            continue
        clause = text[start:end]
        after = text[end:end + 30]
        if _PLANNED.search(clause) or re.match(r"\s+(?:request\w*|recommend\w*|planned|scheduled|proposed|candidates?)\b", after, I):
            continue
        if (re.match(r"post[- ]?(?:operative|op|surgical)\b", clause, I) and not re.search(rf"{_PEOPLE}\s*$", clause, I)
                and not re.match(rf"\s+{_PEOPLE}\b", after, I)):
            # "post-operative physical therapy": when the request is for, not the claimant's history
            marks.mark(start, end)
            marks.unread.append((clause, start, end))
            continue
        pre_neg, ns = _negated(text, start)
        neg = pre_neg or bool(re.search(r"(?:^|\s)(?:no|not|never|without|non)\b|n't\b|^non-?", text[start:ws], I))
        field_ = "fusion" if re.match(r"fusion|arthrodes", what, I) else "after_surgery"
        f.add(Cond(field_, negate=neg, words=text[min(ns, start):end]))
        marks.mark(min(ns, start), end)
        for w in re.finditer(r"[A-Za-z][A-Za-z']*(?:-[A-Za-z']+)*", text[start:ws]):
            word = w.group().lower()
            if (word not in _NOT_QUALIFIERS and not re.fullmatch(_PEOPLE, word, I) and word not in _STOP and len(word) > 1
                    and not re.fullmatch(r"[lcts]\d.*|(?:post|non)-.*", word)):
                marks.unread.append((w.group(), start, end))
        # "who had surgery in 2019": the operation's date, which no filter holds (not the decision's)
        d = re.match(rf"\s*,?\s*(?:in|on|during|since|before|after)\s+(?:(?:{_MONTHS})\.?\s+)?(?:\d{{1,2}},?\s+)?{_YEAR}\b", text[end:], I)
        if d:
            marks.mark(end, end + d.end())
            marks.unread.append((d.group().strip(" ,"), end, end + d.end()))


_CMP = [
    (r"(?:more|greater|longer|older)\s+than|over|above|exceeding|beyond", "gt"),
    (r"(?:fewer|less|younger|shorter)\s+than|under|below", "lt"),
    (r"at\s+least|no\s+(?:fewer|less)\s+than|a\s+minimum\s+of|minimum(?:\s+of)?", "ge"),
    (r"at\s+most|no\s+more\s+than|up\s+to|a\s+maximum\s+of|maximum(?:\s+of)?", "le"),
    (r"exactly", "eq"),
]
_CMP_RE = "|".join(f"(?P<{op}>{p})" for p, op in _CMP)
_RANGE_UNITS = [
    ("quantity", r"sessions?|visits?|treatments?|tablets?|pills?|units?|refills?"),
    ("items_in_letter", r"(?:disputed\s+)?(?:items?|requests?|services?|treatments?)\s+(?:in\s+(?:the|one|a)\s+letter|per\s+letter)|(?:disputed\s+)?items?"),
    ("license_count", r"states?"),
    ("claimant_age", r"years?(?:\s+old)?|(?:years?\s+)?of\s+age"),
]


def _num(s: str) -> int:
    return int(s) if s.isdigit() else lx.NUMBER_WORDS.get(s.lower(), {"fifty": 50, "seventy": 70, "eighty": 80}.get(s.lower(), 0))


def _ranges(text: str, marks: _Marks, f: Filters) -> None:
    for name, unit in _RANGE_UNITS:
        # "more than 12 sessions", "at least 3 items", "2 or more states", "between 6 and 12 visits", "12 sessions or fewer"
        pats = [
            rf"\b(?:{_CMP_RE})\s+(?P<n>{_NUMW})\s+(?:\w+\s+){{0,2}}?(?:{unit})\b",
            rf"\b(?P<n2>{_NUMW})\s+or\s+(?P<dir>more|fewer|less|greater|older|younger)\s+(?:\w+\s+){{0,2}}?(?:{unit})\b",
            rf"\b(?P<n3>{_NUMW})\s+(?:\w+\s+){{0,2}}?(?:{unit})\s+or\s+(?P<dir2>more|fewer|less)\b",
            rf"\bbetween\s+(?P<a>{_NUMW})\s+and\s+(?P<b>{_NUMW})\s+(?:\w+\s+){{0,2}}?(?:{unit})\b",
        ]
        for p in pats:
            for m in re.finditer(p, text, I):
                if not marks.free(m.start(), m.end()):
                    continue
                lo, hi = _bounds(m)
                neg, ns = _negated(text, m.start())
                f.add(Cond(name, lo=lo, hi=hi, negate=neg, words=text[ns:m.end()]))
                marks.mark(ns, m.end())
                lead = re.search(r"\b(?:licensed|licenced|with\s+licenses)\s+in\s+$", text[:ns], I)
                if name == "license_count" and lead:
                    marks.mark(lead.start(), ns)
    # claimants "over 60", "aged 40 to 60", "older than 50", "under 40"
    for m in re.finditer(rf"\b(?:claimants?|patients?|workers?|applicants?|employees?|injured\s+workers?)\s+(?:who\s+(?:are|were)\s+)?"
                         rf"(?:(?:aged?\s+)?(?:{_CMP_RE})\s+(?P<n>{_NUMW})|aged?\s+(?P<a>{_NUMW})\s*(?:to|-|and)\s*(?P<b>{_NUMW})|"
                         rf"(?P<n2>{_NUMW})\s+or\s+(?P<dir>older|younger|over|under))(?:\s+years?(?:\s+old)?)?", text, I):
        if marks.free(m.start(), m.end()):
            lo, hi = _bounds(m)
            f.add(Cond("claimant_age", lo=lo, hi=hi, words=m.group()))
            marks.mark(m.start(), m.end())


def _bounds(m: re.Match) -> tuple[int | None, int | None]:
    g = m.groupdict()
    if g.get("a"):
        return _num(g["a"]), _num(g["b"])
    n = _num(g.get("n") or g.get("n2") or g.get("n3"))
    d = (g.get("dir") or g.get("dir2") or "").lower()
    if d:
        return (n, None) if d in ("more", "greater", "older", "over") else (None, n)
    if g.get("gt"):
        return n + 1, None
    if g.get("lt"):
        return None, n - 1
    if g.get("ge"):
        return n, None
    if g.get("le"):
        return None, n
    return n, n


def _date_field(text: str) -> str:
    if re.search(r"\binjur(?:y|ed|ies)\b|date\s+of\s+injury|\bDOI\b", text, I):
        return "date_of_injury"
    if re.search(r"\b(?:UR|utilization\s+review)\s+(?:denial|denied|decision)|denied\s+by\s+(?:UR|utilization\s+review)", text, I):
        return "ur_denial_date"
    return "decision_date"


def _month_no(s: str) -> int:
    return lx.MONTHS[s.lower().rstrip(".")[:3] if s.lower()[:4] != "sept" else "sept"]


def _dates(text: str, marks: _Marks, f: Filters, latest: str | None) -> None:
    fld = _date_field(text)
    for s, e, lo, hi in _merge_alternatives(text, _date_spans(text, latest)):
        if marks.free(s, e):
            neg, ns = _negated(text, s)
            f.add(Cond(fld, lo=lo, hi=hi, negate=neg, words=text[ns:e].strip()))
            marks.mark(ns, e)
    if any(c.field == fld for c in f.conds):
        for m in re.finditer(r"\b(?:decided|decision\s+dates?|decisions?\s+(?:dated|made)|date\s+of\s+injury|injur(?:y|ed|ies)|"
                             r"(?:UR|utilization\s+review)\s+(?:denial|denied|decision)s?|denied\s+by\s+(?:UR|utilization\s+review))\b", text, I):
            marks.mark(m.start(), m.end())


def _period(mon: str | None, yr: str | None, text: str, latest: str | None) -> tuple[str, str] | None:
    """(first day, last day) of a month or a year; a month without a year is the last one on or
    before the newest decision."""
    if yr is None and latest:
        yr = latest[:4]
    if yr is None:
        return None
    y = int(yr)
    if mon is None:
        return f"{y}-01-01", f"{y}-12-31"
    mo = _month_no(mon)
    if latest and yr == latest[:4] and mo > int(latest[5:7]) and not re.search(re.escape(yr), text):
        y -= 1  # "in December" with no year: the last December on or before the newest decision
    return f"{y}-{mo:02d}-01", f"{y}-{mo:02d}-{calendar.monthrange(y, mo)[1]:02d}"


Span = tuple[int, int, "str | None", "str | None"]  # start, end, first day, last day (None = open)


def _date_spans(text: str, latest: str | None) -> list[Span]:
    """Every date range the question states: between ... and ..., in/since/before a month or year,
    last/this/past year or month (relative to the newest decision)."""
    M, Y = _MONTHS, _YEAR
    spans: list[Span] = []
    for m in re.finditer(rf"\bbetween\s+(?P<m1>{M})?\s*(?P<y1>{Y})?\s+and\s+(?P<m2>{M})?\s*(?P<y2>{Y})?\b", text, I):
        if not (m.group("m1") or m.group("y1")) or not (m.group("m2") or m.group("y2")):
            continue
        y2 = m.group("y2") or m.group("y1")
        a, b = _period(m.group("m1"), m.group("y1") or y2, text, latest), _period(m.group("m2"), y2, text, latest)
        if a and b:
            spans.append((m.start(), m.end(), a[0], b[1]))
    for m in re.finditer(rf"\b(?P<kw>in|during|for|from|of|since|after|before|until|prior\s+to|by)?\s*(?P<m>{M})?\s*,?\s*(?P<y>{Y})\b|"
                         rf"\b(?P<kw2>in|during|since|after|before|until)\s+(?P<m2>{M})\b(?!\s*,?\s*{Y})", text, I):
        mon, yr = m.group("m") or m.group("m2"), m.group("y")
        kw = (m.group("kw") or m.group("kw2") or "in").lower()
        p = _period(mon, yr, text, latest) if (mon or yr) else None
        if not p:
            continue
        lo, hi = {"since": (p[0], None), "after": (_next_day(p[1]), None), "before": (None, _prev_day(p[0])),
                  "until": (None, p[1]), "prior to": (None, _prev_day(p[0])), "by": (None, p[1])}.get(kw, p)
        spans.append((m.start(), m.end(), lo, hi))
    if latest:
        spans += _relative_spans(text, latest)
    return spans


def _relative_spans(text: str, latest: str) -> list[Span]:
    out: list[Span] = []
    ly = int(latest[:4])
    for m in re.finditer(r"\b(?P<w>last|this|past|previous)\s+(?P<u>year|month)\b", text, I):
        w = m.group("w").lower()
        if m.group("u").lower() == "year":
            y = ly - (1 if w in ("last", "previous") else 0)
            lo, hi = (f"{y}-01-01", f"{y}-12-31") if w != "past" else (_minus_year(latest), latest)
        else:
            yy, mm = int(latest[:4]), int(latest[5:7])
            if w in ("last", "previous"):
                yy, mm = (yy - 1, 12) if mm == 1 else (yy, mm - 1)
            lo, hi = f"{yy}-{mm:02d}-01", f"{yy}-{mm:02d}-{calendar.monthrange(yy, mm)[1]:02d}"
        out.append((m.start(), m.end(), lo, hi))
    return out


def _merge_alternatives(text: str, spans: list[Span]) -> list[Span]:
    """"in 2020 or 2021", "in January or February 2017": one condition covering both periods."""
    merged: list[Span] = []
    for sp in sorted(spans):
        if (merged and merged[-1][2] and merged[-1][3] and sp[2] and sp[3]
                and re.fullmatch(r"\s*(?:,|or|and|/|,\s*or|,\s*and)\s*(?:in\s+|during\s+)?", text[merged[-1][1]:sp[0]], I)):
            a = merged[-1]
            merged[-1] = (a[0], sp[1], min(a[2], sp[2]), max(a[3], sp[3]))
        else:
            merged.append(sp)
    return merged


def _next_day(iso: str) -> str:
    return date.fromordinal(date.fromisoformat(iso).toordinal() + 1).isoformat()


def _prev_day(iso: str) -> str:
    return date.fromordinal(date.fromisoformat(iso).toordinal() - 1).isoformat()


def _minus_year(iso: str) -> str:
    d = date.fromisoformat(iso)
    try:
        return d.replace(year=d.year - 1).isoformat()
    except ValueError:  # 29 February
        return d.replace(year=d.year - 1, day=28).isoformat()


def _drug_classes(text: str, marks: _Marks, f: Filters) -> None:
    hits = []
    for cls, rx in _DRUG_CLASS_RES:
        for m in rx.finditer(text):
            if marks.free(m.start(), m.end()):
                hits.append((cls, m.start(), m.end()))
    # a drug by name stands for its class ("Norco requests" -> opioid)
    for name, cls, _dwc, s, e in drugs.drugs_in(text):
        if marks.free(s, e) and not any(a <= s < b for _, a, b in hits):
            hits.append((cls, s, e))
    _add_groups(f, marks, "drug_class", hits)


def _categories(text: str, marks: _Marks, f: Filters) -> None:
    hits = []
    for cat, rx in _CATEGORY_RES:
        for m in rx.finditer(text):
            if marks.free(m.start(), m.end()) and not any(a < m.end() and m.start() < b for _, a, b in hits):
                hits.append((cat, m.start(), m.end()))
    for cat, rx in lx._CATEGORY_RES:  # the letters' own words ("ESI", "TENS", "Functional capacity evaluation")
        for m in rx.finditer(text):
            if marks.free(m.start(), m.end()) and not any(a < m.end() and m.start() < b for _, a, b in hits):
                if cat == "medication" and re.fullmatch(r"\d.*|#.*", m.group()):
                    continue
                hits.append((cat, m.start(), m.end()))
                if cat == "surgery" and not re.search(r"surg|operat", m.group(), I):  # "fusion": one kind of surgery
                    marks.broad.append((m.group(), cat))
    keep = []
    for h in hits:
        w, after = text[h[1]:h[2]], text[h[2]:h[2] + 40]
        if h[0] == "surgery" and re.fullmatch(r"surgeons?", w, I) and not re.search(r"(?:assistant|co-?)\s*$", text[:h[1]], I):
            continue  # a surgeon reviews or treats; an "assistant surgeon" is requested
        if h[0] == "surgery" and re.fullmatch(r"surgical", w, I) and any(o[0] != "surgery" and 0 <= o[1] - h[2] <= 1 for o in hits):
            continue  # "surgical consultation": a consultation
        plan = re.search(r"\b(?:scheduled|planned|pending|awaiting|candidates?)\s+(?:for\s+)?(?:a\s+)?$", text[:h[1]], I)
        if h[0] == "surgery" and (plan or re.match(r"\s+candidates?\b", after, I)) and not re.match(r"\s+requests?\b", after, I):
            s0 = plan.start() if plan else h[1]
            marks.mark(s0, h[2])
            marks.unread.append((text[s0:h[2]], s0, h[2]))  # "patients scheduled for surgery": no filter holds plans
            continue
        keep.append(h)
    hits = keep
    dc = f.get("drug_class")
    if dc is not None and not dc.negate:
        hits = [h for h in hits if h[0] != "medication"]  # a class already says medication
    _add_groups(f, marks, "category", hits)
    med = next((c for c in f.conds if c.field == "category" and not c.negate and c.values == ("medication",)), None)
    if med is None and dc is not None and dc.negate:
        pass  # "other than opioids" with no category word: all items except opioid ones


def _regions(text: str, marks: _Marks, f: Filters) -> None:
    hits = []
    for reg, rx in lx._REGION_RES:
        for m in rx.finditer(text):
            if marks.free(m.start(), m.end()) and not any(a < m.end() and m.start() < b for _, a, b in hits):
                hits.append((reg, m.start(), m.end()))
    spec = [h for h in hits if h[0] in _SPINE and h[0] != "spine"]
    out = []
    for h in hits:
        if h[0] == "spine":
            if any(abs(h[1] - s2[2]) <= 1 or abs(s2[1] - h[2]) <= 1 for s2 in spec):
                marks.mark(h[1], h[2])  # "lumbar spine": the part says it
                continue
            for part in _SPINE:  # "spine" alone: any spinal region
                out.append((part, h[1], h[2]))
            continue
        out.append(h)
    _add_groups(f, marks, "region", out)


def _decision(text: str, marks: _Marks, f: Filters) -> None:
    hits = []
    for dec, p in _DECISIONS:
        for m in re.finditer(p, text, I):
            if marks.free(m.start(), m.end()) and not any(a < m.end() and m.start() < b for _, a, b in hits):
                hits.append((dec, m.start(), m.end()))
    # "upheld or overturned" says nothing: drop a group holding both
    for g in _alternatives(text, hits):
        vals = {v for v, _, _ in g}
        s, e = g[0][1], g[-1][2]
        if len(vals) > 1:
            marks.mark(s, e)
            continue
        neg, ns = _negated(text, s)
        dec = g[0][0]
        f.add(Cond("decision", (dec,), negate=neg, words=text[ns:e]))
        marks.mark(ns, e)
