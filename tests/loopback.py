"""A threaded HTTP server on 127.0.0.1, on a free port, for tests of what the product downloads."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class LoopbackServer:
    """Serve ``handler`` from a daemon thread at ``self.url`` (``http://127.0.0.1:PORT`` + ``path``);
    ``close`` it after."""

    def __init__(self, handler: type[BaseHTTPRequestHandler], path: str = ""):
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
