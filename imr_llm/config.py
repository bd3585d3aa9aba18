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
from urllib.parse import urlparse

PROVIDERS = ("none", "openai", "compatible", "llama-cpp")


def load_dotenv(path: str | Path = ".env") -> None:
    """Set variables from a ``.env`` file that the environment does not already set."""
    p = Path(path)
    if not p.is_file():
        return
    for line in p.read_text(encoding="utf-8", errors="replace").splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        k, v = line.split("=", 1)
        k = k.strip().removeprefix("export ").strip()
        v = v.strip().strip('"').strip("'")
        if k and k not in os.environ:
            os.environ[k] = v


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
    declared = {h.strip().lower() for h in os.environ.get("IMR_PRIVATE_HOSTS", "").split(",") if h.strip()}
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
    """Build settings from env/.env, with an optional ``PROVIDER:MODEL`` override."""
    load_dotenv()
    spec = model or os.environ.get("IMR_MODEL") or "none"
    s = Settings()
    if spec != "none":
        if ":" not in spec:
            raise ConfigError(f"model {spec!r}: use PROVIDER:MODEL, PROVIDER one of openai, compatible, llama-cpp (or 'none')")
        prov, name = spec.split(":", 1)
        if prov not in PROVIDERS:
            raise ConfigError(f"unknown provider {prov!r}: use one of {', '.join(PROVIDERS)}")
        s.provider, s.model = prov, name
    s.base_url = os.environ.get("IMR_BASE_URL") or None
    if s.provider == "openai":
        s.api_key = os.environ.get("OPENAI_API_KEY")
        if not s.api_key and need_key:
            raise ConfigError("provider 'openai' needs OPENAI_API_KEY in the environment or .env")
        s.base_url = None
    elif s.provider == "compatible":
        if not s.base_url:
            raise ConfigError("provider 'compatible' needs IMR_BASE_URL (e.g. http://127.0.0.1:11434/v1 for Ollama)")
        s.api_key = os.environ.get("IMR_API_KEY") or os.environ.get("OPENAI_API_KEY") or "not-needed"
    elif s.provider == "llama-cpp":
        if not Path(s.model).is_file():
            raise ConfigError(f"GGUF file not found: {s.model} (run `imr model install` for the bundled test model)")
    s.mode = os.environ.get("IMR_LLM_MODE", "tools")
    env_lo = os.environ.get("IMR_LOCAL_ONLY", "").lower() in ("1", "true", "yes")
    s.local_only = env_lo if local_only is None else (local_only or env_lo)
    s.data_dir = Path(os.environ.get("IMR_DATA_DIR", ".imr"))
    s.max_retries = int(os.environ.get("IMR_MAX_RETRIES", s.max_retries))
    s.timeout = float(os.environ.get("IMR_TIMEOUT", s.timeout))
    s.n_ctx = int(os.environ.get("IMR_N_CTX", s.n_ctx))
    if os.environ.get("IMR_PRICE_IN"):
        s.price_in = float(os.environ["IMR_PRICE_IN"])
    if os.environ.get("IMR_PRICE_OUT"):
        s.price_out = float(os.environ["IMR_PRICE_OUT"])
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
