"""One provider layer: OpenAI, any OpenAI-compatible server, or an in-process llama.cpp model.

All three go through instructor with ``Mode.TOOLS`` by default (llama-cpp-python ignores
``json_schema`` response formats in-process and its server rejects them; a forced tool call makes
it build a JSON grammar from the schema). Token usage of every attempt, including instructor's
validation retries, is counted per letter through a context variable.
"""
from __future__ import annotations

import asyncio
import contextvars
import os
import threading
from typing import Any

from ..config import Settings, env
from ..core.models import Usage

# USD per 1M tokens (input, output). Local providers cost nothing; unknown models print "n/a".
PRICES = {
    "gpt-4o-mini": (0.15, 0.60), "gpt-4o": (2.50, 10.00), "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60), "gpt-4.1-nano": (0.10, 0.40), "gpt-5": (1.25, 10.00),
    "gpt-5-mini": (0.25, 2.00), "gpt-5-nano": (0.05, 0.40), "o4-mini": (1.10, 4.40),
}


def price(s: Settings) -> tuple[float, float] | None:
    if s.price_in is not None and s.price_out is not None:
        return s.price_in, s.price_out
    if s.provider == "llama-cpp":
        return 0.0, 0.0
    if s.provider == "openai":
        name = s.model or ""
        for key in sorted(PRICES, key=len, reverse=True):
            if name == key or name.startswith(key + "-"):
                return PRICES[key]
    return None


def cost(s: Settings, tin: int, tout: int) -> float | None:
    p = price(s)
    return None if p is None else round(tin * p[0] / 1e6 + tout * p[1] / 1e6, 6)


# The usage of the call in progress (one per letter or question): every attempt's tokens land here,
# validation re-asks included (instructor makes those calls, so they are counted from its hook).
CURRENT: contextvars.ContextVar[Usage | None] = contextvars.ContextVar("imr_usage", default=None)


def _count(usage: Any) -> None:
    t = CURRENT.get()
    if t is None or usage is None:
        return
    pin = getattr(usage, "prompt_tokens", None) or (usage.get("prompt_tokens") if isinstance(usage, dict) else 0) or 0
    pout = getattr(usage, "completion_tokens", None) or (usage.get("completion_tokens") if isinstance(usage, dict) else 0) or 0
    t.calls += 1
    if t.calls > 1:
        t.retry_tokens += pin + pout
    t.input_tokens += pin
    t.output_tokens += pout


def _retrying(attempts: int, budget: int, sync: bool = False):
    """Validation re-asks: at most ``attempts`` calls, and none once the letter has spent ``budget``
    tokens (so a model that keeps answering invalid JSON cannot silently multiply the cost)."""
    from tenacity import AsyncRetrying, Retrying, stop_after_attempt
    from tenacity.stop import stop_base

    class _Budget(stop_base):
        def __call__(self, retry_state) -> bool:
            t = CURRENT.get()
            return t is not None and t.input_tokens + t.output_tokens >= budget

    cls = Retrying if sync else AsyncRetrying
    return cls(stop=stop_after_attempt(attempts) | _Budget(), reraise=True)


def _memoize_async_validator_check() -> None:
    """instructor (1.17) walks the response model's whole type tree, every class's MRO included, up to
    seven times per call to refuse async validators. For a given model class the answer never
    changes; measured here that walk was 40% of the tool's CPU at 64 letters in flight. Remember the
    classes that passed. If instructor moves the function, nothing is patched and it still works."""
    import sys

    try:
        from instructor.v2.validation import async_validators as av
    except ImportError:
        return
    orig = av.reject_async_validators
    if getattr(orig, "_imr_memo", False):
        return
    passed: set = set()

    def reject_async_validators(response_model: Any) -> None:
        try:
            if response_model in passed:
                return
        except TypeError:  # unhashable annotation: check every time
            return orig(response_model)
        orig(response_model)
        passed.add(response_model)

    reject_async_validators._imr_memo = True  # type: ignore[attr-defined]
    for name, mod in list(sys.modules.items()):
        if name.startswith("instructor") and getattr(mod, "reject_async_validators", None) is orig:
            setattr(mod, "reject_async_validators", reject_async_validators)


class LLMError(Exception):
    """The model could not produce a valid answer after all retries (one-line reason); ``usage``
    holds what the attempts cost."""

    usage: Usage | None = None


