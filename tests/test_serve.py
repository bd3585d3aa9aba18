"""`imr serve`: routes, the token rule and downloads over HTTP; the page itself in a real headless
Chromium (Debian's chromium + chromium-driver, driven by Selenium): filter, ask, follow a citation
to its highlighted sentence, and a hostile letter that must run nothing."""
from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from imr_llm.cli import app

from .conftest import LETTERS, ROOT, SEEDS

runner = CliRunner()
HOSTILE = ('<script>window.__pwned=1</script> <img src=x onerror="window.__pwned=2"> '
           '<a href="javascript:window.__pwned=3">click</a> {{ 7*7 }} {% raw %}')


@pytest.fixture
def data(tmp_path):
    d = tmp_path / "letters"
    d.mkdir()
    for p in SEEDS.values():
        (d / p.name).write_text(p.read_text())
    shutil.copy(LETTERS / "r015_CM16-0233904.pdf", d)
    shutil.copy(LETTERS / "r020_CM16-0235991.pdf", d)  # one item overturned
    t = SEEDS["000"].read_text()
    (d / "hostile.txt").write_text(t.replace("Twelve additional physical therapy visits", HOSTILE + " Twelve additional physical therapy visits", 1)
                                   .replace("Decision rationale:", "Decision rationale: " + HOSTILE, 1))
    res = runner.invoke(app, ["extract", str(d), "--out", str(tmp_path / "records.jsonl"), "--csv", str(tmp_path / "items.csv")])
    assert res.exit_code == 0, res.output
    assert runner.invoke(app, ["index", str(tmp_path / "records.jsonl")]).exit_code == 0
    return Path(os.environ["IMR_DATA_DIR"])


def client(data_dir, token=None):
    from starlette.testclient import TestClient

    from imr_llm.page.web import create_app

    return TestClient(create_app(data_dir, token), base_url="http://127.0.0.1")


def test_routes_404s_token_and_headers(data):
    c = client(data)
    r = c.get("/")
    assert r.status_code == 200 and "script-src 'self'" in r.headers["content-security-policy"]
    assert "unsafe-inline" not in r.headers["content-security-policy"]
    assert c.get("/letters/nope").status_code == 404
    assert c.get("/letters/..%2F..%2Fetc%2Fpasswd").status_code == 404
    assert c.get("/no/such/route").status_code == 404
    assert c.get("/export.html").status_code == 404
    # DNS rebinding: a page served under another name must not reach the records
    from starlette.testclient import TestClient

    from imr_llm.page.web import create_app
    assert TestClient(create_app(data), base_url="http://evil.example").get("/export.jsonl").status_code == 400
    assert c.get("/?decision=Maybe").status_code == 400
    r = c.get("/letters/r015_CM16-0233904")
    assert r.status_code == 200 and "Baclofen 100mg #3" in r.text and 'id="ev-' in r.text
    r = c.get("/ask", params={"q": "How many requests were upheld?"})
    assert r.status_code == 200 and "Counting disputed items whose decision is Upheld" in r.text
    t = client(data, token="s3cret-token")
    assert t.get("/").status_code == 401 and t.get("/letters/r015_CM16-0233904").status_code == 401
    r = t.get("/?token=s3cret-token")
    assert r.status_code == 200 and "imr_token=" in r.headers["set-cookie"] and "HttpOnly" in r.headers["set-cookie"]
    assert t.get("/").status_code == 200  # the cookie carries it now
    assert client(data, "s3cret-token").get("/", headers={"authorization": "Bearer s3cret-token"}).status_code == 200
    assert client(data, "s3cret-token").get("/", headers={"authorization": "Bearer wrong"}).status_code == 401


def test_hostile_letter_is_escaped_in_the_html(data):
    html = client(data).get("/letters/hostile").text
    assert "<script>window.__pwned" not in html and "&lt;script&gt;window.__pwned=1&lt;/script&gt;" in html
    assert 'onerror="window' not in html and "{{ 7*7 }}" in html and "49" not in html.split("{{ 7*7 }}")[0][-5:]


