"""Deterministic layout parser for MAXIMUS IMR final determination letters (no LLM).

Works on the normalised text (see ``load.normalize``); every span is in normalised offsets and
``Letter.norm.span_to_orig`` turns it into offsets of the original text.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from .lexicon import DATE_RE, US_STATE_NAMES as US_STATES, parse_date

I = re.IGNORECASE


@dataclass
class Span:
    start: int
    end: int
    text: str

    @classmethod
    def of(cls, text: str, start: int, end: int) -> "Span | None":
        """Span of ``text[start:end]`` with surrounding whitespace/punctuation trimmed."""
        while start < end and text[start] in " \n\t:;":
            start += 1
        while end > start and text[end - 1] in " \n\t":
            end -= 1
        return cls(start, end, text[start:end]) if end > start else None


@dataclass
class ParsedItem:
    index: int
    request: Span
    decision: Span
    outcome: str | None = None  # the decision in the letter's terms when its words are not an outcome word
    ca_guideline: Span | None = None
    mx_guideline: Span | None = None
    rationale: Span | None = None
    original: Span | None = None  # partial authorization: the request as filed
    authorized: Span | None = None  # ... the part the claims administrator authorized


@dataclass
class Layout:
    header: dict[str, Span] = field(default_factory=dict)  # raw text spans
    header_values: dict[str, str] = field(default_factory=dict)  # parsed (ISO dates)
    specialties: list[Span] = field(default_factory=list)
    license_states: list[Span] = field(default_factory=list)
    summary: Span | None = None
    items: list[ParsedItem] = field(default_factory=list)
    features: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # why it is not a usable letter


HOW = re.compile(r"HOW\s+THE\s+IMR\s+FINAL\s+DETERMINATION\s+WAS\s+MADE", I)
SUMMARY = re.compile(r"CLINICAL\s+CASE\s+SUMMARY", I)
SUMMARY_INTRO = re.compile(
    r"\s*The\s+expert\s+reviewer\s+developed\s+the\s+following\s+clinical\s+case\s+summary\s+based\s+on\s+a\s+"
    r"review\s+of\s+the\s+case\s+file,?\s+including\s+all\s+medical\s+records\s*:?", I)
ISSUES = re.compile(r"IMR\s+ISSUES?,?\s+DECISIONS?,?\s+AND\s+RATIONALES?", I)
ISSUES_INTRO = re.compile(
    r"\s*The\s+Final\s+Determination\s+was\s+based\s+on\s+decisions?\s+for\s+the\s+disputed\s+items?\s*/\s*services?\s+"
    r"set\s+forth\s+below\s*:?", I)
CA = re.compile(r"Claims\s+Administrator\s+guidelines?\s*:", I)
MX = re.compile(r"MAXIMUS\s+guidelines?\s*:", I)
DR = re.compile(r"Decision\s+rationale\s*:", I)
OUTCOME = re.compile(r":\s*(?P<o>[A-Za-z][A-Za-z/-]*(?:\s+[A-Za-z][A-Za-z/-]*){0,3})\s*$")
KNOWN_OUTCOMES = {"upheld", "overturned", "partially overturned", "upheld in part", "overturned in part",
                  "withdrawn", "dismissed", "ineligible", "not eligible", "modified"}
SENTENCE_END = re.compile(r"[.?!][\"')\]]?\s+(?=[A-Z0-9#(\"])")

_HEADER_FIELDS = {
    "case_number": re.compile(r"Case\s+(?:Number|No\.?|#)\s*:?\s*(?P<v>[A-Z]{2}\d{2}-\d{5,8}|[A-Z0-9][A-Z0-9-]{4,})", I),
    "date_assigned": re.compile(r"Date\s+Assigned\s*:?\s*", I),
    "date_of_injury": re.compile(r"Date\s+of\s+Injury\s*:?\s*", I),
    "decision_date": re.compile(r"Decision\s+Date\s*:?\s*", I),
    "ur_denial_date": re.compile(r"UR\s+Denial\s+Date\s*:?\s*", I),
    # pdftotext -layout puts the two-line label around the date: "Application  11/28/2016 / Received:"
    "application_received": re.compile(r"Application\s+(?:Received\s*:?\s*|(?=(?:" + DATE_RE.pattern + r")\s+Received\s*:))", I),
    "priority": re.compile(r"Priority\s*:\s*(?P<v>[A-Za-z]+(?:\s+[A-Za-z]+)??)(?=\s+Application|\s+Date|\s*\n|\s*$|\s+[A-Z][a-z]+\s*:)", I),
}
_DATE_AT = re.compile(r"\s*(?:" + DATE_RE.pattern + r")", I)
_LICENSE_BLOCK = re.compile(r"State\s*\(s\)\s+of\s+Licensure\s*:\s*(?P<v>.+?)(?=\s*Certification|\s*\n|$)", I)
_SPECIALTY_BLOCK = re.compile(r"Certification\s*\(s\)\s*/\s*Specialty\s*:\s*(?P<v>.+?)(?=\s*\n|\s*CLINICAL\s+CASE|$)", I)
_SPECIALTY_SENT = re.compile(r"Board[- ]Certified\s+in\s+(?P<v>[^.]+?)(?=\s+and\s+(?:is\s+)?licensed|\s*[.;]|\s*$)", I)
_LICENSE_SENT = re.compile(r"licensed\s+to\s+practice\s+in\s+(?P<v>[^.]+?)\s*(?:\.|$)", I)



def _split(text: str, base: int, pattern: str) -> list[Span]:
    out = []
    for m in re.finditer(pattern, text):
        sp = Span.of(text, m.start(), m.end())
        if sp:
            out.append(Span(base + sp.start, base + sp.end, sp.text.rstrip(".")))
            out[-1].end = out[-1].start + len(out[-1].text)
    return out


def parse(text: str) -> Layout:
    """Parse a normalised letter into its template parts. Never raises; see ``Layout.problems``."""
    if NOTICE_2013.search(text[:3000]) and not ISSUES.search(text):
        return _parse_notice_2013(text)
    lay = Layout()
    cases = list(dict.fromkeys(m.group("v") for m in _HEADER_FIELDS["case_number"].finditer(text)))
    if len(cases) > 1 or len(HOW.findall(text)) > 1:
        what = f"case numbers {', '.join(cases[:5])}" if len(cases) > 1 else f"{len(HOW.findall(text))} determination headings"
        lay.problems.append(f"several letters in one file ({what}); split it into one letter per file")
        return lay
    how, summ, iss = HOW.search(text), SUMMARY.search(text), ISSUES.search(text)
    head_end = min(x.start() for x in (how, summ, iss) if x) if (how or summ or iss) else min(len(text), 1500)
    _parse_header(text, head_end, lay)
    _parse_reviewer(text, (how.end() if how else 0), (summ.start() if summ else head_end if how is None else len(text)), lay)
    if summ:
        s = summ.end()
        intro = SUMMARY_INTRO.match(text, s)
        if intro:
            s = intro.end()
        lay.summary = Span.of(text, s, iss.start() if iss and iss.start() > s else len(text))
    if not iss:
        if IMR_WORDS.search(text[:5000]):
            # an IMR letter in a template we do not parse: say so, never a silent empty record
            lay.features.append("unknown_layout")
            return lay
        lay.problems.append("not an IMR determination letter: no 'IMR ISSUES, DECISIONS AND RATIONALES' section")
        return lay
    start = iss.end()
    intro = ISSUES_INTRO.match(text, start)
    if intro:
        start = intro.end()
    _parse_items(text, start, lay)
    return lay


def _parse_header(text: str, end: int, lay: Layout) -> None:
    region = text[:end]
    for name, rx in _HEADER_FIELDS.items():
        m = rx.search(region)
        if not m:
            continue
        if "v" in rx.groupindex:
            sp = Span(m.start("v"), m.end("v"), m.group("v"))
            lay.header[name] = sp
            lay.header_values[name] = sp.text.strip()
            continue
        d = _DATE_AT.match(region, m.end())
        if d:
            iso = parse_date(d)
            sp = Span.of(text, d.start(), d.end())
            if iso and sp:
                lay.header[name] = sp
                lay.header_values[name] = iso
            elif sp:
                lay.features.append(f"impossible_date:{name}:{sp.text}")
    if lay.header:
        lay.features.append("header")


def _parse_reviewer(text: str, start: int, end: int, lay: Layout) -> None:
    region = text[start:end]
    lic = _LICENSE_BLOCK.search(region)
    spec = _SPECIALTY_BLOCK.search(region)
    if lic or spec:
        lay.features.append("credentials_block")
    else:
        lic = _LICENSE_SENT.search(region)
        spec = _SPECIALTY_SENT.search(region)
        if lic or spec:
            lay.features.append("credentials_sentence")
    if lic:
        for sp in _split(lic.group("v"), start + lic.start("v"), r"[^,;]+?(?=\s*(?:,|;|\band\b|$))"):
            words = sp.text.strip()
            if words.lower().startswith("and "):
                continue
            if words.lower() in US_STATES:
                lay.license_states.append(sp)
    if spec:
        lay.specialties.extend(_split(spec.group("v"), start + spec.start("v"), r"[^,;]+"))


def _parse_items(text: str, start: int, lay: Layout) -> None:
    anchors = [m for m in CA.finditer(text, start)]
    if not anchors:
        anchors = [m for m in MX.finditer(text, start)] or [m for m in DR.finditer(text, start)]
    if not anchors:
        lay.problems.append("truncated or unrecognised letter: no disputed item (no 'Claims Administrator guideline'/'Decision rationale' label) after the issues heading")
        return
    window_start = start
    pending: ParsedItem | None = None
    for k, a in enumerate(anchors):
        nxt = anchors[k + 1].start() if k + 1 < len(anchors) else len(text)
        window = text[window_start:a.start()]
        om = OUTCOME.search(window.rstrip())
        if not om:
            lay.problems.append(f"item {k + 1}: no decision found before its guideline block (expected 'request: Upheld')")
            return
        colon = window_start + om.start()
        req_start = window_start
        if pending is not None:
            nl = text.rfind("\n", window_start, colon)
            if nl >= 0:
                req_start = nl + 1
            else:
                ends = [m.end() for m in SENTENCE_END.finditer(text, window_start, colon)]
                req_start = ends[-1] if ends else window_start
            _close(text, pending, req_start, lay)
        request = Span.of(text, req_start, colon)
        decision = Span(window_start + om.start("o"), window_start + om.end("o"), om.group("o"))
        if request is None:
            lay.problems.append(f"item {k + 1}: empty request line")
            return
        item = ParsedItem(k, request, decision)
        _split_partial(text, item)
        # labels inside this anchor's block
        mx = MX.search(text, a.start(), nxt) if anchors[0].re is CA else None
        dr = DR.search(text, a.start(), nxt)
        if anchors[0].re is CA:
            item.ca_guideline = Span.of(text, a.end(), (mx or dr).start() if (mx or dr) else nxt)
        if mx:
            item.mx_guideline = Span.of(text, mx.end(), dr.start() if dr else nxt)
        elif anchors[0].re is MX:
            item.mx_guideline = Span.of(text, a.end(), dr.start() if dr else nxt)
        if not dr:
            lay.problems.append(f"truncated letter: item {k + 1} ('{request.text[:40]}') has no decision rationale")
            return
        window_start = dr.end()
        item.rationale = Span(dr.end(), dr.end(), "")  # end fixed by _close
        lay.items.append(item)
        pending = item
    if pending is not None:
        _close(text, pending, len(text), lay)
        _check_ending(pending, lay)
    for it in lay.items:
        if it.outcome is None and it.decision.text.lower() not in KNOWN_OUTCOMES:
            lay.features.append(f"unusual_outcome:{it.decision.text}")


# --- the 2013 "Notice of Independent Medical Review Determination" ----------------------------------
# "1) MAXIMUS Federal Services, Inc. has determined the request for <X> is not medically necessary
# and appropriate." (Upheld) / "... is medically necessary and appropriate." (Overturned). The list
# is printed twice (cover and decision section); the first of each number is kept.

NOTICE_2013 = re.compile(r"Notice\s+of\s+Independent\s+Medical\s+Review\s+Determination|has\s+determined\s+the\s+request\s+for", I)
# Other IMR families known by their headings: recognised as IMR letters, parsed by no rule yet.
IMR_WORDS = re.compile(r"Independent\s+Medical\s+Review|IMR\s+DECISION|MEDICAL\s+PROFESSIONAL\s+REVIEW|ISSUE\s+AT\s+DISPUTE", I)
_DETERMINED = re.compile(
    r"(?P<n>\d{1,2})\)\s*MAXIMUS\s+Federal\s+Services,?\s+Inc\.?\s+has\s+determined\s+(?:that\s+)?the\s+request\s+for\s+"
    r"(?P<req>.+?)\s+(?P<dec>is\s+(?P<neg>not\s*)?medically\s+necessary\s+and\s+appropriate)", I | re.DOTALL)
_NOTICE_HEADER = {
    "decision_date": re.compile(r"Determination\s+Dated\s*:\s*", I),
    "application_received": re.compile(r"Independent\s+Medical\s+Review\s+was\s+filed\s+on\s+", I),
    "ur_denial_date": re.compile(r"Utilization\s+Review\s+Denial\s+dated\s+", I),
}
_QUALIFICATIONS = re.compile(r"Medical\s+Qualifications\s+of\s+the\s+Expert\s+Reviewer\s*:?", I)
_CASE_SUMMARY = re.compile(r"Case\s+Summary\s*:\s*(?:Disclaimer\s*:[^.]*?dated\s+[^.]*?\d{4}\.)?", I)


def _parse_notice_2013(text: str) -> Layout:
    lay = Layout(features=["notice_2013"])
    for name, rx in _NOTICE_HEADER.items():
        m = rx.search(text)
        d = m and _DATE_AT.match(text, m.end())
        if d and (iso := parse_date(d)) and (sp := Span.of(text, d.start(), d.end())):
            lay.header[name], lay.header_values[name] = sp, iso
    case = _HEADER_FIELDS["case_number"].search(text[:3000])
    if case:
        lay.header["case_number"] = Span(case.start("v"), case.end("v"), case.group("v"))
        lay.header_values["case_number"] = case.group("v")
    q = _QUALIFICATIONS.search(text)
    cs = _CASE_SUMMARY.search(text)
    if q:
        _parse_reviewer(text, q.end(), cs.start() if cs and cs.start() > q.end() else len(text), lay)
    if cs:
        lay.summary = Span.of(text, cs.end(), len(text))
    seen: set[str] = set()
    for m in _DETERMINED.finditer(text):
        if m.group("n") in seen:
            continue
        seen.add(m.group("n"))
        req = Span.of(text, m.start("req"), m.end("req"))
        dec = Span(m.start("dec"), m.end("dec"), m.group("dec"))
        if req:
            lay.items.append(ParsedItem(len(lay.items), req, dec, outcome="Upheld" if m.group("neg") is not None else "Overturned"))
    if not lay.items:
        lay.problems.append("2013 IMR notice without a numbered determination ('has determined the request for ...')")
    else:
        lay.features.append("no_rationale")
    return lay


# "<X> was the original request. <Y> was authorized by the Claims Administrator. The remaining IMR
# eligible portion of the original request, <Z> is: Upheld" -- IMR decided <Z> only. Variants seen
# or reported: "... portion of the original request is for <Z>", "... <Y> was authorized ...,
# leaving the original request IMR eligible. The original request, <Z> is".
_PARTIAL = re.compile(
    r"^(?P<orig>.+?)\s+(?:was|were)\s+the\s+original\s+requests?\.\s+"
    r"(?:(?P<auth>.+?)\s+(?:was|were)\s+(?:authorized|approved|certified|modified)\s+by\s+the\s+Claims\s+Administrator"
    r"(?:,?\s+leaving\s+the\s+original\s+request\s+IMR\s+eligible)?\.\s+)?"
    r"(?:The\s+remaining\s+IMR\s+eligible\s+portion\s+of\s+the\s+original\s+request|The\s+original\s+request)"
    r"(?:\s+is\s+for|\s*,|\s+is)?\s+(?P<disp>.+?)(?:\s+(?:is|are))?\s*$", I | re.DOTALL)


def _split_partial(text: str, item: ParsedItem) -> None:
    """A partial authorization: ``request`` becomes the disputed portion, the rest is kept beside it."""
    req = item.request
    if "original request" not in req.text.lower():
        return
    m = _PARTIAL.match(req.text)
    if not m:
        return
    def sp(g: str) -> Span | None:
        return Span.of(text, req.start + m.start(g), req.start + m.end(g)) if m.group(g) else None
    disputed = sp("disp")
    if disputed is None or disputed.text.lower() in ("is", "are"):
        return
    item.original, item.authorized, item.request = sp("orig"), sp("auth"), disputed


_DANGLING = re.compile(r"(?:^|\n)[^\n]{5,300}:\s*(?:Upheld|Overturned)\b[^\n]{0,40}$", I)


# The sentence that closes every rationale: "... is/was (not) medically necessary", "... is not
# supported", "... is appropriate". A complete letter may lack only the final period.
_CONCLUSION = re.compile(r"medically\s+necessary|not\s+necessary|(?:is|are|was|were)\s+(?:not\s+)?(?:supported|warranted|indicated|"
                         r"recommended|appropriate|reasonable|certified|approved)|(?:upheld|overturned)\W*$", I)


def _check_ending(last: ParsedItem, lay: Layout) -> None:
    """A letter cut short leaves a half item or a rationale stopping before its conclusion."""
    r = last.rationale
    if r is None:
        return
    if _DANGLING.search(r.text) or re.search(r"(?:Claims\s+Administrator|MAXIMUS)\s+[Gg]uid?e?l?i?n?e?s?\W*$|Claims\s+Adm\w*$", r.text):
        lay.problems.append(f"truncated letter: text ends inside item {last.index + 2}, after its request line")
    elif not re.search(r"[.!?)\]\"']\s*$", r.text):
        final = re.split(r"(?<=[.!?])\s+", r.text[-400:])[-1]
        if "\n" not in final and _CONCLUSION.search(final):
            # seen on a real DWC letter: complete, its last sentence without a period; keep and say so
            lay.features.append("no_final_period")
        else:
            lay.problems.append(f"truncated letter: the rationale of item {last.index + 1} stops mid-sentence, before any conclusion")


def _close(text: str, item: ParsedItem, end: int, lay: Layout) -> None:
    sp = Span.of(text, item.rationale.start, end)
    item.rationale = sp
    if sp is None:
        lay.problems.append(f"truncated letter: item {item.index + 1} has an empty decision rationale")
