"""Settings from the environment and ``.env``; the provider choice and the local-only rule.

A model is named ``PROVIDER:MODEL``: ``openai:gpt-4o-mini``, ``compatible:qwen2.5:7b`` (with
``IMR_BASE_URL``), ``llama-cpp:/path/to/model.gguf``, or ``none`` (the default: layout parser only).
Nothing leaves the machine unless the user names a remote provider.
"""
from __future__ import annotations

import ipaddress
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional
from urllib.parse import urlparse

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

PROVIDERS = ("none", "openai", "compatible", "llama-cpp")


def load_dotenv(path: str | Path = ".env") -> None:
    """Set variables from a ``.env`` file that the environment does not already set (so libraries
    and child processes see the same values as ``EnvSettings``)."""
    p = Path(path)
    if not p.is_file():
        return
    for line in p.read_text(encoding="utf-8", errors="replace").splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        k, v = line.split("=", 1)
        k = k.strip().removeprefix("export ").strip()
        v = v.split(" #", 1)[0].strip().strip('"').strip("'")
        if k and k not in os.environ:
            os.environ[k] = v


def _f(default, section: str, description: str, **kw):
    return Field(default, description=description, json_schema_extra={"section": section}, **kw)


class EnvSettings(BaseSettings):
    """Every setting imr-llm reads, from the environment or ``.env`` (``IMR_`` prefix), typed and
    described; ``imr config`` prints the effective values with secrets masked. Built once per
    command (``env()``); nothing else in the package reads ``os.environ`` for its own settings."""

    model_config = SettingsConfigDict(env_prefix="IMR_", extra="ignore", protected_namespaces=(), populate_by_name=True)

    # -- model
    model_spec: str = _f("none", "model", "PROVIDER:MODEL: none, openai:NAME, compatible:NAME, llama-cpp:FILE.gguf",
                         validation_alias="IMR_MODEL")
    base_url: Optional[str] = _f(None, "model", "OpenAI-compatible server URL for compatible:NAME (Ollama, vLLM, llama.cpp server)")
    api_key: Optional[SecretStr] = _f(None, "model", "key for the compatible server, if it wants one")
    openai_api_key: Optional[SecretStr] = _f(None, "model", "OpenAI key (for openai:NAME and openai embeddings)",
                                             validation_alias="OPENAI_API_KEY")
    llm_mode: str = _f("tools", "model", "instructor mode: tools | json | md_json | json_schema")
    max_retries: int = _f(4, "model", "HTTP retries (429/5xx/timeouts) with exponential backoff and jitter", ge=0, le=50)
    validation_retries: int = _f(1, "model", "re-asks when the model's JSON does not validate", ge=0, le=20)
    timeout: float = _f(120.0, "model", "seconds for one HTTP request", gt=0)
    letter_deadline: float = _f(300.0, "model", "seconds for one letter, every retry included; then it fails with its reason", gt=0)
    answer_deadline: float = _f(120.0, "model", "seconds for a model-written answer of `imr ask`", gt=0)
    letter_token_budget: int = _f(20000, "model", "tokens one letter may spend, validation re-asks included", gt=0)
    max_output_tokens: int = _f(1500, "model", "max tokens of one model answer", gt=0)
    n_ctx: int = _f(8192, "model", "context size of an in-process llama.cpp model", gt=0)
    price_in: Optional[float] = _f(None, "model", "USD per 1M input tokens, for models not in the price table", ge=0)
    price_out: Optional[float] = _f(None, "model", "USD per 1M output tokens", ge=0)
    models_dir: Optional[Path] = _f(None, "model", "where `imr model install` keeps GGUF files (default ~/.cache/imr-llm/models)")
    # -- index
    data_dir: Path = _f(Path(".imr"), "index", "cache, records and index folder")
    embedder: str = _f("wordllama", "index", "wordllama (offline, default) | openai:NAME | compatible:NAME | chroma-default")
    embed_base_url: Optional[str] = _f(None, "index", "embedding server for compatible:NAME (default IMR_BASE_URL)")
    chroma_url: Optional[str] = _f(None, "index", "a shared Chroma server instead of the local folder")
    server_url: Optional[str] = _f(None, "index", "an `imr serve` on the machine that holds the index (http://host:8321): "
                                   "`imr ask` asks it, with IMR_SERVE_TOKEN, instead of reading IMR_DATA_DIR")
    index_workers: int = _f(0, "index", "processes that prepare and embed letters in `imr index` (0: two for a records "
                            "file over 20 MB with the local embedder, else none)", ge=0, le=64)
    # -- limits and safety
    local_only: bool = _f(False, "limits", "refuse any provider, embedder or Chroma server not on this machine or a private URL")
    private_hosts: str = _f("", "limits", "comma-separated hosts you declare private (for IMR_LOCAL_ONLY)")
    max_bytes: int = _f(16 * 1024 * 1024, "limits", "largest letter file read", gt=0)
    serve_token: Optional[SecretStr] = _f(None, "limits", "`imr serve` beyond 127.0.0.1: the token every request must carry")

    def serve_secret(self) -> str | None:
        """IMR_SERVE_TOKEN's value: what `imr serve` requires and the commands asking it send."""
        return self.serve_token.get_secret_value() if self.serve_token else None

    def env_name(self, field: str) -> str:
        alias = type(self).model_fields[field].validation_alias
        return alias if isinstance(alias, str) else f"IMR_{field.upper()}"


_ENV_CACHE: dict[tuple, EnvSettings] = {}