def test_downloads_equal_what_imr_writes(data, tmp_path):
    c = client(data)
    jl = c.get("/export.jsonl").text.splitlines()
    assert sorted(jl) == sorted((tmp_path / "records.jsonl").read_text().splitlines())
    csv_rows = c.get("/export.csv").text.splitlines()
    written = (tmp_path / "items.csv").read_text().splitlines()
    assert csv_rows[0] == written[0] and sorted(csv_rows[1:]) == sorted(written[1:])
    up = c.get("/export.csv", params={"decision": "Overturned"}).text.splitlines()
    assert len(up) - 1 == sum(1 for x in written[1:] if ",Overturned," in x)


def test_serve_refuses_other_hosts_without_a_token(data):
    res = runner.invoke(app, ["serve", "--host", "0.0.0.0"])
    assert res.exit_code == 2 and "needs IMR_SERVE_TOKEN" in res.output


# --- the page in a real browser ------------------------------------------------------------------

def _browser():
    chrome, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chrome and driver):
        if os.environ.get("IMR_REQUIRE_BROWSER") == "1":
            pytest.fail("chromium and chromedriver are required (apt-get install chromium chromium-driver)")
        pytest.skip("chromium/chromedriver not installed")
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must not try to download a driver
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    o = webdriver.ChromeOptions()
    o.binary_location = chrome
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1000", "--disable-dev-shm-usage"):
        o.add_argument(a)
    return webdriver.Chrome(service=Service(driver), options=o)


class _Served:
    """``create_app`` on a real uvicorn on 127.0.0.1 (a free port), stopped on exit."""

    def __init__(self, data_dir, token=None):
        import uvicorn

        from imr_llm.page.web import create_app

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(create_app(data_dir, token), host="127.0.0.1", port=self.port, log_level="warning"))
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self):
        self.th = threading.Thread(target=self.server.run, daemon=True)
        self.th.start()
        for _ in range(200):
            if self.server.started:
                break
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.th.join(10)


@pytest.fixture
def live(data):
    with _Served(data) as srv:
        yield srv.url


def _ask(*args) -> tuple[int, str]:
    res = runner.invoke(app, ["ask", *args])
    return res.exit_code, res.output


