"""The one schema: the decision record every command reads and writes.

JSON Schema (``imr schema``), CSV columns and eval field lists are all derived from these models.
Bump ``SCHEMA_VERSION`` on any change to the record's meaning; it is part of every cache key.
"""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

from .drugs import DRUG_CLASSES
from .dwc import DWC_CATEGORIES
from .lexicon import CATEGORY_NAMES, GUIDELINE_NAMES, REASON_NAMES, REGION_NAMES

SCHEMA_VERSION = "1.2"  # 1.1: partial authorizations, drug and drug class, new categories; 1.2: DWC vocabulary

Category = Literal[tuple(CATEGORY_NAMES)]  # type: ignore[valid-type]
Region = Literal[tuple(REGION_NAMES)]  # type: ignore[valid-type]
GuidelineName = Literal[tuple(GUIDELINE_NAMES)]  # type: ignore[valid-type]
Reason = Literal[tuple(REASON_NAMES)]  # type: ignore[valid-type]
DrugClass = Literal[tuple(DRUG_CLASSES)]  # type: ignore[valid-type]
DwcCategory = Literal[tuple(DWC_CATEGORIES)]  # type: ignore[valid-type]
CaseOutcome = Literal["Uphold", "Overturn", "Partial Overturn"]
Sex = Literal["male", "female"]
Status = Literal["exact", "fuzzy", "not_found"]
Origin = Literal["layout", "rules", "llm"]


