"""The server's counters, in Prometheus' text exposition format (``GET /metrics``).

>>> m = Metrics()
>>> m.request("/v1/completions", 200); m.step(batch=3, waiting=1); m.first_token(0.2)
>>> text = m.render()
>>> 'scratchllm_requests_total{route="/v1/completions",status="200"} 1' in text
True
>>> "scratchllm_batch_size 3" in text, 'scratchllm_time_to_first_token_seconds_bucket{le="0.25"} 1' in text
(True, True)
"""

from __future__ import annotations

import threading
from collections import Counter

# Time to first token, seconds: from a fast CPU prefill to a request that waited in the queue.
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)


class Metrics:
    """Counters and gauges written by the handlers and the batcher thread (hence the lock)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: Counter[tuple[str, int]] = Counter()
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.steps = 0
        self.stepped_sequences = 0  # summed over steps: / steps = the mean batch size
        self.batch_size = 0
        self.waiting = 0
        self.ttft_counts = [0] * len(TTFT_BUCKETS)
        self.ttft_sum = 0.0
        self.ttft_count = 0

    def request(self, route: str, status: int) -> None:
        with self._lock:
            self.requests[route, status] += 1

    def tokens(self, prompt: int, completion: int) -> None:
        with self._lock:
            self.prompt_tokens += prompt
            self.completion_tokens += completion

    def step(self, batch: int, waiting: int) -> None:
        with self._lock:
            self.steps += 1
            self.stepped_sequences += batch
            self.batch_size, self.waiting = batch, waiting

    def set_queue(self, waiting: int) -> None:
        with self._lock:
            self.waiting = waiting

    def first_token(self, seconds: float) -> None:
        with self._lock:
            for i, le in enumerate(TTFT_BUCKETS):
                self.ttft_counts[i] += seconds <= le
            self.ttft_sum += seconds
            self.ttft_count += 1

    def render(self) -> str:
        with self._lock:
            lines = [
                "# HELP scratchllm_requests_total HTTP requests answered, by route and status.",
                "# TYPE scratchllm_requests_total counter",
            ]
            lines += [f'scratchllm_requests_total{{route="{route}",status="{status}"}} {n}'
                      for (route, status), n in sorted(self.requests.items())]
            for name, kind, about, value in [
                ("prompt_tokens_total", "counter", "Prompt tokens of the requests served.", self.prompt_tokens),
                ("completion_tokens_total", "counter", "Tokens generated.", self.completion_tokens),
                ("decode_steps_total", "counter", "Batched decode steps of the engine.", self.steps),
                ("stepped_sequences_total", "counter", "Sequences summed over decode steps (/ steps = mean batch).",
                 self.stepped_sequences),
                ("batch_size", "gauge", "Sequences in the last decode step.", self.batch_size),
                ("queue_length", "gauge", "Sequences waiting for a slot.", self.waiting),
            ]:
                lines += [f"# HELP scratchllm_{name} {about}", f"# TYPE scratchllm_{name} {kind}",
                          f"scratchllm_{name} {value}"]
            name = "scratchllm_time_to_first_token_seconds"
            lines += [f"# HELP {name} Time from a request's arrival to its first token.", f"# TYPE {name} histogram"]
            lines += [f'{name}_bucket{{le="{le}"}} {n}' for le, n in zip(TTFT_BUCKETS, self.ttft_counts, strict=True)]
            lines += [f'{name}_bucket{{le="+Inf"}} {self.ttft_count}', f"{name}_sum {self.ttft_sum}",
                      f"{name}_count {self.ttft_count}"]
        return "\n".join(lines) + "\n"