def test_imr_ask_through_a_served_index_answers_as_it_does_here(data, tmp_path, monkeypatch):
    """A team's index on one machine: `imr serve` there, `IMR_SERVER_URL` here. The answers are the
    ones `imr ask` gives over the index itself; the served index follows an `imr index` run."""
    import httpx

    from imr_llm.core.load import read_letter

    token = "tok-" + "9" * 20
    questions = [("why were physical therapy requests upheld after spinal fusion surgery?",),
                 ("How many physical therapy requests were upheld?",),
                 ("why was the request denied?", "--decision", "Upheld", "--k", "3"),
                 ("what was decided for lumbar MRI?", "--filter", "category=imaging")]
    local = {q: _ask(*q, "--json") for q in questions}
    assert all(code == 0 for code, _ in local.values()), local
    stats = [("--by", "category", "--json"), ("physical therapy requests", "--by", "decision_year", "--by", "body_region", "--json"),
             ("--filter", "decision=Upheld", "--by", "drug_class", "--csv")]
    local_stats = {a: runner.invoke(app, ["stats", *a]).output for a in stats}
    precedents = [("Physical therapy 12 sessions lumbar spine", "--json"),
                  ("Acupuncture 6 visits", "--after-surgery", "--region", "lumbar", "--k", "3", "--json"),
                  ("--letter", str(SEEDS["000"]), "--json"), ("Norco 10/325 #90",)]
    local_prec = {a: runner.invoke(app, ["precedent", *a]).output for a in precedents}
    assert json.loads(local_prec[precedents[0]])["precedents"] and "past disputed items" in local_prec[precedents[3]]
    assert json.loads(local_stats[stats[0]])["groups"] and json.loads(local_stats[stats[1]])["total"]["items"]
    assert local_stats[stats[2]].startswith("drug_class,items,") and local_stats[stats[2]].count("\n") > 2
    with _Served(data, token) as srv:
        monkeypatch.setenv("IMR_SERVER_URL", srv.url)
        monkeypatch.setenv("IMR_DATA_DIR", str(tmp_path / "nothing-here"))  # the client has no index
        code, out = _ask(questions[0][0])
        assert code == 2 and "IMR_SERVE_TOKEN" in out and token not in out
        monkeypatch.setenv("IMR_SERVE_TOKEN", "wrong-" + "1" * 20)
        code, out = _ask(questions[0][0])
        assert code == 2 and "IMR_SERVE_TOKEN" in out and "wrong-" not in out
        monkeypatch.setenv("IMR_SERVE_TOKEN", token)
        for q in questions:
            code, out = _ask(*q, "--json")
            assert code == 0, out
            assert json.loads(out) == json.loads(local[q][1]), q
        for a in stats:  # `imr stats` too: the same table
            res = runner.invoke(app, ["stats", *a])
            assert res.exit_code == 0 and res.output == local_stats[a], a
        for a in precedents:  # and `imr precedent`
            res = runner.invoke(app, ["precedent", *a])
            assert res.exit_code == 0 and res.output == local_prec[a], a
        res = runner.invoke(app, ["precedent", "Physical therapy", "--region", "elbowz"])
        assert res.exit_code == 2 and "elbowz" in res.output
        res = runner.invoke(app, ["stats", "--by", "nonsense"])
        assert res.exit_code == 2 and "nonsense" in res.output
        ans = json.loads(_ask(questions[0][0], "--json")[1])
        assert ans["citations"]
        for c in ans["citations"]:  # quoted from the letters on the server's machine, at their offsets
            assert read_letter(c["source_path"]).text[c["start"]:c["end"]] == c["quote"]
        code, out = _ask(questions[1][0])  # the rich rendering, from the served answer
        assert code == 0 and "physical_th" in out and "counted exactly" in out
        r = httpx.get(srv.url + "/api/ask", params={"q": "why?"}, headers={"host": "index-host.lan", "authorization": f"Bearer {token}"})
        assert r.status_code == 200 and r.json()["question"] == "why?"  # a token server answers the names a team uses
        r = httpx.get(srv.url + "/api/ask", params=[("q", "why?"), ("region", "lumbar"), ("region", "knee")],
                      headers={"authorization": f"Bearer {token}"})
        assert r.status_code == 400 and "given 2 times" in r.json()["error"]
        r = httpx.get(srv.url + "/api/stats", params=[("by", "denial_reason")] * 2, headers={"authorization": f"Bearer {token}"})
        assert r.status_code == 400 and "up to 3 different fields" in r.json()["error"]
        code, out = _ask("why was it denied " * 500)
        assert code == 2 and "characters" in out and "Traceback" not in out
        code, out = _ask("why?", "--filter", "nonsense=1")
        assert code == 2 and "nonsense" in out
        code, out = _ask("why was therapy denied?", "--model", "openai:gpt-4o-mini")
        assert code == 2 and "IMR_SERVER_URL" in out
        before = json.loads(_ask("How many letters are there?", "--json")[1])
        # the server's index grows (a new segment); the next question sees it without a restart
        monkeypatch.setenv("IMR_DATA_DIR", str(data))
        monkeypatch.delenv("IMR_SERVER_URL")
        more = tmp_path / "more"
        more.mkdir()
        shutil.copy(LETTERS / "r032_CM16-0239479.pdf", more)
        res = runner.invoke(app, ["ingest", str(more)])
        assert res.exit_code == 0, res.output
        monkeypatch.setenv("IMR_SERVER_URL", srv.url)
        after = json.loads(_ask("How many letters are there?", "--json")[1])
        assert after["count"] == before["count"] + 1, (before["answer"], after["answer"])
        # its passages are in the new segment: found only if the server's open retriever was renewed
        hit = json.loads(_ask("why was it decided?", "--filter", "letter_id=r032_CM16-0239479", "--json")[1])
        assert hit["citations"] and {c["letter_id"] for c in hit["citations"]} == {"r032_CM16-0239479"}
        # a rebuild without that letter swaps the index folder: the server reads the new one
        monkeypatch.delenv("IMR_SERVER_URL")
        res = runner.invoke(app, ["index", "--rebuild", str(tmp_path / "records.jsonl")])
        assert res.exit_code == 0, res.output
        monkeypatch.setenv("IMR_SERVER_URL", srv.url)
        assert json.loads(_ask("How many letters are there?", "--json")[1])["count"] == before["count"]
    with _Served(data) as srv:  # without a token only loopback names are answered: said plainly
        monkeypatch.setenv("IMR_SERVER_URL", srv.url.replace("127.0.0.1", "localhost"))
        assert _ask("How many letters are there?")[0] == 0
        r = httpx.get(srv.url + "/api/ask", params={"q": "why?"}, headers={"host": "index-host.lan"})
        assert r.status_code == 400
        monkeypatch.setenv("IMR_SERVER_URL", srv.url)
        code, out = _ask("why?", "--local-only")  # loopback is local
        assert code == 0, out
    monkeypatch.setenv("IMR_SERVER_URL", "http://93.184.216.34:8321")  # public: refused before anything is sent
    code, out = _ask("why?", "--local-only")
    assert code == 2 and "IMR_LOCAL_ONLY" in out
    monkeypatch.setenv("IMR_SERVER_URL", srv.url)
    code, out = _ask(questions[0][0])  # the server is gone: one line
    assert code == 2 and "did not answer" in out and "Traceback" not in out


