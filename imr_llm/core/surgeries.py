"""The claimant's past operations, read from a letter's case summary (no model): what the filters
``after_surgery`` and ``fusion`` count, so a planned, requested, denied or negated operation, a
clinic's name or a manual therapy is not one. Pure functions over the summary text; every value
carries the span of its words."""
from __future__ import annotations

import re

from . import lexicon as lx

_KW = (r"fusions?|laminectom(?:y|ies)|hemilaminectom(?:y|ies)|laminotom(?:y|ies)|discectom(?:y|ies)|microdiscectom(?:y|ies)|"
       r"foraminotom(?:y|ies)|arthroplast(?:y|ies)|replacements?|repairs?|releases?|reconstructions?|meniscectom(?:y|ies)|"
       r"arthroscop(?:y|ies)|ORIF|ACDF|[PTAX]LIF|arthrodes[ie]s|decompressions?|debridements?|laparotom(?:y|ies)|resections?|"
       r"(?:open|operative|closed)\s+reduction(?:\s+(?:and|with))?\s+(?:internal\s+fixation|percutaneous\s+pinning)|internal\s+fixation|"
       r"(?:spine|back|neck|knee|shoulder|hip|wrist|hand|elbow|ankle|foot)\s+surger(?:y|ies)"
       r"(?!\s+(?:consult\w*|evaluation|referral|clinic|department|follow\w*|specialist|surgeon))")
_KW_RE = re.compile(rf"\b(?:{_KW})\b", re.IGNORECASE)  # whole words: "effusion" is no fusion
_PROC = re.compile(
    r"(?P<proc>\b(?:(?:anterior|posterior|lateral|interbody|single|one|two|three|multi|\w+-level|level|spinal|lumbar|cervical|thoracic|"
    r"right|left|bilateral|total|partial|knee|hip|shoulder|decompression|and|[CLT]\d{1,2}-[CLTS]?\d{1,2}|arthroscopic|open|carpal|tunnel|"
    r"rotator|cuff|meniscal|anterior\s+cruciate|lumbosacral|exploratory|revision|subacromial)[\s-]+){0,6}"
    + rf"(?:{_KW})\b(?:\s+(?:and|with)\s+(?!(?:\w+\s+){{0,2}}?(?:left|right|bilateral|knee|shoulder|hip|wrist|ankle|elbow|hand|foot|neck|back)\b)"
    rf"(?:\w+\s+){{0,2}}?(?:{_KW})\b)?(?:\s+of\s+the\s+(?:\w+\s+){{0,2}}?nerve)?(?:\s+surgery)?)", re.IGNORECASE)
HINTS = ("fusion", "ectom", "otom", "plast", "repair", "release", "reconstruction", "arthroscop", "orif", "acdf", "lif",
         "arthrodes", "decompression", "debridement", "replacement", "resection", "fixation", "pinning", "surger")
FUSION = re.compile(r"\bfusions?\b|\bACDF\b|\b[PTAX]LIF\b|arthrodes[ie]s", re.IGNORECASE)  # not "effusion"

# past, somewhere in the sentence ("Past treatment included ..., and anterior cervical fusion in 2014")
_PAST = re.compile(r"status[\s-]+post|\bs/p\b|underw[ea]nt|undergone|\bhad\b|history\s+of|performed|following|prior|previous|"
                   r"earlier|included", re.IGNORECASE)
# done: one of these a few words before the operation ("status post", "underwent the requested", "following a")
_DONE = re.compile(r"(?:status[\s-]+post|\bs/p|underw[ea]nt|undergone|history\s+of|following|\bafter)\s+(?:\S+\s+){0,3}$", re.IGNORECASE)
_PLANNED = re.compile(
    r"\brequest\w*|\brecommend\w*|\btreatment\s+plan|\bplan(?:s|ned)?\b|\bschedul\w*|\bcandidate|\bto\s+be\s+performed|\bpending\b|"
    r"\bpropos\w*|\bconsider(?:ed|ing|ation)?\b|\bauthoriz\w*|\bcertif\w*|\bdenied\b|\bdeny\b|\bwould\s+benefit|\bawait\w*|"
    r"\bfuture\b|\bwill\b|(?-i:\bmay\b)|\bshould\b|\bindicated\s+for|\badvised\b|\breferr\w*|\bconsult\w*", re.IGNORECASE)