def env() -> EnvSettings:
    """The settings of this process's environment (``.env`` included), validated; cached while the
    environment is unchanged. A bad value is one ``ConfigError`` line naming the variable."""
    load_dotenv()
    key = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("IMR_") or k == "OPENAI_API_KEY"))
    got = _ENV_CACHE.get(key)
    if got is None:
        try:
            got = EnvSettings()
        except ValidationError as e:
            err = e.errors()[0]
            name = str(err["loc"][0]) if err.get("loc") else "?"
            if not name.isupper():
                name = EnvSettings.model_fields[name].validation_alias or f"IMR_{name.upper()}" if name in EnvSettings.model_fields else name
            raise ConfigError(f"{name}={os.environ.get(str(name), '')!r}: {err['msg']}") from None
        _ENV_CACHE.clear()
        _ENV_CACHE[key] = got
    return got


def describe() -> list[tuple[str, str, str, str]]:
    """(section, variable, effective value with secrets masked, description) of every setting."""
    e = env()
    rows = []
    for name, f in EnvSettings.model_fields.items():
        v = getattr(e, name)
        shown = ("***" + v.get_secret_value()[-4:] if len(v.get_secret_value()) > 8 else "***") if isinstance(v, SecretStr) else \
            ("" if v is None else str(v))
        rows.append(((f.json_schema_extra or {}).get("section", ""), e.env_name(name), shown, f.description or ""))
    return rows


class ConfigError(Exception):
    pass


@dataclass
class Settings:
    provider: str = "none"
    model: str | None = None
    base_url: str | None = None
    api_key: str | None = field(default=None, repr=False)
    mode: str = "tools"
    local_only: bool = False
    data_dir: Path = Path(".imr")
    max_retries: int = 4
    timeout: float = 120.0
    max_output_tokens: int = 1500
    n_ctx: int = 8192
    price_in: float | None = None  # USD per 1M input tokens (overrides the table)
    price_out: float | None = None
    env: "EnvSettings | None" = field(default=None, repr=False)  # every other setting

    @property
    def label(self) -> str:
        return "none" if self.provider == "none" else f"{self.provider}:{self.model}"

    def check_local_only(self) -> None:
        """Refuse, before any byte is sent, a provider that is not on this machine or a private URL."""
        if not self.local_only or self.provider in ("none", "llama-cpp"):
            return
        if self.provider == "openai":
            raise ConfigError("IMR_LOCAL_ONLY is set: refusing provider 'openai' (api.openai.com is remote); use llama-cpp or a local compatible server")
        if not is_private_url(self.base_url or ""):
            raise ConfigError(f"IMR_LOCAL_ONLY is set: refusing {self.base_url!r}, which is not a loopback or private address (add its host to IMR_PRIVATE_HOSTS to declare it private)")


def is_private_url(url: str) -> bool:
    host = urlparse(url).hostname or ""
    declared = {h.strip().lower() for h in env().private_hosts.split(",") if h.strip()}
    if host.lower() in declared or host.lower() == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        try:  # resolve without sending anything to the service itself
            ip = ipaddress.ip_address(socket.gethostbyname(host))
        except (OSError, ValueError):
            return False
    return ip.is_loopback or ip.is_private or ip.is_link_local


def settings(model: str | None = None, local_only: bool | None = None, need_key: bool = True) -> Settings:
    """The run's settings: ``env()`` plus an optional ``PROVIDER:MODEL`` override, provider resolved."""
    e = env()
    spec = model or e.model_spec or "none"
    s = Settings(env=e)
    if spec != "none":
        if ":" not in spec:
            raise ConfigError(f"model {spec!r}: use PROVIDER:MODEL, PROVIDER one of openai, compatible, llama-cpp (or 'none')")
        prov, name = spec.split(":", 1)
        if prov not in PROVIDERS:
            raise ConfigError(f"unknown provider {prov!r}: use one of {', '.join(PROVIDERS)}")
        s.provider, s.model = prov, name
    s.base_url = e.base_url or None
    openai_key = e.openai_api_key.get_secret_value() if e.openai_api_key else None
    if s.provider == "openai":
        s.api_key = openai_key
        if not s.api_key and need_key:
            raise ConfigError("provider 'openai' needs OPENAI_API_KEY in the environment or .env")
        s.base_url = None
    elif s.provider == "compatible":
        if not s.base_url:
            raise ConfigError("provider 'compatible' needs IMR_BASE_URL (e.g. http://127.0.0.1:11434/v1 for Ollama)")
        s.api_key = (e.api_key.get_secret_value() if e.api_key else None) or openai_key or "not-needed"
    elif s.provider == "llama-cpp":
        if not Path(s.model).is_file():
            raise ConfigError(f"GGUF file not found: {s.model} (run `imr model install` for the bundled test model)")
    s.mode = e.llm_mode
    s.local_only = e.local_only if local_only is None else (local_only or e.local_only)
    s.data_dir = e.data_dir
    s.max_retries, s.timeout, s.n_ctx = e.max_retries, e.timeout, e.n_ctx
    s.max_output_tokens, s.price_in, s.price_out = e.max_output_tokens, e.price_in, e.price_out
    s.check_local_only()
    return s


_KEYLIKE = __import__("re").compile(r"\b(sk-[A-Za-z0-9_\-]{6})[A-Za-z0-9_\-]{6,}")


def redact(text: str) -> str:
    """Remove API keys from any text that may reach a terminal, log or output file."""
    for var in ("OPENAI_API_KEY", "IMR_API_KEY"):
        v = os.environ.get(var)
        if v and len(v) >= 6:
            text = text.replace(v, "***")
    return _KEYLIKE.sub(r"\1***", text)
