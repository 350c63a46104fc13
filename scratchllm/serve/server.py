"""Running the app with uvicorn: in the foreground (``scratchllm serve``), or in a background thread
on a free port of 127.0.0.1 (tests, benchmarks, a notebook).

>>> with ServerThread(app) as server:                     # doctest: +SKIP
...     openai.OpenAI(base_url=server.url + "/v1", api_key="none").completions.create(...)
"""

from __future__ import annotations

import socket
import threading
import time
from types import TracebackType

import uvicorn
from starlette.applications import Starlette

from scratchllm.errors import ScratchLLMError


def serve(app: Starlette, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    """Serve ``app`` until Ctrl-C; the socket is bound first so that a busy port is one line."""
    sock = bind(host, port)
    uvicorn.Server(uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=5)).run(sockets=[sock])


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (0: a free port), or one line saying why not."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise ScratchLLMError(f"cannot listen on {host}:{port}: {err.strerror}; choose another --port (or --host)"
                              ) from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


class ServerThread:
    """``app`` served by uvicorn in a daemon thread while the ``with`` block runs; ``url`` is its
    address (``http://127.0.0.1:PORT``, a free port by default)."""

    def __init__(self, app: Starlette, host: str = "127.0.0.1", port: int = 0) -> None:
        self.app, self.host, self.port = app, host, port
        self.url = ""

    def __enter__(self) -> ServerThread:
        sock = bind(self.host, self.port)
        self.port = sock.getsockname()[1]
        self.url = f"http://{self.host}:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning", timeout_graceful_shutdown=2))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start; see its log above")
            time.sleep(0.01)
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
                 ) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
