"""Judge backends: an OpenAI-compatible chat-completions endpoint, or a local HF model in-process.

A backend turns chat ``messages`` into the judge's reply text. It returns ``None`` for a reply that
cannot be used (malformed body, a request the endpoint refuses for that prompt only, e.g. too long);
it raises :class:`JudgeAuthError` / :class:`JudgeEndpointError` for failures that would hit every
request (wrong key, wrong URL or model, endpoint down after all retries).
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from pathlib import Path
from typing import Protocol

from .errors import JudgeAuthError, JudgeConfigError, JudgeEndpointError
from .settings import JudgeSettings

log = logging.getLogger(__name__)

RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
PER_PROMPT_STATUS = {400, 413, 422}


class ChatBackend(Protocol):
    def chat(self, messages: list[dict[str, str]], max_tokens: int, temperature: float) -> str | None: ...

    @property
    def requests_made(self) -> int: ...


def backoff_delays(retries: int, base: float = 0.5, cap: float = 30.0):
    """Exponential backoff with jitter: base, 2*base, 4*base ... (capped)."""
    for attempt in range(retries):
        yield min(cap, base * (2 ** attempt)) * (0.75 + 0.5 * random.random())


class OpenAIChatBackend:
    """POST ``{base_url}/chat/completions`` with ``requests`` (temperature and max_tokens per call)."""

    def __init__(self, settings: JudgeSettings, backoff_base: float | None = None):
        import requests  # lm-eval already depends on it

        self.settings = settings
        self.url = settings.base_url.rstrip("/") + "/chat/completions"
        self._session = requests.Session()
        self._requests = requests
        self._count = 0
        self._count_lock = threading.Lock()
        self.backoff_base = float(os.environ.get("KICK_JUDGE_BACKOFF", "0.5")) if backoff_base is None else backoff_base

    @property
    def requests_made(self) -> int:
        return self._count

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.settings.api_key_env)  # read per request, never stored
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def chat(self, messages: list[dict[str, str]], max_tokens: int, temperature: float) -> str | None:
        body = {"model": self.settings.model, "messages": messages, "temperature": temperature,
                "max_tokens": max_tokens, "stream": False}
        delays = backoff_delays(self.settings.retries, self.backoff_base)
        last_problem = ""
        while True:
            try:
                with self._count_lock:
                    self._count += 1
                response = self._session.post(self.url, json=body, headers=self._headers(),
                                              timeout=self.settings.timeout)
            except (self._requests.ConnectionError, self._requests.Timeout) as exc:
                kind = "timed out" if isinstance(exc, self._requests.Timeout) else "connection failed"
                last_problem = f"{kind} ({type(exc).__name__})"
            else:
                status = response.status_code
                if status == 200:
                    return _reply_text(response)
                if status in (401, 403):
                    raise JudgeAuthError(
                        f"The judge endpoint {self.url} rejected the request with HTTP {status}: the API key in "
                        f"${self.settings.api_key_env} is missing or wrong"
                        f"{'' if os.environ.get(self.settings.api_key_env) else ' (the variable is not set)'}. "
                        "Set it, or point KICK_JUDGE_API_KEY_ENV at the variable holding the key.")
                if status == 404:
                    raise JudgeEndpointError(
                        f"The judge endpoint answered HTTP 404 for {self.url} (model {self.settings.model!r}): "
                        "check KICK_JUDGE_BASE_URL (usually ends with /v1) and KICK_JUDGE_MODEL. "
                        f"Server said: {_snippet(response)}")
                if status in PER_PROMPT_STATUS:
                    log.warning("judge refused one prompt (HTTP %s): %s; counted as an invalid verdict",
                                status, _snippet(response))
                    return None
                if status not in RETRY_STATUS:
                    raise JudgeEndpointError(f"The judge endpoint {self.url} answered HTTP {status}: {_snippet(response)}")
                last_problem = f"HTTP {status}"
                retry_after = response.headers.get("Retry-After")
                if retry_after and retry_after.replace(".", "", 1).isdigit():
                    time.sleep(min(60.0, float(retry_after)))
            delay = next(delays, None)
            if delay is None:
                raise JudgeEndpointError(
                    f"The judge endpoint {self.url} is unreachable or failing: {last_problem} after "
                    f"{self.settings.retries} retries. Is the server running and KICK_JUDGE_BASE_URL right? "
                    "Answers received so far are cached; rerun to resume.")
            log.info("judge request %s; retrying in %.1fs", last_problem, delay)
            time.sleep(delay)


def _snippet(response) -> str:
    return " ".join(response.text[:300].split()) or "<empty body>"


def _reply_text(response) -> str | None:
    """``choices[0].message.content`` of a chat completion, or None for a malformed body."""
    try:
        content = response.json()["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        log.warning("judge returned a malformed chat completion: %s", _snippet(response))
        return None
    return content if isinstance(content, str) else None


class HFLocalBackend:
    """A Hugging Face causal LM run in this process (greedy decoding, the model's chat template).

    ``model`` is a local folder, a Hub id, or a ``.gguf`` file (loaded with ``gguf_file=``).
    Calls are serialised (one model, one forward at a time).
    """

    def __init__(self, settings: JudgeSettings):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.settings = settings
        source = os.path.expanduser(settings.model)
        kwargs = {}
        if source.endswith(".gguf"):
            if not Path(source).is_file():
                raise JudgeConfigError(f"judge GGUF file {source!r} does not exist.")
            kwargs["gguf_file"] = Path(source).name
            source = str(Path(source).parent)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
            self.model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, **kwargs)
        except OSError as exc:
            raise JudgeConfigError(f"could not load the local judge model {settings.model!r}: {exc}") from exc
        self.model.eval()
        if not getattr(self.tokenizer, "chat_template", None):
            raise JudgeConfigError(f"the judge model {settings.model!r} has no chat template; use an instruct model.")
        self._torch = torch
        self._lock = threading.Lock()
        self._count = 0

    @property
    def requests_made(self) -> int:
        return self._count

    def chat(self, messages: list[dict[str, str]], max_tokens: int, temperature: float = 0.0) -> str | None:
        """Greedy whatever ``temperature`` says (the cache key records 0 for this backend)."""
        with self._lock:
            self._count += 1
            ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                                     return_dict=True)
            input_ids = ids["input_ids"]
            with self._torch.no_grad():
                out = self.model.generate(input_ids, attention_mask=ids.get("attention_mask"),
                                          max_new_tokens=max_tokens, do_sample=False,
                                          pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id)
            return self.tokenizer.decode(out[0, input_ids.shape[1]:], skip_special_tokens=True)


def make_backend(settings: JudgeSettings) -> ChatBackend:
    if settings.backend == "openai":
        return OpenAIChatBackend(settings)
    if settings.backend == "hf":
        return HFLocalBackend(settings)
    raise JudgeConfigError("no judge backend configured (KICK_JUDGE_BACKEND=none).")
