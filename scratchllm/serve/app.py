"""The OpenAI-compatible HTTP app (Starlette): routes, the API key, limits, and streaming.

Routes: ``GET /`` (the chat page), ``GET /health``, ``GET /metrics``, ``GET /v1/models``,
``POST /v1/completions``, ``POST /v1/chat/completions``. Every answer that is not a success is
OpenAI's error object (``protocol.APIError``), never a traceback. Each choice of a request is one
job of the ``Batcher``, so requests share the engine's decode steps (continuous batching).

>>> import torch; from scratchllm.model import GPT, GPTConfig; from scratchllm.tokenizer import BPETokenizer
>>> tok = BPETokenizer.train("hello world", vocab_size=260, progress=False)
>>> app = create_app(GPT(GPTConfig.preset("tiny", vocab_size=260)), tok, ServeConfig(model_name="tiny"))
>>> [route.path for route in app.routes]
['/', '/health', '/metrics', '/v1/models', '/v1/completions', '/v1/chat/completions']
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import importlib.resources
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route
from torch import nn

from scratchllm.errors import ScratchLLMError
from scratchllm.inference import Engine, SamplingSettings
from scratchllm.serve.batcher import Batcher, Job, JobFailed, QueueFull, TokenEvent
from scratchllm.serve.metrics import Metrics
from scratchllm.serve.output import ChoiceOutput, Delta
from scratchllm.serve.protocol import APIError, GenerationRequest, parse_request
from scratchllm.tokenizer import ENDOFTEXT

log = logging.getLogger("scratchllm.serve")

COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions


@dataclass(frozen=True)
class ServeConfig:
    """The server's limits; each one a request runs into is named in its error (with its flag).

    max_batch: sequences decoding at once (slots of the engine's KV cache).
    max_queue: sequences waiting for a slot; past that, 429 with ``Retry-After``.
    max_prompt_tokens, max_tokens: per request, default what a slot holds (the context).
    max_n: choices per request. max_body_bytes: request body size (413 past it).
    request_timeout: seconds a request may take, from its arrival to its last token.
    api_key: when set, every route but ``/health`` and the page needs ``Authorization: Bearer KEY``.
    """

    model_name: str = "scratchllm"
    max_batch: int = 16
    max_queue: int = 64
    max_len: int | None = None
    max_prompt_tokens: int | None = None
    max_tokens: int | None = None
    max_n: int = 8
    max_body_bytes: int = 1 << 20
    request_timeout: float = 300.0
    api_key: str | None = None
    prefill_chunk: int | None = 256


class ChatTemplate(Protocol):
    """What the chat endpoint needs of a checkpoint's template (``scratchllm.finetune.templates``)."""

    stop_strings: tuple[str, ...]

    def prompt_ids(self, tokenizer: Any, data: Any) -> list[int]: ...

    def stop_ids(self, tokenizer: Any) -> list[int]: ...


def create_app(model: nn.Module, tokenizer: Any, config: ServeConfig | None = None,
               chat_template: ChatTemplate | None = None) -> Starlette:
    """The app serving ``model`` and ``tokenizer``; ``chat_template`` None: a base model, whose chat
    endpoint answers 400. The engine's loop runs while the app does (its lifespan)."""
    service = _Service(model, tokenizer, config or ServeConfig(), chat_template)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        service.batcher.start()
        try:
            yield
        finally:
            service.batcher.stop()

    routes = [
        Route("/", service.endpoint("/", service.page, protected=False), methods=["GET"]),
        Route("/health", service.endpoint("/health", service.health, protected=False), methods=["GET"]),
        Route("/metrics", service.endpoint("/metrics", service.metrics_text), methods=["GET"]),
        Route("/v1/models", service.endpoint("/v1/models", service.models), methods=["GET"]),
        Route("/v1/completions", service.endpoint("/v1/completions", service.completions), methods=["POST"]),
        Route("/v1/chat/completions", service.endpoint("/v1/chat/completions", service.chat), methods=["POST"]),
    ]

    async def http_error(request: Request, exc: Exception) -> Response:  # 404, 405 of the router
        assert isinstance(exc, HTTPException)
        return _error_response(APIError(f"{request.method} {request.url.path}: {exc.detail}", exc.status_code,
                                        code="not_found" if exc.status_code == 404 else None))

    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: http_error})
    app.state.service = service
    return app


