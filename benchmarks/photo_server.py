"""A loopback HTTP/1.1 server of an export's photos, as a bucket would serve them, with faults on demand.

It answers ``GET /photos/{photo_id}/{size}.{extension}`` from a folder in the export's layout
(``{photo_id}/{size}.{extension}``), keeps connections alive, and for chosen photos answers their first
requests with a fault: ``404``, ``403``, ``503`` (with ``Retry-After: 1``), ``429`` (with ``Retry-After: 0``),
``cut`` (a body shorter than its ``Content-Length``), ``slow`` (an answer after ``slow_seconds``), ``html`` (an
HTML page with status 200), ``reset`` (the connection reset, no answer), ``trickle`` (a 1,000-byte body sent a
byte every 20 ms: each read is quick, the whole takes 20 s), ``huge`` (a 10 MB body of zeros). Every request
is logged with what it got. The fetch tests and ``benchmarks/fetch.py`` (which runs it in another process: ``python -m
benchmarks.photo_server FOLDER``) use it.
"""

from __future__ import annotations

import argparse
import collections
import http.server
import re
import socket
import struct
import sys
import threading
import time
from pathlib import Path

_PATH = re.compile(r"^/photos/(\d+)/([a-z]+)\.([A-Za-z0-9]+)$")
_HTML = b"<!DOCTYPE html><html><body><h1>Service temporarily unavailable</h1></body></html>"


class PhotoServer:
    """The server, run in a thread of this process.

    Args:
        root: Folder of the photos (``{photo_id}/{size}.{extension}``).
        faults: Per photo id, the faults its successive requests get (then the photo itself).
        delay: Seconds every answer waits (a slow link, for the kill tests).
        slow_seconds: How long a ``slow`` fault waits before answering.
        preload: Read every photo into memory first (the benchmark: no disk read per request).
    """

    def __init__(
        self,
        root: str | Path,
        *,
        faults: dict[int, list[str]] | None = None,
        delay: float = 0.0,
        slow_seconds: float = 2.0,
        preload: bool = False,
    ) -> None:
        self.root = Path(root)
        self.faults = {int(k): list(v) for k, v in (faults or {}).items()}
        self.delay, self.slow_seconds = delay, slow_seconds
        self.log: list[tuple[int, str]] = []
        self.times: list[float] = []  # time.monotonic() of each request in the log
        self.connections = 0
        self.lock = threading.Lock()
        self.memory: dict[str, bytes] = {}
        if preload:
            for path in self.root.glob("*/*.*"):
                self.memory[f"{path.parent.name}/{path.name}"] = path.read_bytes()
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler(), bind_and_activate=False)
        self.httpd.daemon_threads = True
        self.httpd.request_queue_size = 256  # many workers connect at once: no SYN dropped from a full backlog
        self.httpd.server_bind()
        self.httpd.server_activate()
        self.thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The URL template of the photos (for ``--photo-url``)."""
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/photos/{{photo_id}}/{{size}}.{{extension}}"

    def start(self) -> PhotoServer:
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> PhotoServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def counts(self) -> collections.Counter:
        """How many requests got each answer."""
        with self.lock:
            return collections.Counter(answer for _, answer in self.log)

    def requested(self) -> collections.Counter:
        """How many requests each photo id got."""
        with self.lock:
            return collections.Counter(photo_id for photo_id, _ in self.log)

    def _next_fault(self, photo_id: int) -> str | None:
        with self.lock:
            queue = self.faults.get(photo_id)
            return queue.pop(0) if queue else None

    def _record(self, photo_id: int, answer: str) -> None:
        with self.lock:
            self.log.append((photo_id, answer))
            self.times.append(time.monotonic())

    def _body(self, key: str) -> bytes | None:
        if key in self.memory:
            return self.memory[key]
        path = self.root / key
        return path.read_bytes() if path.is_file() else None

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive: every answer carries its Content-Length
            # Headers and body go out in two writes: without TCP_NODELAY the body waits for the client's
            # delayed ACK (40 ms a request on Linux), which a real bucket's server does not make anyone wait.
            disable_nagle_algorithm = True

            def setup(self) -> None:
                super().setup()
                with server.lock:
                    server.connections += 1

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
                pass

            def do_GET(self) -> None:  # noqa: N802 - the base class's name
                match = _PATH.match(self.path)
                if not match:
                    self._send(400, b"bad path", "text/plain")
                    return
                photo_id = int(match[1])
                if server.delay:
                    time.sleep(server.delay)
                fault = server._next_fault(photo_id)
                server._record(photo_id, fault or "photo")
                if fault is not None:
                    self._fault(fault)
                    return
                body = server._body(f"{match[1]}/{match[2]}.{match[3]}")
                if body is None:
                    server.log[-1] = (photo_id, "missing")
                    self._send(404, b"NoSuchKey", "application/xml")
                else:
                    self._send(200, body, "image/jpeg")

            def _fault(self, fault: str) -> None:
                if fault in ("404", "403"):
                    self._send(int(fault), b"<Error><Code>AccessDenied</Code></Error>", "application/xml")
                elif fault == "503":
                    self._send(503, b"SlowDown", "text/plain", {"Retry-After": "1"})
                elif fault == "429":
                    self._send(429, b"Too Many Requests", "text/plain", {"Retry-After": "0"})
                elif fault == "html":
                    self._send(200, _HTML, "text/html; charset=utf-8")
                elif fault == "slow":
                    time.sleep(server.slow_seconds)
                    self._send(200, b"late", "image/jpeg")
                elif fault == "cut":
                    self.send_response(200)
                    self.send_header("Content-Type", "image/jpeg")
                    self.send_header("Content-Length", "5000")
                    self.end_headers()
                    self.wfile.write(b"\xff\xd8\xff\xe0" + b"\0" * 100)
                    self.close_connection = True
                elif fault in ("trickle", "huge"):
                    self._endless(fault)
                elif fault == "reset":
                    # SO_LINGER 0: closing sends a reset, not an orderly end.
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.connection.close()
                    self.close_connection = True
                else:
                    raise ValueError(f"unknown fault {fault!r}")

            def _endless(self, fault: str) -> None:
                """A body that takes too long (``trickle``) or is too long (``huge``), until the client leaves."""
                piece, count, gap = (b"\0", 1000, 0.02) if fault == "trickle" else (b"\0" * 65536, 160, 0.0)
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", str(len(piece) * count))
                self.end_headers()
                self.close_connection = True
                try:
                    for _ in range(count):
                        self.wfile.write(piece)
                        self.wfile.flush()
                        time.sleep(gap)
                except OSError:  # the client gave up, as it should
                    pass

            def _send(self, status: int, body: bytes, content_type: str, headers: dict | None = None) -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", content_type)
                    self.send_header("Content-Length", str(len(body)))
                    for key, value in (headers or {}).items():
                        self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:  # the client gave up (a read timeout): nothing to answer
                    self.close_connection = True

        return Handler


def main() -> None:
    """Serve a folder's photos from memory until killed; print the URL template on the first line."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("root", help="folder of {photo_id}/{size}.{extension}")
    args = parser.parse_args()
    server = PhotoServer(args.root, preload=True)
    sys.stdout.write(server.url + "\n")
    sys.stdout.flush()
    server.httpd.serve_forever()


if __name__ == "__main__":
    main()
