"""Embedders, all offline by default, each with an identity recorded in the index.

* ``wordllama`` (default): 256-dim static embeddings whose weights ship inside the wheel.
* ``openai:MODEL`` / ``compatible:MODEL`` (``IMR_EMBED_BASE_URL`` or ``IMR_BASE_URL``): remote or
  self-hosted embedding endpoints.
* ``chroma-default``: Chroma's ONNX MiniLM, which downloads its model on first use (internet only).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from ..config import ConfigError, env, is_private_url

DEFAULT = "wordllama"


def spec_from_env() -> str:
    return env().embedder or DEFAULT


class WordLlamaEmbedder:
    """WordLlama loaded from its own package folder, never from the network."""

    dim = 256

    def __init__(self) -> None:
        root = logging.getLogger()
        level, handlers = root.level, list(root.handlers)
        import wordllama  # importing it switches the root logger to INFO (and may add a handler); undo
        from wordllama import WordLlama

        root.setLevel(level)
        root.handlers[:] = handlers
        # load() looks for the tokenizer under cache_dir/tokenizers: point it at the package itself
        self._wl = WordLlama.load(cache_dir=Path(wordllama.__file__).parent, disable_download=True, dim=self.dim)
        root.setLevel(level)

    def __call__(self, texts: list[str]) -> np.ndarray:
        v = np.asarray(self._wl.embed(list(texts)), dtype=np.float32)
        n = np.linalg.norm(v, axis=1, keepdims=True)
        return v / np.maximum(n, 1e-9)


class OpenAIEmbedder:
    def __init__(self, model: str, base_url: str | None, api_key: str | None):
        from openai import OpenAI

        self.model = model
        self._c = OpenAI(api_key=api_key or "not-needed", base_url=base_url, max_retries=4)

    def __call__(self, texts: list[str]) -> np.ndarray:
        out = []
        for i in range(0, len(texts), 256):
            r = self._c.embeddings.create(model=self.model, input=list(texts[i:i + 256]))
            out.extend(d.embedding for d in r.data)
        v = np.asarray(out, dtype=np.float32)
        return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-9)


class ChromaDefaultEmbedder:
    def __init__(self) -> None:
        from chromadb.utils.embedding_functions import DefaultEmbeddingFunction

        self._ef = DefaultEmbeddingFunction()

    def __call__(self, texts: list[str]) -> np.ndarray:
        v = np.asarray(self._ef(list(texts)), dtype=np.float32)
        return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-9)


def identity(spec: str) -> str:
    """What the index records: enough to refuse mixing vectors from two embedders."""
    if spec == "wordllama":
        return "wordllama:l2_supercat:256"
    if spec.startswith("compatible:"):
        return f"{spec}@{env().embed_base_url or env().base_url}"
    return spec


def make(spec: str | None = None, local_only: bool = False) -> Any:
    spec = spec or spec_from_env()
    e = env()
    local_only = local_only or e.local_only
    if spec == "wordllama":
        return WordLlamaEmbedder()
    if spec == "chroma-default":
        if local_only:
            raise ConfigError("IMR_LOCAL_ONLY is set: refusing embedder 'chroma-default' (it downloads its model)")
        return ChromaDefaultEmbedder()
    if ":" in spec:
        prov, model = spec.split(":", 1)
        if prov == "openai":
            if local_only:
                raise ConfigError("IMR_LOCAL_ONLY is set: refusing embedder 'openai' (remote)")
            key = e.openai_api_key.get_secret_value() if e.openai_api_key else None
            if not key:
                raise ConfigError("embedder 'openai' needs OPENAI_API_KEY")
            return OpenAIEmbedder(model, None, key)
        if prov == "compatible":
            url = e.embed_base_url or e.base_url
            if not url:
                raise ConfigError("embedder 'compatible' needs IMR_EMBED_BASE_URL (or IMR_BASE_URL)")
            if local_only and not is_private_url(url):
                raise ConfigError(f"IMR_LOCAL_ONLY is set: refusing embedding endpoint {url!r}")
            return OpenAIEmbedder(model, url, e.api_key.get_secret_value() if e.api_key else None)
    raise ConfigError(f"unknown embedder {spec!r}: use wordllama, openai:MODEL, compatible:MODEL or chroma-default")


def chroma_function(spec: str):
    """The embedder as a registered Chroma embedding function, so the collection's configuration
    records which embedder wrote its vectors (imr still passes vectors explicitly)."""
    from chromadb.api.types import Documents, EmbeddingFunction, Embeddings
    from chromadb.utils.embedding_functions import known_embedding_functions, register_embedding_function

    if "imr_llm" not in known_embedding_functions:
        @register_embedding_function
        class ImrEmbeddingFunction(EmbeddingFunction[Documents]):
            def __init__(self, spec: str = DEFAULT):
                self.spec = spec
                self._impl = None

            def __call__(self, input: Documents) -> Embeddings:
                if self._impl is None:
                    self._impl = make(self.spec)
                return list(self._impl(list(input)))

            @staticmethod
            def name() -> str:
                return "imr_llm"

            def default_space(self):
                return "cosine"

            def get_config(self) -> dict:
                return {"spec": self.spec, "identity": identity(self.spec)}

            @staticmethod
            def build_from_config(config: dict) -> "ImrEmbeddingFunction":
                return ImrEmbeddingFunction(config.get("spec", DEFAULT))

    return known_embedding_functions["imr_llm"](spec)
