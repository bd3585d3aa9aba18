"""`imr ask "question"` (interactive when no question is given)."""
from __future__ import annotations

import json
from typing import Optional

import typer

from .common import die, get_settings, start_provider


def ask(
    question: Optional[str] = typer.Argument(None, help="the question; omit for an interactive session"),
    k: int = typer.Option(6, "--k", help="passages to retrieve (one per letter)"),
    decision: Optional[str] = typer.Option(None, "--decision", help="Upheld, Overturned, ..."),
    category: Optional[str] = typer.Option(None, "--category", help="physical_therapy, acupuncture, injection, ..."),
    region: Optional[str] = typer.Option(None, "--region", help="cervical, lumbar, knee, ..."),
    after_surgery: bool = typer.Option(False, "--after-surgery", help="only letters whose claimant had surgery"),
    fusion: bool = typer.Option(False, "--fusion", help="only letters whose claimant had a fusion"),
    outside_ca: bool = typer.Option(False, "--licensed-outside-ca", help="only reviewers licensed outside California"),
    drug_class: Optional[str] = typer.Option(None, "--drug-class", help="opioid, nsaid, muscle_relaxant, topical, compounded, ..."),
    partial: bool = typer.Option(False, "--partial", help="only partial authorizations (the rest of a request was disputed)"),
    filter_: Optional[str] = typer.Option(None, "--filter", help="extra filters as key=value,... (any field of `imr fields`, e.g. license_state=Texas)"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="PROVIDER:MODEL for a written answer; default IMR_MODEL or none (extractive)"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
    local_only: bool = typer.Option(False, "--local-only"),
) -> None:
    """Answer a precedent question with citations to letters, items and passages."""
    from ..query.answer import AnswerError, ask as run_ask
    from ..core.filters import FilterError, Filters
    from ..index import Index, IndexProblem

    if question is not None and not question.strip():
        die("the question is empty (omit it for an interactive session)")
    from ..query.remote import MAX_K

    if not 1 <= k <= MAX_K:
        die(f"--k {k}: the number of passages is 1 to {MAX_K}")
    options = dict(decision=decision, category=category, region=region, drug_class=drug_class, after_surgery=after_surgery,
                   fusion=fusion, outside_ca=outside_ca, partial=partial, filter=filter_)
    try:
        f = Filters.of_options(**options)
    except FilterError as e:
        die(str(e))
    s = get_settings(None, local_only)
    if s.env.server_url:
        return _remote(s, question, k, options, model, as_json)
    s = get_settings(model, local_only)
    try:
        idx = Index(s.data_dir, embedder=None, local_only=s.local_only)
    except IndexProblem as e:
        die(str(e))
    provider = start_provider(s)

    def one(q: str):
        try:
            return run_ask(idx, q, k=k, filters=f, provider=provider, model_label=s.label)
        except (IndexProblem, FilterError, AnswerError) as e:
            die(str(e))

    _session(question, one, as_json)


def _session(question: str | None, answer, as_json: bool) -> None:
    """``answer(question)`` shown (JSON or rich) for the question given, or for each one typed."""
    from .render import render

    def one(q: str) -> None:
        res = answer(q)
        if as_json:
            print(json.dumps(res.to_dict(), indent=2))
        else:
            render(res)

    if question:
        one(question)
        return
    while True:
        try:
            q = input("ask> ").strip()
        except (EOFError, KeyboardInterrupt):
            print()
            return
        if q in ("", "exit", "quit"):
            return
        one(q)


def _remote(s, question: str | None, k: int, options: dict, model: str | None, as_json: bool) -> None:
    """IMR_SERVER_URL: the index lives with an `imr serve`; it answers (extractively) from there."""
    from ..query.remote import RemoteError, remote_ask

    url = s.env.server_url
    if model:
        die(f"--model: {url} answers from its own index without a model here; unset IMR_SERVER_URL to write the answer with {model}")
    token = s.env.serve_secret()

    def one(q: str):
        try:
            return remote_ask(url, token, q, k, options, timeout=s.env.timeout, local_only=s.local_only)
        except RemoteError as e:
            die(str(e))

    _session(question, one, as_json)
