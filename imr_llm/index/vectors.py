"""The shared Chroma server (``IMR_CHROMA_URL``), where a team keeps the vectors instead of each index's segments."""
from __future__ import annotations

from pathlib import Path

from ..config import env
from .problems import IndexProblem


def chroma_client(path: Path):
    import chromadb
    from chromadb.config import Settings as CSettings

    e = env()
    url = e.chroma_url
    cs = CSettings(anonymized_telemetry=False, allow_reset=False)
    if url:
        from urllib.parse import urlparse

        u = urlparse(url)
        from ..config import is_private_url
        if e.local_only and not is_private_url(url):
            raise IndexProblem(f"IMR_LOCAL_ONLY is set: refusing Chroma server {url!r}")
        return chromadb.HttpClient(host=u.hostname, port=u.port or (443 if u.scheme == "https" else 8000),
                                   ssl=u.scheme == "https", settings=cs)
    raise IndexProblem("no Chroma server configured (IMR_CHROMA_URL): local indexes keep their vectors in search segments")


def forget_clients() -> None:
    """Drop chromadb's per-process client cache before its folder is deleted under it."""
    import sys

    if "chromadb" not in sys.modules:  # never imported here: nothing cached (and no 1 s import)
        return
    try:
        from chromadb.api.client import SharedSystemClient

        SharedSystemClient.clear_system_cache()
    except Exception:
        pass


def check_chroma_server() -> None:
    """With IMR_CHROMA_URL, the server must answer before anything is changed."""
    url = env().chroma_url
    if not url:
        return
    try:
        chroma_client(Path(".")).heartbeat()
    except IndexProblem:
        raise
    except Exception as e:
        raise IndexProblem(f"the Chroma server at {url} did not answer ({type(e).__name__}: {str(e)[:100]}); "
                          f"start it (or unset IMR_CHROMA_URL); nothing was changed") from None
