"""`imr ask` against an `imr serve` on the machine that holds the index (``IMR_SERVER_URL``): the
question and its options go to ``/api/ask``; the answer comes back as `imr ask --json` writes it."""
from __future__ import annotations

from .answer import AnswerResult

# `imr ask`'s filter options, by the names /api/ask takes (yes/no ones as 1)
OPTIONS = ("decision", "category", "region", "drug_class", "after_surgery", "fusion", "outside_ca", "partial", "filter")
YES_NO = ("after_surgery", "fusion", "outside_ca", "partial")
MAX_K = 100  # passages one question may ask for, here and on a server


class RemoteError(Exception):
    """The server could not be asked, or refused; one line."""


def remote_ask(url: str, token: str | None, question: str, k: int, options: dict, timeout: float = 120.0,
               local_only: bool = False) -> AnswerResult:
    params = [("q", question), ("k", str(k))]
    for name in OPTIONS:
        v = options.get(name)
        if v:
            params.append((name, "1" if v is True else str(v)))
    body = remote_get(url, token, "/api/ask", params, "question", timeout, local_only)
    try:
        return AnswerResult.from_dict(body)
    except TypeError:
        raise RemoteError(f"the imr server at {url} answered in another imr-llm's format; run the same version on both") from None


def remote_get(url: str, token: str | None, path: str, params: list[tuple[str, str]], expect: str, timeout: float,
               local_only: bool = False) -> dict:
    """GET ``path`` of the `imr serve` at ``url``: its JSON (which holds ``expect``), or one line.
    ``local_only`` (or IMR_LOCAL_ONLY): only a loopback or private server."""
    import httpx

    from ..config import env, is_private_url

    if (local_only or env().local_only) and not is_private_url(url):
        raise RemoteError(f"IMR_LOCAL_ONLY is set: refusing imr server {url!r}, which is not a loopback or private address")
    headers = {"authorization": f"Bearer {token}"} if token else {}
    try:
        r = httpx.get(url.rstrip("/") + path, params=params, headers=headers, timeout=timeout)
    except httpx.HTTPError as e:  # the token is in a header, never in the message
        raise RemoteError(f"the imr server at {url} did not answer ({type(e).__name__}); start `imr serve` there "
                          f"(or unset IMR_SERVER_URL to read IMR_DATA_DIR here)") from None
    if r.status_code == 401:
        raise RemoteError(f"the imr server at {url} wants its token: set IMR_SERVE_TOKEN to the one it was started with")
    if r.status_code == 400 and "host header" in r.text.lower():
        raise RemoteError(f"the imr server at {url} answers only 127.0.0.1 without a token: start it with IMR_SERVE_TOKEN set")
    try:
        body = r.json()
    except ValueError:
        raise RemoteError(f"the imr server at {url} answered HTTP {r.status_code} without an answer; is IMR_SERVER_URL an `imr serve`?") from None
    if r.status_code != 200 or not isinstance(body, dict) or expect not in body:
        why = body.get("error") if isinstance(body, dict) else None
        raise RemoteError(f"the imr server at {url}: {why or f'HTTP {r.status_code}'}")
    return body
