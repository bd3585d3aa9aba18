"""`imr serve`: a local page to read letters, see where every value came from, and ask.

Starlette + Jinja2 (autoescaped) served by uvicorn; templates, CSS, JS and charts ship in the
package and nothing is fetched at run time. Letter text and model output are hostile input: they
are only ever inserted as escaped text, scripts come from this app alone (a strict
Content-Security-Policy forbids inline script and style), and no route takes a file path: letters
are looked up by the ``letter_id`` the store knows. Bound to 127.0.0.1 unless a token is set.
"""
from __future__ import annotations

import csv
import asyncio
import contextlib
import hmac
import io
import json
import threading
from pathlib import Path
from urllib.parse import urlencode

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..core.filters import FIELDS, Cond, FilterError, Filters
from .highlight import kind_of, letter_segments
from ..index import Index, IndexProblem
from ..query.answer import MAX_QUESTION
from ..query.remote import MAX_K, OPTIONS, YES_NO
from ..core.models import CSV_COLUMNS, DecisionRecord, csv_rows, output_line

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
PAGE = 50
# facet -> (items column, how its values are derived) for the columnar path (items.npz)
FACET_COLUMNS = {"decision": ("decision", None), "category": ("category", None), "drug_class": ("drug_class", None),
                 "region": ("regions", None), "partial": ("partial", "yesno"), "specialty": ("dwc_specialties", None),
                 "license_state": ("license_states", None), "year": ("decision_date", "year"),
                 "dwc_category": ("dwc_category", None), "case_outcome": ("case_outcome", None)}
# facet -> (filter field, items column expression)
FACETS = {
    "decision": ("decision", "decision"), "category": ("category", "category"), "drug_class": ("drug_class", "nullif(drug_class, '')"),
    "region": ("region", "regions"), "partial": ("partial", "CASE WHEN partial THEN 'yes' ELSE 'no' END"),
    "specialty": ("dwc_specialty", "dwc_specialties"), "license_state": ("license_state", "license_states"),
    "dwc_category": ("dwc_category", "nullif(dwc_category, '')"), "case_outcome": ("case_outcome", "nullif(case_outcome, '')"),
    "year": ("decision_date", "substr(nullif(decision_date, ''), 1, 4)"),
}
_env = Environment(loader=PackageLoader("imr_llm.page", "templates"), autoescape=select_autoescape(["html"]))


def selection(params) -> Filters:
    """Filters from the page's query string (facet values), validated like `imr ask`'s options."""
    f = Filters()
    for name, (field_, _) in FACETS.items():
        for v in params.getlist(name):
            if name == "partial":
                f.add(Cond("partial", negate=v == "no"))
            elif name == "year":
                f.add(Cond("decision_date", lo=f"{int(v):04d}-01-01", hi=f"{int(v):04d}-12-31"))
            else:
                f.add(Cond(field_, (v,)))
    return f


LOOPBACK_HOSTS = ["127.0.0.1", "localhost", "::1", "[::1]"]


def _yes(v: str | None) -> bool:
    return (v or "").lower() in ("1", "true", "yes")


async def _api(fn, *args) -> Response:
    """``fn(*args)`` on an asking thread, as JSON: a refused question or filter is 400 with its
    reason, an index that cannot be read 503."""
    from ..query.answer import AnswerError

    try:
        res = await asyncio.get_running_loop().run_in_executor(_asking(), fn, *args)
    except (FilterError, AnswerError, ValueError) as e:
        return JSONResponse({"error": str(e)}, 400)
    except IndexProblem as e:
        return JSONResponse({"error": str(e)}, 503)
    return JSONResponse(res)


def _asking():
    """The threads that answer questions, each keeping its index open; apart from the search
    threads, which an answering thread waits on (one pool of two would deadlock)."""
    from ..query.retrieve import threads

    return threads("imr-ask")