class _M(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Evidence(_M):
    """Where a value stands in the letter: ``Letter.text[start:end] == quote`` for found values."""

    field: str = Field(description="path of the value, e.g. items[0].quantity")
    start: Optional[int] = None
    end: Optional[int] = None
    quote: Optional[str] = None
    status: Status
    origin: Origin = "layout"
    value: Optional[str] = Field(None, description="the value as proposed (set for not_found entries, which were dropped)")
    score: Optional[float] = Field(None, description="fuzzy match score 0-100")


class Reviewer(_M):
    specialties: list[str] = Field(default_factory=list, max_length=20)
    license_states: list[str] = Field(default_factory=list, max_length=60)
    dwc_specialties: list[str] = Field(default_factory=list, max_length=20, description="the specialties in DWC's list of IMRO reviewer specialties")


class Claimant(_M):
    age: Optional[int] = Field(None, ge=0, le=120)
    sex: Optional[Sex] = None


class Surgery(_M):
    procedure: str
    body_region: Optional[Region] = None
    level: Optional[str] = Field(None, description="spinal level(s), e.g. L3-L4")
    date: Optional[str] = Field(None, description="ISO 8601")


class GuidelineSource(_M):
    name: GuidelineName
    detail: Optional[str] = Field(None, description="chapter or topic, e.g. Chapter 12 Low Back Complaints")
    pages: Optional[str] = None
    cited_by: Literal["claims_administrator", "maximus"] = "maximus"


class Item(_M):
    index: int
    request: str = Field(description="what IMR decided: for a partial authorization, the disputed portion only")
    original_request: Optional[str] = Field(None, description="partial authorization: the request as filed")
    authorized: Optional[str] = Field(None, description="partial authorization: the part the claims administrator authorized")
    category: Optional[Category] = None
    drug: Optional[str] = Field(None, description="medication items: the drug named, as the letter writes it")
    drug_class: Optional[DrugClass] = None
    dwc_category: Optional[DwcCategory] = Field(None, description="DWC's request category (IMR decision search, yearly reports)")
    dwc_subcategory: Optional[str] = Field(None, description="DWC's subcategory; for Pharmaceuticals, DWC's drug class")
    dwc_drug_class: Optional[str] = Field(None, description="Pharmaceuticals: DWC's drug class (finer than drug_class)")
    quantity: Optional[int] = Field(None, description="units, sessions or tablets of the disputed request; frequency x duration when only those are given")
    frequency: Optional[str] = None
    body_regions: list[Region] = Field(default_factory=list, max_length=len(REGION_NAMES))
    decision: str = Field(description="the outcome word the letter uses: Upheld, Overturned, ...")
    claims_administrator_guideline: Optional[str] = None
    maximus_guideline: Optional[str] = None
    guideline_sources: list[GuidelineSource] = Field(default_factory=list, max_length=8)
    rationale: Optional[str] = None
    denial_reasons: list[Reason] = Field(default_factory=list, max_length=10)


class Usage(_M):
    provider: str = "none"
    model: Optional[str] = None
    prompt_version: Optional[str] = None
    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    retry_tokens: int = 0
    cost_usd: Optional[float] = None
    cached: bool = False


class DecisionRecord(_M):
    schema_version: str = SCHEMA_VERSION
    letter_id: str
    source_path: str
    sha256: str = Field(description="sha256 of the file's bytes")
    text_sha256: str = Field(description="sha256 of the normalised text (cache key part)")
    layout: list[str] = Field(default_factory=list, description="template features found: header, credentials_block, credentials_sentence")
    case_number: Optional[str] = None
    date_assigned: Optional[str] = None
    date_of_injury: Optional[str] = None
    decision_date: Optional[str] = None
    ur_denial_date: Optional[str] = None
    application_received: Optional[str] = None
    priority: Optional[str] = None
    case_outcome: Optional[CaseOutcome] = Field(None, description="DWC's case outcome: Uphold, Overturn or Partial Overturn (mixed)")
    reviewer: Reviewer = Field(default_factory=Reviewer)
    claimant: Claimant = Field(default_factory=Claimant)
    clinical_summary: Optional[str] = None
    diagnoses: list[str] = Field(default_factory=list, max_length=30)
    surgeries: list[Surgery] = Field(default_factory=list, max_length=10)
    prior_treatments: list[str] = Field(default_factory=list, max_length=30)
    items: list[Item] = Field(default_factory=list)
    evidence: list[Evidence] = Field(default_factory=list)
    flags: list[str] = Field(default_factory=list, description="problems a person should look at")
    usage: Usage = Field(default_factory=Usage)

    @property
    def cite_id(self) -> str:
        return self.case_number or self.letter_id


CSV_COLUMNS = [
    "letter_id", "case_number", "source_path", "decision_date", "date_of_injury", "item_index",
    "request", "original_request", "authorized", "category", "drug", "drug_class", "dwc_category", "dwc_subcategory",
    "dwc_drug_class", "case_outcome", "quantity", "frequency", "body_regions", "decision",
    "guideline_sources", "denial_reasons", "claims_administrator_guideline", "maximus_guideline",
    "reviewer_specialties", "reviewer_license_states", "claimant_age", "claimant_sex",
    "surgeries", "flags",
]


def output_line(rec: DecisionRecord) -> str:
    """The JSONL line of a record, as `imr extract` writes it (and the page's download)."""
    return rec.model_dump_json(exclude={"usage": {"cached"}})


def csv_rows(rec: DecisionRecord) -> list[dict]:
    """One flat row per disputed item, lists joined with '; '."""
    j = "; ".join
    rows = []
    for it in rec.items:
        rows.append({
            "letter_id": rec.letter_id, "case_number": rec.case_number, "source_path": rec.source_path,
            "decision_date": rec.decision_date, "date_of_injury": rec.date_of_injury,
            "item_index": it.index, "request": it.request, "original_request": it.original_request,
            "authorized": it.authorized, "category": it.category, "drug": it.drug, "drug_class": it.drug_class,
            "dwc_category": it.dwc_category, "dwc_subcategory": it.dwc_subcategory, "dwc_drug_class": it.dwc_drug_class,
            "case_outcome": rec.case_outcome,
            "quantity": it.quantity, "frequency": it.frequency, "body_regions": j(it.body_regions),
            "decision": it.decision,
            "guideline_sources": j(f"{g.name}{' ' + g.detail if g.detail else ''}{' p.' + g.pages if g.pages else ''} ({g.cited_by})" for g in it.guideline_sources),
            "denial_reasons": j(it.denial_reasons),
            "claims_administrator_guideline": it.claims_administrator_guideline,
            "maximus_guideline": it.maximus_guideline,
            "reviewer_specialties": j(rec.reviewer.specialties),
            "reviewer_license_states": j(rec.reviewer.license_states),
            "claimant_age": rec.claimant.age, "claimant_sex": rec.claimant.sex,
            "surgeries": j(" ".join(x for x in (s.procedure, s.level, s.date) if x) for s in rec.surgeries),
            "flags": j(rec.flags),
        })
    return rows
