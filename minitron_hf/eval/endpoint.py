"""A small client for OpenAI-compatible servers: an LLM judge (OpenAI, Azure-style gateways) or a model
under test served by vLLM (``minitron serve``), TensorRT-LLM or any server with the same API.

- :func:`check_endpoint` asks ``GET {base_url}/models`` with a short timeout before any heavy work and
  raises :class:`EndpointError` (a ``ValueError``) naming the option when nothing answers, the key is
  refused, or the wanted model is not served; it returns the served model names.
- :func:`chat` (``/chat/completions``) and :func:`complete` (``/completions``) return the text of the
  first choice. Transient failures (connection errors, timeouts, HTTP 408/409/429 and 5xx) are retried
  with exponential backoff (``Retry-After`` honoured for 429); any other error is raised at once, and
  the last error once the retries are spent (an ``openai.APIError``).

The API key is read from the environment variable the caller names (``api_key_env``); an unset or
empty variable sends a placeholder key, which servers started without ``--api-key`` ignore. Built on
the ``openai`` package; one client per (base URL, key) is kept and shared by threads.
"""

from __future__ import annotations

import functools
import logging
import os
import random
import time

from ..errors import MinitronError

logger = logging.getLogger(__name__)

NO_KEY = "EMPTY"  # what vLLM's documentation passes to servers that check no key
TRANSIENT_STATUS = (408, 409, 429)  # and every 5xx


class EndpointError(MinitronError):
    """An endpoint that cannot be used; the message names the option (field) and the URL."""


def api_key(api_key_env: str | None) -> str:
    """The key in the environment variable ``api_key_env``, or :data:`NO_KEY` when unset or empty."""
    return (os.environ.get(api_key_env) if api_key_env else None) or NO_KEY


@functools.lru_cache(maxsize=16)
def client(base_url: str, key: str):
    """The ``openai.OpenAI`` client of ``base_url`` with ``key`` (see :func:`api_key`), one per pair, shared by
    threads; it does not retry (:func:`with_retries` does)."""
    try:
        import openai
    except ImportError:
        raise EndpointError("the openai package is not installed: pip install 'openai>=1'") from None
    for name in ("httpx", "httpx2"):  # one INFO line per request otherwise (thousands in a judge run)
        if logging.getLogger(name).level == logging.NOTSET:
            logging.getLogger(name).setLevel(logging.WARNING)
    # retries are ours (is_transient): the client's own would retry again under them
    return openai.OpenAI(base_url=base_url.rstrip("/"), api_key=key, max_retries=0)


def is_transient(err: Exception) -> bool:
    """Worth retrying: no answer, a timeout, HTTP 408/409/429 or a server error (5xx)."""
    import openai

    if isinstance(err, openai.APIConnectionError):  # includes APITimeoutError
        return True
    if isinstance(err, openai.APIStatusError):
        return err.status_code in TRANSIENT_STATUS or err.status_code >= 500
    return False


def _retry_after(err: Exception) -> float | None:
    resp = getattr(err, "response", None)
    value = resp.headers.get("retry-after") if resp is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def with_retries(call, retries: int = 5, backoff_s: float = 1.0, max_backoff_s: float = 60.0, what: str = "request"):
    """``call()``, retried on :func:`is_transient` errors up to ``retries`` times, waiting
    ``backoff_s * 2**attempt`` (with jitter, at most ``max_backoff_s``; a 429's ``Retry-After`` if larger)."""
    for attempt in range(retries + 1):
        try:
            return call()
        except Exception as e:
            if attempt == retries or not is_transient(e):
                raise
            wait = min(max_backoff_s, backoff_s * 2 ** attempt) * (0.5 + random.random() / 2)
            wait = max(wait, min(max_backoff_s, _retry_after(e) or 0.0))
            logger.warning("%s failed (%s: %s); retry %d/%d in %.1f s", what, type(e).__name__, e, attempt + 1,
                           retries, wait)
            time.sleep(wait)


def check_endpoint(base_url: str | None, field: str = "base_url", api_key_env: str | None = None,
                   model: str | None = None, model_field: str = "model", timeout_s: float = 5.0) -> list[str]:
    """The model names served at ``base_url`` (``GET {base_url}/models``), or :class:`EndpointError`
    naming ``field`` when no server answers within ``timeout_s``, the key is refused, or ``model`` (when
    given) is not among the served names (naming ``model_field``)."""
    import openai

    if not base_url or not str(base_url).startswith(("http://", "https://")):
        raise EndpointError(f"{field}={base_url!r}: expected the URL of an OpenAI-compatible API, "
                            f"e.g. http://127.0.0.1:8000/v1 (vLLM) or https://api.openai.com/v1")
    api = client(str(base_url), api_key(api_key_env))
    url = f"{str(base_url).rstrip('/')}/models"
    try:
        page = api.models.list(timeout=timeout_s)
        names = [m.id for m in page.data]
    except openai.AuthenticationError as e:
        key = f"the environment variable {api_key_env}" if api_key_env else "no key"
        raise EndpointError(f"{field}={base_url!r}: GET {url} refused the API key (HTTP {e.status_code}); "
                            f"the key comes from {key}") from None
    except openai.APIConnectionError as e:
        why = "did not answer" if isinstance(e, openai.APITimeoutError) else "could not be reached"
        raise EndpointError(f"{field}={base_url!r}: GET {url} {why} within {timeout_s:g} s ({e.__cause__ or e}); "
                            f"start the server (e.g. `minitron serve` or `vllm serve`) or fix the URL") from None
    except openai.APIError as e:
        raise EndpointError(f"{field}={base_url!r}: GET {url} is not an OpenAI-compatible model list "
                            f"({type(e).__name__}: {e})") from None
    if model is not None and names and model not in names:
        raise EndpointError(f"{model_field}={model!r} is not served at {base_url}; it serves: {', '.join(names)}")
    logger.info("%s %s serves %s", field, base_url, ", ".join(names) or "(no model list)")
    return names


def chat(base_url: str, model: str, messages: list[dict], api_key_env: str | None = None, retries: int = 5,
         backoff_s: float = 1.0, timeout_s: float = 600.0, **sampling) -> str:
    """The reply to ``messages`` (``[{"role": ..., "content": ...}]``) from ``model`` at ``base_url``.
    ``sampling`` goes to the request as is (temperature, max_tokens, top_p, seed, stop, ...)."""
    api = client(base_url, api_key(api_key_env))
    resp = with_retries(lambda: api.chat.completions.create(model=model, messages=messages, timeout=timeout_s,
                                                               **sampling),
                        retries=retries, backoff_s=backoff_s, what=f"chat request to {model} at {base_url}")
    return resp.choices[0].message.content or ""


def complete(base_url: str, model: str, prompt: str, api_key_env: str | None = None, retries: int = 5,
             backoff_s: float = 1.0, timeout_s: float = 600.0, **sampling) -> str:
    """The continuation of ``prompt`` (no chat template) from ``model`` at ``base_url``."""
    api = client(base_url, api_key(api_key_env))
    resp = with_retries(lambda: api.completions.create(model=model, prompt=prompt, timeout=timeout_s, **sampling),
                        retries=retries, backoff_s=backoff_s, what=f"completion request to {model} at {base_url}")
    return resp.choices[0].text or ""