# a plan word used of a done operation: "underwent the requested arthroscopy", "a previously certified fusion"
_PLAN_ADJ = re.compile(r"\b(?:the|a|an|his|her)\s+(?:previously\s+)?(?:requested|authorized|certified|approved|recommended)\b", re.IGNORECASE)
_NEGATED = re.compile(r"\b(?:no|denies|denied|deny|never|not|negative\s+for|without)\s+(?:\S+\s+){0,3}$", re.IGNORECASE)
# clause breaks: a plan or a negation in another clause does not reach the operation
_CLAUSE = re.compile(r";|,|\s(?:and|but|which|who|then|whereas|while)\s", re.IGNORECASE)
_PERFORMED_ON = re.compile(r"\s+(?:was\s+)?performed\s+on\s", re.IGNORECASE)
# manual therapies and other things named like operations
_NOT_SURGERY_BEFORE = re.compile(r"(?:myofascial|soft[\s-]tissue|active|trigger[\s-]point|nicotine|hormone|testosterone|fluid|"
                                 r"non-?surgical|non-?operative)[\s-]+$", re.IGNORECASE)
_NOT_SURGERY_AFTER = re.compile(r"\s+(?:therapy|technique|massage)\b", re.IGNORECASE)
_SIDE = re.compile(r"\b(left|right|bilateral)\b", re.IGNORECASE)
# a retrospective request names its date of service: what it asks about was done ("... release (DOS 12-13-2016)")
_DOS = re.compile(r"\bDOS\s*:?\s*(?=\d)")
_SAME_DAY = re.compile(r"(?:\s+of\s+the\s+[^,.;]{1,60}?)?\s+on\s+the\s+same\s+day", re.IGNORECASE)
# between an operation and its date: a place or what it was of, not another event ("and was seen on")
_GAP = r"(?:(?!\b(?:and|was|were|who|which|then|returned|seen)\b)[^,.;])"
_DATE_LEAD = re.compile(rf"\s*(?:surgery\s+)?(?:at\s+{_GAP}{{1,30}}?\s+)?(?:of\s+(?:the\s+)?{_GAP}{{1,60}}?\s+)?(?:(?:was\s+)?performed\s+)?"
                        r"(?:on|dated)\s+", re.IGNORECASE)
_LEVEL = re.compile(r"\b(?P<a>[CLT]\d{1,2})\s*(?:-|to|through)\s*(?P<b>[CLTS]?\d{1,2})\b")
# a period ends a sentence before a space, the end, or a glued capitalised word ("2009.Medical")
_SENT = re.compile(r"(?:[^.]|\.(?!\s|$|[A-Z][a-z]))+(?:\.|$)")
_BARE = ("decompression", "release", "repair", "replacement", "resection")


def _date_after(sent: str, end: int, off: int) -> tuple[str, int, int] | None:
    """The date an operation ending at ``end`` was done on, as the sentence states it right after
    ("fusion on 5/21/2014", "pinning of the right radius fracture on 11-9-2016", "... on the same
    day" as the one date before it), with its span shifted by ``off``."""
    after = sent[end:]
    dm = _DATE_LEAD.match(after)
    if dm and not _KW_RE.search(after, 0, dm.end()):  # not another operation's date
        if d := lx.date_at(after, dm.end()):
            return d[0], off + end + d[1], off + end + d[2]
    if _SAME_DAY.match(after):
        before = lx.dates_in(sent[:end])
        if len(before) == 1:
            iso, a, b = before[0]
            return iso, off + a, off + b
    return None


def _clause(sent: str, a: int, b: int) -> tuple[int, int]:
    """Bounds of the clause holding ``sent[a:b]`` (breaks inside it do not count)."""
    lo = max((m.end() for m in _CLAUSE.finditer(sent, 0, a)), default=0)
    hi = next((m.start() for m in _CLAUSE.finditer(sent, b)), len(sent))
    return lo, hi


def _dos_date(sent: str, end: int, off: int) -> tuple[str, int, int] | None:
    """The date of service stated after an operation in a retrospective request, if any."""
    for m in _DOS.finditer(sent, end):
        if m.start() - end > 120 or ";" in sent[end:m.start()]:
            return None
        if d := lx.date_at(sent, m.end()):
            return d[0], off + d[1], off + d[2]
    return None