class _Page:
    """The page's handlers over the index in ``data_dir`` (opened per request: a rebuild swaps its folder)."""

    def __init__(self, data_dir: Path):
        self.data_dir = data_dir
        self.loaded: dict = {}
        self.served = threading.local()  # each asking thread's open index and retriever

    def index(self) -> Index:
        return Index(self.data_dir, embedder=None)

    def served_index(self):
        """(index, retriever) kept open between requests (segments opened and the embedder loaded
        once a thread, not once a question), renewed when `imr index` adds segments or `--rebuild`
        swaps the folder. Called on ``_asking()``'s threads: SQLite keeps a connection to its thread."""
        from ..query.retrieve import Retriever

        sv = self.served
        try:
            stamp = (self.data_dir / "index" / "store.sqlite").stat().st_ino
        except OSError:
            stamp = None
        have = getattr(sv, "idx", None)
        if have is None or sv.stamp != stamp or have.store.segments() != sv.segs:
            if have is not None:
                have.close()
                sv.idx = None
            sv.idx = Index(self.data_dir, embedder=None)
            sv.stamp, sv.segs, sv.ret = stamp, sv.idx.store.segments(), Retriever(sv.idx)
        return sv.idx, sv.ret

    def warm(self) -> None:
        """Each asking thread opens the index before the first question (1-2 s at a million
        letters); an index not there yet, or being built, is left to the first question to say."""
        gate = threading.Barrier(2, timeout=30)  # one task on each of the two threads

        def one() -> None:
            try:
                gate.wait()
                self.served_index()[1].warm()
            except Exception:
                pass

        for _ in range(2):
            _asking().submit(one)

    def answer(self, q: str, k: int, f: Filters | None = None):
        from ..query.answer import ask

        idx, ret = self.served_index()
        return ask(idx, q, k=k, filters=f, retriever=ret)

    def stats(self, query: str | None, by: list[str], filter_: str | None) -> dict:
        from ..query.stats import stats_for

        idx = self.served_index()[0]
        return stats_for(idx, query, by, filter_, self.facets(idx))

    def precedent(self, req: str, after_surgery: bool, fusion: bool, regions: list[str], k: int) -> dict:
        from ..core.filters import canonical_value
        from ..query.precedent import find

        idx, ret = self.served_index()
        return find(idx, req, after_surgery, fusion, [canonical_value("region", r) for r in regions] or None, k, retriever=ret)

    async def api_precedent(self, request: Request) -> Response:
        """``/api/precedent?request=...``: `imr precedent --json`'s result (options after_surgery,
        fusion, region (repeatable), k)."""
        qp = request.query_params
        req = (qp.get("request") or "").strip()
        try:
            if not req or len(req) > MAX_QUESTION:
                raise ValueError(f"give the request as text, up to {MAX_QUESTION:,} characters: /api/precedent?request=...")
            k = int(qp.get("k") or 5)
            if not 1 <= k <= 50:
                raise ValueError(f"k={k}: letters are 1 to 50")
        except ValueError as e:
            return JSONResponse({"error": str(e)}, 400)
        return await _api(self.precedent, req, _yes(qp.get("after_surgery")), _yes(qp.get("fusion")), qp.getlist("region"), k)

    async def api_stats(self, request: Request) -> Response:
        """``/api/stats?query=...&by=...&filter=...``: `imr stats --json`'s result (what `imr stats`
        shows with IMR_SERVER_URL)."""
        qp = request.query_params
        return await _api(self.stats, (qp.get("query") or "").strip() or None, qp.getlist("by"), qp.get("filter"))

    async def api_ask(self, request: Request) -> Response:
        """``/api/ask?q=...``: `imr ask --json`'s answer (what `imr ask` shows with IMR_SERVER_URL);
        options as `imr ask` takes them (k, decision, category, region, drug_class, after_surgery,
        fusion, outside_ca, partial, filter)."""
        qp = request.query_params
        q = (qp.get("q") or "").strip()
        if not q:
            return JSONResponse({"error": "the question is empty: /api/ask?q=..."}, 400)
        try:
            k = int(qp.get("k") or 6)
            if not 1 <= k <= MAX_K:
                raise ValueError(f"k={k}: passages are 1 to {MAX_K}")
            given = {}
            for n in OPTIONS:
                got = qp.getlist(n)
                if len(got) > 1:
                    raise ValueError(f"{n} is given {len(got)} times; give it once (several values: filter={n}=a|b)")
                if got and got[0]:
                    given[n] = _yes(got[0]) if n in YES_NO else got[0]
            f = Filters.of_options(**given)
        except (FilterError, ValueError) as e:
            return JSONResponse({"error": str(e)}, 400)
        return await _api(lambda: self.answer(q, k, f).to_dict())

    def facets(self, idx: Index) -> dict | None:
        """items.npz, reloaded when the index is rebuilt (its folder is swapped)."""
        from ..query.stats import load_facets

        p = idx.dir / "items.npz"
        stamp = p.stat().st_mtime_ns if p.exists() else None
        if self.loaded.get("stamp") != stamp:
            self.loaded.update(stamp=stamp, fz=load_facets(idx.dir) if stamp else None)
        return self.loaded["fz"]

    def page(self, name: str, status: int = 200, **ctx) -> HTMLResponse:
        return HTMLResponse(_env.get_template(name).render(**ctx), status_code=status)

    def not_found(self, msg: str) -> HTMLResponse:
        return self.page("error.html", 404, title="Not found", message=msg)

    async def home(self, request: Request) -> Response:
        try:
            f = selection(request.query_params)
        except (FilterError, ValueError) as e:
            return self.page("error.html", 400, title="Bad filter", message=str(e))
        idx = self.index()
        st = idx.store
        pg = max(1, int(request.query_params.get("page", "1") or 1))
        cols = "letter_id, cite_id, item, request, decision, category, drug_class, decision_date"
        fz = self.facets(idx)
        if fz is not None:  # columnar: a million items in tens of milliseconds
            from ..query.stats import facet_counts, page_rowids

            n_items, n_letters, all_counts = facet_counts(fz, f, FACET_COLUMNS)
            rows = st.items_by_rowid(page_rowids(fz, f, (pg - 1) * PAGE, PAGE), cols)
        else:
            n_items, n_letters = st.count_items(f)
            rows = st.select_items(f, cols, order=st.ITEM_ORDER, limit=PAGE, offset=(pg - 1) * PAGE)
            all_counts = _sql_facet_counts(st, f)
        total = (n_items, n_letters)
        facets_out = _facet_links(all_counts, request.query_params)
        qs = urlencode([(k, v) for k, v in request.query_params.multi_items() if k != "page"])
        return self.page("home.html", items=rows, total=total[0], letters=total[1], facets=facets_out, page=pg,
                    pages=max(1, -(-total[0] // PAGE)), qs=qs, sentence=f.describe())

    async def letter(self, request: Request) -> Response:
        lid = request.path_params["letter_id"]
        idx = self.index()
        got = idx.store.record(lid)
        if not got:
            return self.not_found(f"No letter {lid!r} in this index.")
        rec = json.loads(got[0])
        from ..core.load import LetterError, read_letter

        try:
            text = read_letter(rec["source_path"]).text
        except LetterError as e:
            return self.page("error.html", 410, title="Letter file not readable", message=str(e))
        ev = rec["evidence"]
        found = [dict(e, n=i, cls=kind_of(e["field"])) for i, e in enumerate(ev) if e["status"] != "not_found"]
        dropped = [e for e in ev if e["status"] == "not_found"]
        return self.page("letter.html", rec=rec, segments=letter_segments(text, ev), found=found, dropped=dropped,
                    paths=got[1], items=rec["items"])

    async def ask_page(self, request: Request) -> Response:
        from ..query.answer import AnswerError

        q = (request.query_params.get("q") or "").strip()
        if not q:
            return self.page("ask.html", q="", res=None)
        try:
            res = await asyncio.get_running_loop().run_in_executor(_asking(), self.answer, q, 6)
        except (FilterError, AnswerError) as e:
            return self.page("error.html", 400, title="Cannot answer", message=str(e))
        return self.page("ask.html", q=q, res=res)

    async def export(self, request: Request) -> Response:
        kind = request.path_params["kind"]
        if kind not in ("csv", "jsonl"):
            return self.not_found("Downloads are export.csv and export.jsonl.")
        try:
            f = selection(request.query_params)
        except (FilterError, ValueError) as e:
            return PlainTextResponse(str(e), 400)
        st = self.index().store
        chosen: dict[str, set[int]] = {}
        for lid, item in st.select_items(f, "letter_id, item"):
            chosen.setdefault(lid, set()).add(item)
        out = io.StringIO()
        w = csv.DictWriter(out, fieldnames=CSV_COLUMNS) if kind == "csv" else None
        if w:
            w.writeheader()
        for js, _ in st.records():
            rec = DecisionRecord.model_validate_json(js)
            if rec.letter_id not in chosen:
                continue
            if w:  # the rows `imr extract --csv` writes, for the selected items
                w.writerows(r for r in csv_rows(rec) if r["item_index"] in chosen[rec.letter_id])
            else:  # the lines `imr extract` writes, for letters with a selected item
                out.write(output_line(rec) + "\n")
        media = "text/csv" if kind == "csv" else "application/x-ndjson"
        return Response(out.getvalue(), media_type=media,
                        headers={"content-disposition": f'attachment; filename="imr-selection.{kind}"'})

    async def chart(self, request: Request) -> Response:
        from . import charts
        from ..query.stats import compute

        name = request.path_params["name"]
        if name not in ("category", "month"):
            return self.not_found("No such chart.")
        try:
            f = selection(request.query_params)
        except (FilterError, ValueError) as e:
            return PlainTextResponse(str(e), 400)
        idx = self.index()
        res = compute(idx.store, ["category" if name == "category" else "decision_month"], f, self.facets(idx))
        svg = charts.overturn_by_category(res) if name == "category" else charts.items_by_month(res)
        return Response(svg, media_type="image/svg+xml")

    async def kinds_css(self, request: Request) -> Response:  # the value colours, shared with the eval report
        from .highlight import CSS

        return Response(CSS, media_type="text/css")

    async def on_error(self, request: Request, exc: Exception) -> Response:
        if request.url.path.startswith("/api/"):  # `imr ask` on another machine reads the reason
            code = getattr(exc, "status_code", None) or (503 if isinstance(exc, IndexProblem) else 500)
            why = str(exc) if isinstance(exc, IndexProblem) or code < 500 else f"the server failed ({type(exc).__name__}); see its log"
            return JSONResponse({"error": why}, code)
        if getattr(exc, "status_code", 500) == 404:
            return self.not_found("No such page.")
        if isinstance(exc, IndexProblem):
            return self.page("error.html", 503, title="No index", message=str(exc))
        return self.page("error.html", 500, title="Error", message=f"{type(exc).__name__}")



def _sql_facet_counts(st, f: Filters) -> dict[str, dict[str, int]]:
    """Facet counts through SQL (an index without the columnar item mirror)."""
    out = {}
    for name, (_, expr) in FACETS.items():
        listy = expr in ("regions", "dwc_specialties", "license_states")
        counts: dict[str, int] = {}
        for v, n in st.group_items(f, expr):
            for x in ([y for y in (v or "").strip("|").split("|") if y] if listy else [v]):
                if x:
                    counts[x] = counts.get(x, 0) + n
        out[name] = counts
    return out


def _facet_links(all_counts: dict, params) -> dict[str, list[dict]]:
    """Each facet's values with counts and the link that toggles them (30 at most)."""
    out = {}
    for name in FACETS:
        counts = all_counts.get(name, {})
        chosen = set(params.getlist(name))
        vocab = FIELDS[FACETS[name][0]].values if FACETS[name][0] in FIELDS else None
        if vocab is not None:  # outcome words outside the vocabulary ("Withdrawn") are counted, not offered as links
            counts = {v: n for v, n in counts.items() if v in vocab}
        out[name] = [{"value": v, "count": n, "on": v in chosen, "href": "/?" + _toggle(params, name, v)}
                     for v, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:30]]
    return out


def create_app(data_dir: Path, token: str | None = None, hosts: list[str] | None = None) -> Starlette:
    """``hosts``: the Host headers answered without a token (DNS rebinding: a web page must not
    reach this app under its own name); loopback names by default, plus the --host given to `imr
    serve`. With a token every request carries it (a rebinding page has none: the browser keeps
    the cookie for the name that set it), so any name the team reaches the machine by is answered."""
    from starlette.exceptions import HTTPException
    from starlette.middleware.trustedhost import TrustedHostMiddleware

    pg = _Page(data_dir)
    routes = [Route("/kinds.css", pg.kinds_css), Route("/", pg.home), Route("/letters/{letter_id:str}", pg.letter),
              Route("/ask", pg.ask_page), Route("/api/ask", pg.api_ask), Route("/api/stats", pg.api_stats), Route("/api/precedent", pg.api_precedent), Route("/export.{kind:str}", pg.export), Route("/chart/{name:str}.svg", pg.chart),
              Mount("/static", StaticFiles(packages=[("imr_llm.page", "static")]), name="static")]
    allowed = ["*"] if token else list(dict.fromkeys(LOOPBACK_HOSTS + list(hosts or [])))
    @contextlib.asynccontextmanager
    async def lifespan(app):
        pg.warm()
        yield

    return Starlette(routes=routes, middleware=[Middleware(Guard, token=token), Middleware(TrustedHostMiddleware, allowed_hosts=allowed)],
                     exception_handlers={HTTPException: pg.on_error, Exception: pg.on_error}, lifespan=lifespan)


def _toggle(params, name: str, value: str) -> str:
    items = [(k, v) for k, v in params.multi_items() if k != "page"]
    if (name, value) in items:
        items.remove((name, value))
    else:
        items.append((name, value))
    return urlencode(items)


class Guard:
    """Security headers on every response; with a token, every request must carry it (query
    ``?token=`` once, then an HttpOnly cookie; or ``Authorization: Bearer``)."""

    def __init__(self, app, token: str | None = None):
        self.app, self.token = app, token

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        req = Request(scope)
        set_cookie = False
        if self.token:
            given = (req.query_params.get("token") or req.cookies.get("imr_token")
                     or req.headers.get("authorization", "").removeprefix("Bearer ").strip())
            if not given or not hmac.compare_digest(given.encode(), self.token.encode()):
                resp = PlainTextResponse("401: this imr page needs its token (IMR_SERVE_TOKEN)", 401)
                await _secure(resp)(scope, receive, send)
                return
            set_cookie = "token" in req.query_params

        async def send2(msg):
            if msg["type"] == "http.response.start":
                h = [(k, v) for k, v in msg.get("headers", []) if k.lower() != b"content-security-policy"]
                h += [(b"content-security-policy", CSP.encode()), (b"x-content-type-options", b"nosniff"),
                      (b"referrer-policy", b"no-referrer"), (b"x-frame-options", b"DENY"), (b"cache-control", b"no-store")]
                if set_cookie:
                    h.append((b"set-cookie", f"imr_token={self.token}; HttpOnly; SameSite=Strict; Path=/".encode()))
                msg = {**msg, "headers": h}
            await send(msg)

        await self.app(scope, receive, send2)


def _secure(resp: Response) -> Response:
    resp.headers["content-security-policy"] = CSP
    resp.headers["x-content-type-options"] = "nosniff"
    return resp
