"""What the model is asked to fill: the typed answers of the two extraction calls.

Every list has ``max_length`` (without it small models loop inside a list until ``max_tokens``) and
every key is required (null/[] allowed): grammar-constrained local models then consider each field,
and remote models cannot silently omit one. Changing a type here changes what the model reads:
bump ``prompts.PROMPT_VERSION`` with it.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Literal, Optional

from pydantic import BaseModel, Field, create_model

from ..core.models import Category, Reason, Region, Sex


def _strip_titles(node, in_names: bool = False):
    """Drop pydantic's generated ``title`` keywords: the model gains nothing from "Body Regions"
    next to ``body_regions``, and they were 13% of the schema's tokens."""
    if isinstance(node, dict):
        return {k: _strip_titles(v, k in ("properties", "$defs")) for k, v in node.items() if in_names or k != "title"}
    if isinstance(node, list):
        return [_strip_titles(v) for v in node]
    return node


class _Answer(BaseModel):
    @classmethod
    def model_json_schema(cls, *args, **kwargs):
        schema = super().model_json_schema(*args, **kwargs)
        title = schema.get("title")
        schema = _strip_titles(schema)
        if title:  # instructor names the tool after the top-level title
            schema["title"] = title
        return schema


# Descriptions only where the prompt (prompts/extract_v2.md) does not already say it.
class LLMReason(BaseModel):
    code: Reason
    quote: str = Field(max_length=400)


# Every key is required (null/[] allowed): grammar-constrained local models then consider each
# field instead of skipping to the end, and remote models cannot silently omit one.
class LLMItem(BaseModel):
    index: int
    decision: str
    category: Optional[Category]
    quantity: Optional[int]
    frequency: Optional[str]
    body_regions: list[Region] = Field(max_length=6)
    denial_reasons: list[LLMReason] = Field(max_length=6)


class LLMSurgery(BaseModel):
    procedure: str  # its body region is read from the letter (procedure, then quote), not asked for
    level: Optional[str] = Field(description="spinal level as written, e.g. L3-L4")
    date: Optional[str] = Field(description="as written")
    quote: str = Field(max_length=400)


class LLMExtraction(_Answer):
    """Facts read from the parsed letter."""

    age: Optional[int]
    sex: Optional[Sex]
    claimant_quote: Optional[str] = Field(description="verbatim fragment stating age and/or sex", max_length=300)
    diagnoses: list[str] = Field(max_length=12)
    prior_treatments: list[str] = Field(max_length=12)
    surgeries: list[LLMSurgery] = Field(max_length=6)
    items: list[LLMItem] = Field(max_length=40)


# --- letters in a layout the parser does not know

class FreeItem(BaseModel):
    request: str = Field(max_length=400)
    decision: Literal["Upheld", "Overturned"]
    decision_quote: str = Field(max_length=600)


class FreeItems(_Answer):
    """The disputed items of a letter in an unknown layout."""

    items: list[FreeItem] = Field(max_length=20)


@lru_cache(maxsize=1)
def free_items_model() -> type[FreeItems]:
    from instructor import openai_schema

    return openai_schema(FreeItems)


@lru_cache(maxsize=64)
def response_model(n_items: int) -> type[LLMExtraction]:
    """The answer type for a letter with ``n_items`` disputed items (exactly that many).

    Wrapped once with ``instructor.openai_schema`` and cached: handing instructor a plain model
    makes it build a new wrapper class and JSON schema on every call (~20 ms of CPU each).
    """
    from instructor import openai_schema

    return openai_schema(create_model("LLMExtraction", __base__=LLMExtraction, __doc__=LLMExtraction.__doc__,
                                      items=(list[LLMItem], Field(min_length=n_items, max_length=n_items))))