def _error_response(err: APIError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


def _sse(data: Any) -> str:
    return f"data: {json.dumps(data, separators=(',', ':'), ensure_ascii=False)}\n\n"


class _Service:
    """The app's state (engine, batcher, tokenizer, limits) and its handlers."""

    def __init__(self, model: nn.Module, tokenizer: Any, config: ServeConfig, template: ChatTemplate | None) -> None:
        if tokenizer is None:
            raise ScratchLLMError("the model has no tokenizer, so prompts cannot be encoded: serve a checkpoint "
                                  "that holds a tokenizer/ folder")
        if getattr(model.config, "head_size", None) is not None:
            raise ScratchLLMError("the model is a classifier (its head scores labels, not next tokens): serve a "
                                  "language model")
        self.config, self.tokenizer, self.template = config, tokenizer, template
        model.eval()  # once: the engine's steps then need not switch modes
        self.engine = Engine(model, max_batch=config.max_batch, max_len=config.max_len,
                             prefill_chunk=config.prefill_chunk)
        self.metrics = Metrics()
        self.batcher = Batcher(self.engine, config.max_queue, self.metrics)
        self.max_prompt = min(config.max_prompt_tokens or self.engine.max_len - 1, self.engine.max_len - 1)
        self.max_tokens = min(config.max_tokens or self.engine.max_len - 1, self.engine.max_len - 1)
        self.vocab_size = model.config.vocab_size
        eot = tokenizer.special_tokens.get(ENDOFTEXT)
        self.stop_ids = [eot] if eot is not None else []
        self.created = int(time.time())

    # -- around every handler ---------------------------------------------------------------

    def endpoint(self, route: str, handler: Callable[[Request], Awaitable[Response]], protected: bool = True
                 ) -> Callable[[Request], Awaitable[Response]]:
        """``handler`` with the API key check, OpenAI error objects for every failure, and counting."""

        async def run(request: Request) -> Response:
            try:
                if protected:
                    self._check_key(request)
                response = await handler(request)
            except APIError as err:
                response = _error_response(err)
            except Exception:  # a bug: logged here, the client gets an error object, not a traceback
                log.exception("%s failed", route)
                response = _error_response(APIError("the server failed on this request; see its log", 500,
                                                    type="server_error"))
            self.metrics.request(route, response.status_code)
            return response

        return run

    def _check_key(self, request: Request) -> None:
        if self.config.api_key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, key = given.partition(" ")
        # compare_digest takes as long for a wrong key as for a right one: the key cannot be guessed by timing
        if not (scheme.lower() == "bearer" and hmac.compare_digest(key.strip().encode(), self.config.api_key.encode())):
            raise APIError("missing or wrong API key: send the header 'Authorization: Bearer KEY' with the server's "
                           "--api-key", 401, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})

    async def _read_json(self, request: Request) -> Any:
        limit = self.config.max_body_bytes
        too_big = APIError(f"the request body is larger than this server's limit of {limit} bytes "
                           "(--max-body-bytes)", 413, code="body_too_large")
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > limit:
            raise too_big
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise too_big
        try:
            return json.loads(body)
        except (ValueError, UnicodeDecodeError) as err:
            raise APIError(f"the request body is not valid JSON: {err}") from None

    # -- the small routes -------------------------------------------------------------------

    async def page(self, request: Request) -> Response:
        return HTMLResponse(importlib.resources.files("scratchllm.serve").joinpath("chat.html").read_text("utf-8"))

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok", "in_flight": self.batcher.in_flight})

    async def metrics_text(self, request: Request) -> Response:
        return PlainTextResponse(self.metrics.render(), media_type="text/plain; version=0.0.4")

    async def models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [self._model_card()]})

    def _model_card(self) -> dict[str, Any]:
        return {"id": self.config.model_name, "object": "model", "created": self.created, "owned_by": "scratchllm",
                "context_length": self.engine.max_len, "chat_template": self.template is not None}

    # -- generation -------------------------------------------------------------------------

    async def completions(self, request: Request) -> Response:
        req = parse_request(await self._read_json(request), chat=False)
        self._check_model(req)
        prompts = [self._encode_prompt(p, i, len(req.prompts)) for i, p in enumerate(req.prompts)]
        return await self._generate(request, req, prompts, chat=False, stop_ids=self.stop_ids, stops=req.stop)

    async def chat(self, request: Request) -> Response:
        req = parse_request(await self._read_json(request), chat=True)
        self._check_model(req)
        if self.template is None:
            raise APIError(f"the model {self.config.model_name!r} has no chat template (a base model, not "
                           "instruction-tuned): use /v1/completions, or serve an instruction-tuned checkpoint",
                           code="no_chat_template")
        try:
            prompt = self.template.prompt_ids(self.tokenizer, req.messages)
        except ScratchLLMError as err:
            raise APIError(str(err), param="messages") from None
        stops = [*req.stop, *(s for s in self.template.stop_strings if s not in req.stop)]
        return await self._generate(request, req, [prompt], chat=True,
                                    stop_ids=self.template.stop_ids(self.tokenizer), stops=stops)

    def _check_model(self, req: GenerationRequest) -> None:
        if req.model is not None and req.model != self.config.model_name:
            raise APIError(f"the model {req.model!r} does not exist; this server serves {self.config.model_name!r}",
                           404, param="model", code="model_not_found")

    def _encode_prompt(self, prompt: str | list[int], i: int, count: int) -> list[int]:
        param = "prompt" if count == 1 else f"prompt[{i}]"
        if isinstance(prompt, str):
            return self.tokenizer.encode_ordinary(prompt)  # special-token strings stay text: no injected control
        bad = [t for t in prompt if not 0 <= t < self.vocab_size]
        if bad:
            raise APIError(f"{param} holds token id {bad[0]}, outside the vocabulary [0, {self.vocab_size})",
                           param=param)
        return list(prompt)

    def _jobs(self, req: GenerationRequest, prompts: list[list[int]], chat: bool, stop_ids: list[int],
              queue: asyncio.Queue) -> list[Job]:
        """One job per (prompt, choice); every limit checked here, before anything is queued."""
        param = "max_completion_tokens" if chat else "max_tokens"
        if req.n > self.config.max_n:
            raise APIError(f"n must be <= {self.config.max_n} on this server (--max-n), got {req.n}", param="n")
        if len(prompts) * req.n > self.batcher.capacity:
            raise APIError(f"{len(prompts)} prompts x n={req.n} sequences exceed what this server holds at once "
                           f"({self.batcher.capacity}: --max-batch + --max-queue)", param="n")
        if req.max_tokens is not None and req.max_tokens > self.max_tokens:
            raise APIError(f"{param} must be <= {self.max_tokens} on this server (--max-tokens), got "
                           f"{req.max_tokens}", param=param)
        jobs = []
        for i, prompt in enumerate(prompts):
            if not prompt:
                raise APIError("the prompt is empty: give at least one character", param="prompt")
            if len(prompt) > self.max_prompt:
                raise APIError(f"the prompt has {len(prompt)} tokens; this server's limit is {self.max_prompt} "
                               "(--max-prompt-tokens)", param="messages" if chat else "prompt",
                               code="context_length_exceeded")
            room = self.engine.max_len - len(prompt)
            default = room if chat else COMPLETIONS_DEFAULT_MAX_TOKENS  # chat: as long as the context lets it
            max_tokens = req.max_tokens or min(self.max_tokens, room, default)
            if max_tokens > room:
                raise APIError(f"this model's maximum context length is {self.engine.max_len} tokens; the prompt has "
                               f"{len(prompt)} and {param} asks for {max_tokens}: lower {param} or shorten the prompt",
                               param=param, code="context_length_exceeded")
            for j in range(req.n):
                index = i * req.n + j
                settings = SamplingSettings(max_tokens, req.temperature, req.top_k, req.top_p,
                                            None if req.seed is None else req.seed + index, stop_ids)
                jobs.append(Job(prompt, settings, queue, index, req.logprobs))
        return jobs

    async def _generate(self, request: Request, req: GenerationRequest, prompts: list[list[int]], chat: bool,
                        stop_ids: list[int], stops: list[str]) -> Response:
        queue: asyncio.Queue = asyncio.Queue()
        jobs = self._jobs(req, prompts, chat, stop_ids, queue)
        try:
            self.batcher.submit(jobs)
        except QueueFull as err:
            raise APIError(f"the server is busy ({err}): retry after a moment", 429, type="rate_limit_error",
                           code="rate_limit_exceeded", headers={"Retry-After": "1"}) from None
        run = _Run(self, jobs, queue, stops)
        usage_prompt = sum(len(p) for p in prompts)
        shape = _Shape(chat, self.config.model_name, self.tokenizer)
        if req.stream:
            return StreamingResponse(self._stream(request, run, shape, req.include_usage, usage_prompt),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        gone = self._watch(request, run)
        try:
            deltas = await self._collect(run)
        finally:
            gone.cancel()
        if run.gone:  # nobody reads the answer
            return Response(status_code=499)
        self.metrics.tokens(usage_prompt, run.completion_tokens)
        return JSONResponse(shape.response(run.outputs, deltas, run.usage(usage_prompt)))

    @staticmethod
    def _watch(request: Request, run: _Run) -> asyncio.Task:
        """Close ``run`` (cancelling its jobs: their slots are free for the next step) the moment its
        client disconnects, whether the handler is waiting for a token or writing one."""

        def closed(task: asyncio.Task) -> None:
            if not task.cancelled():
                task.exception()  # retrieved: a receive that failed means the connection is gone too
                run.close(gone=True)

        task = asyncio.create_task(_disconnected(request))
        task.add_done_callback(closed)
        return task

    async def _collect(self, run: _Run) -> list[list[Delta]]:
        deltas: list[list[Delta]] = [[] for _ in run.outputs]
        try:
            while (item := await run.next()) is not None:
                deltas[item[0]].append(item[1])
        finally:
            run.close()
        return deltas

    async def _stream(self, request: Request, run: _Run, shape: _Shape, include_usage: bool, usage_prompt: int
                      ) -> AsyncIterator[str]:
        """OpenAI's chunks as server-sent events, ending in ``data: [DONE]``; a client that leaves
        closes the run at once (``_watch``), and nothing more is written."""
        usage_field = {"usage": None} if include_usage else {}
        gone = self._watch(request, run)
        try:
            for chunk in shape.opening_chunks(len(run.outputs)):
                yield _sse({**chunk, **usage_field})
            while (item := await run.next()) is not None:
                for chunk in shape.chunks(*item):
                    yield _sse({**chunk, **usage_field})
            if run.gone:
                return
            if include_usage:
                yield _sse({**shape.chunk_head(), "choices": [], "usage": run.usage(usage_prompt)})
            yield "data: [DONE]\n\n"
        except APIError as err:  # a timeout or an engine failure once the stream began: OpenAI's error event
            yield _sse(err.body())
        finally:
            gone.cancel()
            run.close()
            self.metrics.tokens(usage_prompt, run.completion_tokens)


async def _disconnected(request: Request) -> None:
    """Return when the client closes the connection (its body was read: nothing else arrives)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


class _Run:
    """One request in progress: its jobs' tokens turned into per-choice deltas, in arrival order."""

    def __init__(self, service: _Service, jobs: list[Job], queue: asyncio.Queue, stops: list[str]) -> None:
        self.service, self.jobs, self.queue = service, jobs, queue
        self.outputs = [ChoiceOutput(service.tokenizer, stops) for _ in jobs]
        self.start = time.monotonic()
        self.deadline = self.start + service.config.request_timeout
        self.first_token = True
        self.closed = False
        self.gone = False  # closed because the client left

    async def next(self) -> tuple[int, Delta] | None:
        """The next (choice index, delta), or None when every choice finished or the run was closed."""
        while not self.closed and any(o.finish is None for o in self.outputs):
            try:
                index, event = await asyncio.wait_for(self.queue.get(), self.deadline - time.monotonic())
            except TimeoutError:
                timeout = self.service.config.request_timeout
                raise APIError(f"the request took longer than this server's limit of {timeout:g} s "
                               "(--request-timeout)", 504, type="timeout", code="timeout") from None
            if event is None:  # close() woke us
                break
            if isinstance(event, JobFailed):
                raise APIError(event.message, 500, type="server_error")
            if self.first_token:
                self.first_token = False
                self.service.metrics.first_token(time.monotonic() - self.start)
            output = self.outputs[index]
            was_open = output.finish is None
            delta = output.push(event)
            if was_open and delta.finish is not None and not event.finished:  # a stop string: end it now
                self.service.batcher.cancel(self.jobs[index])
            if delta.text or delta.tokens or (was_open and delta.finish):
                return index, delta
        return None

    def close(self, gone: bool = False) -> None:
        """Cancel every job that has not finished (a disconnect, a timeout, an error), and wake ``next``."""
        if self.closed:
            return
        self.closed, self.gone = True, gone
        for job, output in zip(self.jobs, self.outputs, strict=True):
            if output.finish is None:
                self.service.batcher.cancel(job)
        self.queue.put_nowait((-1, None))

    @property
    def completion_tokens(self) -> int:
        return sum(o.n_tokens for o in self.outputs)

    def usage(self, prompt_tokens: int) -> dict[str, int]:
        return {"prompt_tokens": prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": prompt_tokens + self.completion_tokens}


class _Shape:
    """OpenAI's JSON for completions (``text_completion``) or chat (``chat.completion[.chunk]``)."""

    def __init__(self, chat: bool, model: str, tokenizer: Any) -> None:
        self.chat, self.model, self.tokenizer = chat, model, tokenizer
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())

    def chunk_head(self) -> dict[str, Any]:
        kind = "chat.completion.chunk" if self.chat else "text_completion"
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model,
                **({"system_fingerprint": None} if self.chat else {})}

    def opening_chunks(self, n: int) -> list[dict[str, Any]]:
        """Chat streams open each choice with the assistant's role."""
        if not self.chat:
            return []
        return [{**self.chunk_head(), "choices": [{"index": i, "delta": {"role": "assistant", "content": ""},
                                                   "logprobs": None, "finish_reason": None}]} for i in range(n)]

    def chunks(self, index: int, delta: Delta) -> list[dict[str, Any]]:
        """A delta's chunks: its text (and logprobs), then the finish reason in a chunk of its own."""
        out = []
        if delta.text or delta.tokens:
            logprobs = self.logprobs(delta.tokens) if delta.tokens and delta.tokens[0][1].logprob is not None else None
            body = {"delta": {"content": delta.text}} if self.chat else {"text": delta.text}
            out.append({"index": index, **body, "logprobs": logprobs, "finish_reason": None})
        if delta.finish:
            body = {"delta": {}} if self.chat else {"text": ""}
            out.append({"index": index, **body, "logprobs": None, "finish_reason": delta.finish})
        return [{**self.chunk_head(), "choices": [choice]} for choice in out]

    def response(self, outputs: list[ChoiceOutput], deltas: list[list[Delta]], usage: dict[str, int]) -> dict:
        choices = []
        for index, (output, parts) in enumerate(zip(outputs, deltas, strict=True)):
            tokens = [t for d in parts for t in d.tokens]
            logprobs = self.logprobs(tokens) if tokens and tokens[0][1].logprob is not None else None
            body = {"message": {"role": "assistant", "content": output.text}} if self.chat else {"text": output.text}
            choices.append({"index": index, **body, "logprobs": logprobs, "finish_reason": output.finish})
        kind = "chat.completion" if self.chat else "text_completion"
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model, "choices": choices,
                "usage": usage}

    # -- log-probabilities ------------------------------------------------------------------

    def _token(self, token: int) -> tuple[str, list[int]]:
        data = self.tokenizer.decode_bytes([token])
        return data.decode("utf-8", errors="replace"), list(data)

    def logprobs(self, tokens: list[tuple[int, TokenEvent]]) -> dict[str, Any]:
        """Chat: ``{"content": [{token, logprob, bytes, top_logprobs}]}``; completions: the legacy
        ``{tokens, token_logprobs, top_logprobs, text_offset}``."""
        if self.chat:
            content = []
            for _, t in tokens:
                text, data = self._token(t.token)
                top = [dict(zip(("token", "bytes"), self._token(i), strict=True), logprob=lp) for i, lp in t.top or []]
                content.append({"token": text, "logprob": t.logprob, "bytes": data, "top_logprobs": top})
            return {"content": content, "refusal": None}
        return {
            "tokens": [self._token(t.token)[0] for _, t in tokens],
            "token_logprobs": [t.logprob for _, t in tokens],
            "top_logprobs": [{self._token(i)[0]: lp for i, lp in t.top} if t.top else None for _, t in tokens],
            "text_offset": [start for start, _ in tokens],
        }
