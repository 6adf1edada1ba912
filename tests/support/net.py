"""A local HTTP receiver for testing senders against the real wire.

:class:`Receiver` is a threaded ``http.server`` on 127.0.0.1 that records every
request (method, path, headers, body) and answers with a status you choose: a
fixed default, a queue of one-off answers, or a function of the request.  It
can go :meth:`~Receiver.down` (the port refuses connections) and come back
:meth:`~Receiver.up` on the same port.  Given an SSL context (see
:mod:`tests.support.tls`) it serves HTTPS.

>>> import httpx
>>> with Receiver() as receiver:
...     receiver.respond_once(503, headers={"Retry-After": "7"})
...     first = httpx.post(receiver.url + "/hook", json={"a": 1})
...     second = httpx.post(receiver.url + "/hook", json={"a": 2})
>>> first.status_code, first.headers["Retry-After"], second.status_code
(503, '7', 200)
>>> [(r.path, r.json(), r.status) for r in receiver.requests]
[('/hook', {'a': 1}, 503), ('/hook', {'a': 2}, 200)]
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the OS picks it).

    >>> 1024 <= free_port() <= 65535
    True
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


@dataclass(frozen=True)
class Reply:
    """What the receiver answers: status, headers and body."""

    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""


@dataclass(frozen=True)
class RecordedRequest:
    """One request as it arrived, with the status it was answered with."""

    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes
    status: int
    received_at: float

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)

    def header(self, name: str) -> str | None:
        """A header by case-insensitive name."""
        wanted = name.lower()
        return next((value for key, value in self.headers.items() if key.lower() == wanted), None)


class Receiver:
    """A threaded HTTP server on 127.0.0.1 that records requests and answers as told.

    Parameters
    ----------
    port
        Port to listen on; a free one by default.
    host
        Address to bind.
    tls
        A server-side SSL context: serve HTTPS with it.
    """

    def __init__(
        self, port: int | None = None, host: str = "127.0.0.1", tls: ssl.SSLContext | None = None
    ) -> None:
        self.host = host
        self.tls = tls
        self.port = port if port is not None else free_port(host)
        self._lock = threading.Lock()
        self._condition = threading.Condition(self._lock)
        self._requests: list[RecordedRequest] = []
        self._default = Reply()
        self._once: deque[Reply] = deque()
        self._handler: Callable[[RecordedRequest], Reply | None] | None = None
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:40123`` (``https`` with TLS)."""
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    # --- lifetime ----------------------------------------------------------------------------------

    def start(self) -> Receiver:
        """Listen (again) on the port; idempotent."""
        if self._server is None:
            self._server = ThreadingHTTPServer((self.host, self.port), self._handler_class())
            self._server.daemon_threads = True
            if self.tls is not None:
                # A failed handshake raises from accept(); the server drops that connection and goes on.
                self._server.socket = self.tls.wrap_socket(self._server.socket, server_side=True)
            self._thread = threading.Thread(
                target=self._server.serve_forever, args=(0.05,), daemon=True, name="receiver"
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening: connections to the port are refused until :meth:`start`."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            if self._thread is not None:
                self._thread.join(timeout=5)
            self._server = None
            self._thread = None

    down = stop
    up = start

    @property
    def running(self) -> bool:
        """Whether the port accepts connections."""
        return self._server is not None

    def __enter__(self) -> Receiver:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()

    # --- answers -----------------------------------------------------------------------------------

    def respond_with(
        self, status: int, *, headers: Mapping[str, str] | None = None, body: bytes = b""
    ) -> None:
        """Answer every following request with this (after any one-off answers)."""
        with self._lock:
            self._default = Reply(status, dict(headers or {}), body)

    def respond_once(
        self, *statuses: int, headers: Mapping[str, str] | None = None, body: bytes = b""
    ) -> None:
        """Answer the next requests, one each, with these statuses, then go back to the default."""
        with self._lock:
            self._once.extend(Reply(status, dict(headers or {}), body) for status in statuses)

    def respond_by(self, handler: Callable[[RecordedRequest], Reply | None] | None) -> None:
        """Decide each answer with ``handler(request)``; ``None`` from it means the usual answer."""
        with self._lock:
            self._handler = handler

    def _reply(self, request: RecordedRequest) -> Reply:
        with self._lock:
            handler = self._handler
            if self._once:
                return self._once.popleft()
            default = self._default
        if handler is not None:
            chosen = handler(request)
            if chosen is not None:
                return chosen
        return default

    # --- what arrived ------------------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request so far, in arrival order (a copy)."""
        with self._lock:
            return list(self._requests)

    def clear(self) -> None:
        """Forget the requests recorded so far."""
        with self._lock:
            self._requests.clear()

    def wait_for(
        self, predicate: Callable[[list[RecordedRequest]], bool], timeout: float = 20.0
    ) -> list[RecordedRequest]:
        """Block until ``predicate(requests)`` holds; raise ``TimeoutError`` after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._condition:
            while not predicate(list(self._requests)):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"receiver {self.url}: condition not met within {timeout}s; "
                        f"got {len(self._requests)} requests: {[r.path for r in self._requests]}"
                    )
                self._condition.wait(remaining)
            return list(self._requests)

    def _record(self, request: RecordedRequest) -> None:
        with self._condition:
            self._requests.append(request)
            self._condition.notify_all()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = dict(self.headers.items())
                arrived = RecordedRequest(self.command, self.path, headers, body, 0, time.time())
                reply = receiver._reply(arrived)
                receiver._record(
                    RecordedRequest(self.command, self.path, headers, body, reply.status, arrived.received_at)
                )
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(reply.body)))
                # One request per connection: after stop() nothing can still be served
                # on a kept-alive connection, so "down" really refuses every request.
                self.send_header("Connection", "close")
                self.close_connection = True
                self.end_headers()
                self.wfile.write(reply.body)

            do_GET = do_POST = do_PUT = do_DELETE = _serve

            def log_message(self, format: str, *args: Any) -> None:
                pass  # Tests read requests, not access logs.

        return Handler