def _is_history(sent: str, a: int, b: int, dated: bool, past: bool) -> bool:
    """Whether the operation at ``sent[a:b]`` was done to the claimant, as its clause says it."""
    lo, hi = _clause(sent, a, b)
    clause = _PLAN_ADJ.sub(lambda m: " " * len(m.group()), sent[lo:hi])  # blanked: offsets kept
    before = clause[:a - lo]
    neg = _NEGATED.search(before)  # "no prior knee surgery", "denies ...", but "no relief after the fusion"
    if neg and not re.search(r"\b(?:after|following|since)\b", before[neg.start():]):
        return False
    done = _DONE.search(before)
    if done:  # "status post X", "underwent the requested X": done unless a plan comes between
        return not _PLANNED.search(before, done.start())
    if _PERFORMED_ON.match(sent, b):
        return True
    return not _PLANNED.search(clause) and (past or dated)


def surgeries(t: str, base: int) -> list[dict]:
    """The operations of a case summary ``t`` (at ``base`` in the letter): each ``{"value": {procedure,
    body_region, level, date}, "spans": {the same keys: (start, end) in the letter or None}}``."""
    found: list[dict] = []
    low = t.lower()
    if not any(k in low for k in HINTS):
        return []
    for sm in _SENT.finditer(t):
        sent = sm.group()
        ls = sent.lower()
        if not any(k in ls for k in HINTS):
            continue
        past = bool(_PAST.search(sent)) or "surgery on" in ls or "there was" in ls
        for pm in _PROC.finditer(sent):
            proc = pm.group("proc").strip()
            proc = re.sub(r"^(?:and|level)\s+", "", proc, flags=re.IGNORECASE)
            local = sent.index(proc, pm.start("proc"))
            end = local + len(proc)
            if _NOT_SURGERY_BEFORE.search(sent, 0, local) or _NOT_SURGERY_AFTER.match(sent, end) or (
                    "surger" in proc.lower() and re.search(r"\b(?:to|with|by|from)\s+$", sent[max(0, local - 6):local], re.IGNORECASE)):
                continue
            ps = sm.start() + local
            key = _KW_RE.findall(proc)[-1].lower().rstrip("s")  # the head noun: "decompression and fusion" -> fusion
            d = _date_after(sent, end, sm.start())
            dos = _dos_date(sent, end, sm.start())
            if dos:
                d = d or dos
            elif not _is_history(sent, local, end, d is not None, past):
                continue
            if proc.lower().rstrip("s") in _BARE and not (d or re.search(r"surgery|status[\s-]+post|underw", sent, re.I)):
                continue
            lv = _LEVEL.search(sent)
            level = None
            if lv:
                b = lv.group("b")
                b = b if b[0].isalpha() else lv.group("a")[0] + b
                level = (f"{lv.group('a')}-{b}".upper(), sm.start() + lv.start(), sm.start() + lv.end())
            in_proc = lx.body_regions(proc)
            regs, off = (in_proc, ps) if in_proc else (lx.body_regions(sent), sm.start())
            reg = (regs[0][0], off + regs[0][1], off + regs[0][2]) if regs else None
            side = (_SIDE.search(proc) or _SIDE.search(sent[max(0, local - 20):local]))
            entry = {"key": key, "proc": (proc, ps, ps + len(proc)), "date": d, "level": level, "region": reg,
                     "side": side.group(1).lower() if side else None}
            merged = False
            for prev in found:
                if prev["key"] != key or (prev["region"] and reg and prev["region"][0] != reg[0]):
                    continue
                if (prev["date"] and d and prev["date"][0] != d[0]) or (prev["side"] and entry["side"] and prev["side"] != entry["side"]):
                    continue
                for k in ("date", "level", "region", "side"):
                    if prev[k] is None and entry[k] is not None:
                        prev[k] = entry[k]
                if len(proc) > len(prev["proc"][0]):
                    prev["proc"] = entry["proc"]
                merged = True
                break
            if not merged:
                found.append(entry)
    out: list[dict] = []
    for s in found:
        val = {"procedure": s["proc"][0], "body_region": s["region"][0] if s["region"] else None,
               "level": s["level"][0] if s["level"] else None, "date": s["date"][0] if s["date"] else None}
        spans = {"procedure": s["proc"][1:], "body_region": s["region"][1:] if s["region"] else None,
                 "level": s["level"][1:] if s["level"] else None, "date": s["date"][1:] if s["date"] else None}
        out.append({"value": val, "spans": {k: (base + v[0], base + v[1]) if v else None for k, v in spans.items()}})
    return out
