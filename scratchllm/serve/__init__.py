"""The serving stage: an OpenAI-compatible HTTP server with continuous batching, and a chat page.

- ``protocol.py``: request bodies checked field by field; OpenAI's error objects (``APIError``)
- ``output.py``: one choice's text as it streams (UTF-8, stop strings across tokens, logprobs)
- ``batcher.py``: ``Batcher``, the one background loop that steps the ``Engine`` for every request
- ``metrics.py``: counters and a histogram in Prometheus' text format
- ``app.py``: ``create_app`` (Starlette): routes, API key, limits, streaming; ``ServeConfig``
- ``server.py``: ``serve`` (uvicorn, foreground) and ``ServerThread`` (background, a free port)
- ``chat.html``: the chat page at ``GET /`` (plain HTML and JavaScript)

``scratchllm serve --checkpoint C`` is the command; docs/serving.md the guide.
"""

from scratchllm.serve.app import ServeConfig, create_app
from scratchllm.serve.server import ServerThread, serve

__all__ = ["ServeConfig", "ServerThread", "create_app", "serve"]
