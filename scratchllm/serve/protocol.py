"""OpenAI's API shapes: request bodies checked field by field, and its error objects.

A wrong field is a 400 whose error object names it (``param``), as OpenAI's API answers, so the
``openai`` client raises ``BadRequestError`` with that message; fields of the API that this server
does not implement are accepted at their default value and refused otherwise, never ignored.

>>> req = parse_request({"model": "m", "prompt": "Hi", "max_tokens": 5, "stop": "\\n"}, chat=False)
>>> req.prompts, req.max_tokens, req.stop, req.temperature
(['Hi'], 5, ['\\n'], 1.0)
>>> parse_request({"prompt": "Hi", "n": 0}, chat=False)
Traceback (most recent call last):
...
scratchllm.serve.protocol.APIError: n must be >= 1, got 0
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from scratchllm.errors import ScratchLLMError, check_range

MAX_STOP_STRINGS = 4  # OpenAI's limit
MAX_TOP_LOGPROBS = 20


class APIError(Exception):
    """An error the client gets as OpenAI's error object: ``{"error": {message, type, param, code}}``."""

    def __init__(self, message: str, status: int = 400, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message, self.status, self.type, self.param, self.code = message, status, type, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class GenerationRequest:
    """A completion or chat request, checked. ``prompts``: the completion prompts (text or token
    ids); ``messages``: the chat's. ``logprobs``: None, or the alternatives per token (0-20)."""

    model: str | None = None
    prompts: list[str | list[int]] = field(default_factory=list)
    messages: list[dict[str, str]] = field(default_factory=list)
    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    n: int = 1
    logprobs: int | None = None
    stream: bool = False
    include_usage: bool = False


class _Fields:
    """Typed reads of a JSON object's fields; null counts as absent (the clients send nulls)."""

    def __init__(self, body: Any) -> None:
        if not isinstance(body, dict):
            raise APIError(f"the request body must be a JSON object, got {type(body).__name__}")
        self.body = body

    def get(self, name: str, kinds: type | tuple[type, ...], what: str, default: Any = None) -> Any:
        value = self.body.get(name)
        if value is None:
            return default
        kinds = kinds if isinstance(kinds, tuple) else (kinds,)
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            raise APIError(f"{name} must be {what}, got {json.dumps(value)[:60]}", param=name)
        return value

    def number(self, name: str, default: Any, low: float | None = None, high: float | None = None, *,
               integer: bool = False, low_open: bool = False, note: str = "") -> Any:
        value = self.get(name, int if integer else (int, float), "an integer" if integer else "a number", default)
        if value is not None:
            try:
                check_range(name, value, low, high, low_open=low_open, note=note)
            except ScratchLLMError as err:
                raise APIError(str(err), param=name) from None
        return value

    def unsupported(self, name: str, allowed: tuple[Any, ...]) -> None:
        """Refuse a field of OpenAI's API this server does not implement, unless it has its default."""
        if self.body.get(name) not in (None, *allowed):
            raise APIError(f"{name} is not supported by this server; leave it out", param=name)


def parse_request(body: Any, chat: bool) -> GenerationRequest:
    """Check a ``/v1/completions`` (``chat=False``) or ``/v1/chat/completions`` body."""
    f = _Fields(body)
    for name in ("presence_penalty", "frequency_penalty"):
        f.unsupported(name, (0, 0.0))
    f.unsupported("logit_bias", ({},))
    if chat:
        for name in ("tools", "functions", "tool_choice", "function_call"):
            f.unsupported(name, ())
        f.unsupported("response_format", ({"type": "text"},))
    else:
        f.unsupported("echo", (False,))
        f.unsupported("suffix", ("",))
        f.unsupported("best_of", (1,))

    stop = f.get("stop", (str, list), "a string or a list of strings", [])
    stop = [stop] if isinstance(stop, str) else stop
    if len(stop) > MAX_STOP_STRINGS or not all(isinstance(s, str) and s for s in stop):
        raise APIError(f"stop must be a string or a list of up to {MAX_STOP_STRINGS} non-empty strings", param="stop")
    stream = f.get("stream", bool, "true or false", False)
    options = f.get("stream_options", dict, "an object", None)
    if options is not None and not stream:
        raise APIError("stream_options is only allowed with stream: true", param="stream_options")
    include_usage = _Fields(options or {}).get("include_usage", bool, "true or false", False)
    top_k = f.number("top_k", None, integer=True)
    if top_k is not None and top_k <= 0:  # vLLM's convention: -1 (or 0) = no top-k
        top_k = None
    max_tokens = f.number("max_tokens", None, 1, integer=True)
    if chat:
        max_tokens = f.number("max_completion_tokens", max_tokens, 1, integer=True)
        logprobs = None
        if f.get("logprobs", bool, "true or false", False):
            logprobs = f.number("top_logprobs", 0, 0, MAX_TOP_LOGPROBS, integer=True)
        elif f.body.get("top_logprobs") is not None:
            raise APIError("top_logprobs needs logprobs: true", param="top_logprobs")
    else:
        logprobs = f.number("logprobs", None, 0, MAX_TOP_LOGPROBS, integer=True)
    return GenerationRequest(
        model=f.get("model", str, "a string"),
        prompts=[] if chat else _prompts(f),
        messages=_messages(f) if chat else [],
        max_tokens=max_tokens,
        temperature=f.number("temperature", 1.0, 0, 2, note="0 = greedy"),
        top_p=f.number("top_p", None, 0, 1, low_open=True),
        top_k=top_k,
        seed=f.number("seed", None, integer=True),
        stop=stop,
        n=f.number("n", 1, 1, integer=True),
        logprobs=logprobs,
        stream=stream,
        include_usage=include_usage,
    )


def _prompts(f: _Fields) -> list[str | list[int]]:
    """``prompt``: a string, a list of strings, a list of token ids, or a list of such lists."""
    prompt = f.body.get("prompt")
    what = "a string, a list of strings, a list of token ids or a list of lists of token ids"

    def is_ids(x: Any) -> bool:
        return isinstance(x, list) and bool(x) and all(isinstance(i, int) and not isinstance(i, bool) for i in x)

    if isinstance(prompt, str):
        return [prompt]
    if is_ids(prompt):
        return [prompt]
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) or is_ids(p) for p in prompt):
        return list(prompt)
    raise APIError(f"prompt must be {what}", param="prompt")


def _messages(f: _Fields) -> list[dict[str, str]]:
    """``messages``: [{role, content}], content a string or a list of text parts."""
    messages = f.body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise APIError("messages must be a non-empty list of {role, content} objects", param="messages")
    out = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict) or message.get("role") not in ("system", "user", "assistant"):
            raise APIError(f"{where} must be an object with role 'system', 'user' or 'assistant'", param=where)
        content = message.get("content")
        if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                       for p in content):
                raise APIError(f"{where}.content parts must be text parts: {{\"type\": \"text\", \"text\": ...}}",
                               param=f"{where}.content")
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise APIError(f"{where}.content must be a string", param=f"{where}.content")
        out.append({"role": message["role"], "content": content})
    return out
