"""Continuous batching: one background thread steps the engine for every request at once.

HTTP handlers run on the server's event loop; the ``Engine`` is not thread-safe and a step takes
milliseconds to seconds, so it lives in one thread of its own. A handler ``submit``s its jobs (one
per choice) and reads their tokens from an ``asyncio.Queue``; the thread takes new jobs and
cancellations between steps, so a request that arrives while others decode joins at the next step,
one decode step serves every running sequence, and a finished or cancelled one leaves at once::

    handler ──submit(jobs)──► inbox ──► thread: engine.add / engine.cancel, engine.step()
    handler ◄──(index, TokenEvent)── job.queue ◄── call_soon_threadsafe, one event per token

At most ``max_batch + max_queue`` sequences are in flight (running or waiting for a slot); past
that ``submit`` raises ``QueueFull`` and the server answers 429.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from scratchllm.inference import Engine, SamplingSettings
from scratchllm.serve.metrics import Metrics

log = logging.getLogger("scratchllm.serve")


class TokenEvent(NamedTuple):
    """One new token of one job, with its log-probability and the ``top`` (id, log-probability)
    alternatives when the job asked for them (raw model distribution, before temperature)."""

    token: int
    finished: str | None  # None, "stop" (a stop id) or "length"
    logprob: float | None = None
    top: list[tuple[int, float]] | None = None


class JobFailed(NamedTuple):
    """Put on a job's queue instead of a token when the engine failed; ``message`` says why."""

    message: str


@dataclass(eq=False)
class Job:
    """One sequence to generate: a choice of a request. ``logprobs``: None (none), else how many
    alternatives (0-20) each token comes with. Events go to ``queue`` as (index, event)."""

    prompt: list[int]
    settings: SamplingSettings
    queue: asyncio.Queue
    index: int = 0
    logprobs: int | None = None
    sid: int | None = None  # the engine's id, once the thread added it
    done: bool = False  # finished, cancelled or failed (only the thread writes it)
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.get_running_loop)


class QueueFull(Exception):
    """More sequences than the batch and the queue hold."""


class Batcher:
    """The engine's one loop; see the module docstring. ``start`` and ``stop`` it with the server."""

    def __init__(self, engine: Engine, max_queue: int, metrics: Metrics | None = None) -> None:
        self.engine = engine
        self.capacity = engine.max_batch + max_queue
        self.metrics = metrics or Metrics()
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._jobs: dict[int, Job] = {}  # engine sid -> job (thread only)
        self._lock = threading.Lock()
        self._in_flight = 0
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    # -- the handlers' side (event loop) --------------------------------------------------

    def submit(self, jobs: list[Job]) -> None:
        """Queue all of a request's jobs, or none (``QueueFull``)."""
        with self._lock:
            if self._in_flight + len(jobs) > self.capacity:
                raise QueueFull(f"{self._in_flight} sequences in flight, the limit is {self.capacity}")
            self._in_flight += len(jobs)
        for job in jobs:
            self._inbox.put(("add", job))

    def cancel(self, job: Job) -> None:
        """Stop a job and free its slot before the next step (a no-op for one that ended)."""
        self._inbox.put(("cancel", job))

    @property
    def in_flight(self) -> int:
        return self._in_flight

    # -- the thread -------------------------------------------------------------------------

    def start(self) -> None:
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="scratchllm-batcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._inbox.put(("wake", None))
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._take_commands(block=not self.engine.active)
            if not self.engine.active:
                continue
            try:
                events = self.engine.step()
            except Exception as err:  # a bug must not stop the server: fail the jobs in the batch, go on
                log.exception("engine step failed")
                for job in list(self._jobs.values()):
                    self._end(job, cancel=True, event=JobFailed(f"the engine failed: {type(err).__name__}"))
                continue
            logits = self.engine.last_logits
            for row, event in enumerate(events):
                job = self._jobs[event.sid]
                lp, top = None, None
                if job.logprobs is not None:
                    logprobs = torch.log_softmax(logits[row].float(), dim=-1)  # (vocab,)
                    lp = float(logprobs[event.token])
                    if job.logprobs:
                        values, ids = torch.topk(logprobs, job.logprobs)
                        top = list(zip(ids.tolist(), values.tolist(), strict=True))
                self._send(job, TokenEvent(event.token, event.finished, lp, top))
                if event.finished:
                    self._end(job, cancel=False)
            self.metrics.step(len(events), len(self.engine.active) - len(self.engine.running))

    def _take_commands(self, block: bool) -> None:
        """Apply the adds and cancels that arrived; wait for one when the engine is idle."""
        try:
            command = self._inbox.get(timeout=0.5) if block else self._inbox.get_nowait()
        except queue.Empty:
            return
        while True:
            kind, job = command
            if kind == "add":
                try:
                    job.sid = self.engine.add(job.prompt, job.settings)
                    self._jobs[job.sid] = job
                except Exception as err:  # the handler checked the request; this is a last guard
                    self._end(job, cancel=False, event=JobFailed(str(err)))
            elif kind == "cancel" and not job.done and job.sid is not None:
                self._end(job, cancel=True)
            try:
                command = self._inbox.get_nowait()
            except queue.Empty:
                break
        self.metrics.set_queue(len(self.engine.active) - len(self.engine.running))

    def _end(self, job: Job, cancel: bool, event: JobFailed | None = None) -> None:
        if job.done:
            return
        job.done = True
        if job.sid is not None:
            self._jobs.pop(job.sid, None)
            if cancel:
                self.engine.cancel(job.sid)
        with self._lock:
            self._in_flight -= 1
        if event is not None:
            self._send(job, event)

    @staticmethod
    def _send(job: Job, event: TokenEvent | JobFailed) -> None:
        try:
            job.loop.call_soon_threadsafe(job.queue.put_nowait, (job.index, event))
        except RuntimeError:  # the event loop closed (server shutting down)
            pass