def test_in_chromium_filter_ask_follow_a_citation_and_a_hostile_letter(live):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    shots = ROOT / "out" / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    b = _browser()
    try:
        from selenium.webdriver.support.ui import WebDriverWait as Wait

        b.get(live + "/")
        total = int(b.find_element(By.ID, "total").text)
        b.find_element(By.CSS_SELECTOR, 'a.facet[data-facet="decision"][data-value="Upheld"]').click()
        Wait(b, 15).until(lambda d: "decision=Upheld" in d.current_url)
        upheld = int(b.find_element(By.ID, "total").text)
        assert 0 < upheld < total
        b.save_screenshot(str(shots / "home-filtered.png"))
        box = b.find_element(By.ID, "q")
        box.send_keys("why were physical therapy requests upheld after spinal fusion surgery?", Keys.ENTER)
        from selenium.webdriver.support.ui import WebDriverWait as Wait

        Wait(b, 30).until(lambda d: d.find_elements(By.ID, "answer"))
        cites = b.find_elements(By.CSS_SELECTOR, "a.cite")
        assert cites, b.page_source[:2000]
        assert "Searching the reasons of disputed items" in b.find_element(By.ID, "reading").text
        b.save_screenshot(str(shots / "ask.png"))
        quote = cites[0].get_attribute("data-quote")
        cites[0].click()
        from selenium.webdriver.support.ui import WebDriverWait

        WebDriverWait(b, 15).until(lambda d: d.execute_script("return typeof window.imrCited === 'string'"))
        assert "/letters/" in b.current_url and "#c=" in b.current_url
        cited = b.execute_script("return window.imrCited")
        assert cited == quote, (cited, quote)
        visible = b.execute_script("""const r = CSS.highlights.get('cite'); const box = [...r][0].getBoundingClientRect();
                                      return box.top >= 0 && box.bottom <= window.innerHeight && box.width > 0;""")
        assert visible
        b.save_screenshot(str(shots / "letter-cited.png"))
        # clicking a field flashes its span
        link = b.find_element(By.CSS_SELECTOR, "a.field-link")
        link.click()
        Wait(b, 5).until(lambda d: d.find_elements(By.CSS_SELECTOR, "mark.flash"))
        b.get(live + "/letters/hostile")
        time.sleep(0.3)
        assert b.execute_script("return typeof window.__pwned") == "undefined"
        text = b.find_element(By.ID, "letter").text
        assert "<script>window.__pwned=1</script>" in text and "{{ 7*7 }}" in text
        assert not b.find_elements(By.CSS_SELECTOR, "#letter img, #letter a, #letter script")
        b.save_screenshot(str(shots / "hostile-letter.png"))
    finally:
        b.quit()