class Provider:
    """``value, usage = await Provider(settings).complete(messages, Model)``: a validated instance of
    ``Model`` and what it took (calls, tokens with retries, cost)."""

    def __init__(self, s: Settings, validation_retries: int | None = None):
        s.check_local_only()
        self.s = s
        e = s.env or env()
        self.validation_retries = validation_retries if validation_retries is not None else e.validation_retries
        self.token_budget = e.letter_token_budget
        self._lock = threading.Lock()
        import instructor

        _memoize_async_validator_check()
        self._mode = mode = {"tools": instructor.Mode.TOOLS, "json": instructor.Mode.JSON, "md_json": instructor.Mode.MD_JSON,
                             "json_schema": instructor.Mode.JSON_SCHEMA}[s.mode]
        self._raw = None
        if s.provider == "llama-cpp":
            try:
                from llama_cpp import Llama
            except ImportError:
                raise LLMError("provider llama-cpp needs llama-cpp-python: pip install -e '.[local]'") from None
            self._llama = Llama(model_path=s.model, n_ctx=s.n_ctx, n_threads=os.cpu_count() or 2,
                                verbose=False, seed=0)
            self._create = instructor.patch(create=self._llama.create_chat_completion_openai_v1, mode=mode)
            self._client = None
            self._local_model = True
        else:
            self._local_model = False
            self._client = None  # made in the event loop that uses it (see _remote)

    def _remote(self):
        if self._client is None:
            import instructor
            from openai import AsyncOpenAI

            # The SDK retries 408/409/429/5xx and connection errors with exponential backoff and
            # jitter, honouring Retry-After; max_retries bounds it.
            self._raw = AsyncOpenAI(api_key=self.s.api_key, base_url=self.s.base_url, max_retries=self.s.max_retries,
                                    timeout=self.s.timeout)
            self._client = instructor.from_openai(self._raw, mode=self._mode)
            self._client.on("completion:response", lambda resp: _count(getattr(resp, "usage", None)))
        return self._client

    @property
    def in_process(self) -> bool:
        """A model in this process (llama.cpp): one generation at a time."""
        return self._local_model

    async def aclose(self) -> None:
        """Close HTTP connections inside the event loop that opened them."""
        if self._raw is not None:
            await self._raw.close()
        self._raw = None
        if not self._local_model:
            self._client = None

    async def complete(self, messages: list[dict], model: type, max_tokens: int | None = None) -> tuple[Any, Usage]:
        usage = Usage(provider=self.s.provider, model=self.s.model)
        tok = CURRENT.set(usage)
        try:
            value = await self._complete(messages, model, max_tokens or self.s.max_output_tokens)
        except LLMError as e:
            e.usage = usage  # what the failed attempts cost
            raise
        finally:
            CURRENT.reset(tok)
            usage.cost_usd = cost(self.s, usage.input_tokens, usage.output_tokens)
        return value, usage

    async def _complete(self, messages: list[dict], model: type, max_tokens: int) -> Any:
        try:
            if not self._local_model:
                return await self._remote().chat.completions.create(
                    model=self.s.model, response_model=model, messages=messages,
                    max_retries=_retrying(self.validation_retries + 1, self.token_budget), max_tokens=max_tokens, temperature=0)
            ctx = contextvars.copy_context()
            return await asyncio.to_thread(ctx.run, self._local, messages, model, max_tokens)
        except LLMError:
            raise
        except Exception as e:  # instructor/openai raise many types; the batch needs one line
            raise LLMError(_one_line(e)) from e

    def _local(self, messages: list[dict], model: type, max_tokens: int) -> Any:
        with self._lock:  # one in-process model, one generation at a time
            obj = self._create(response_model=model, messages=messages,
                               max_retries=_retrying(self.validation_retries + 1, self.token_budget, sync=True),
                               max_tokens=max_tokens, temperature=0)
        raw = getattr(obj, "_raw_response", None)
        _count(getattr(raw, "usage", None))
        return obj


def _one_line(e: BaseException) -> str:
    name = type(e).__name__
    msg = str(e).strip().splitlines()
    text = msg[0] if msg else ""
    # instructor wraps the last error; surface its cause
    for attr in ("last_completion", "__cause__"):
        inner = getattr(e, attr, None)
        if isinstance(inner, BaseException) and str(inner).strip():
            text = f"{text} ({type(inner).__name__}: {str(inner).strip().splitlines()[0]})"
            break
    return f"{name}: {text}"[:300]
