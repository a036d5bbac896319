"""An HTTP proxy on loopback in front of moto_server that injects S3 faults for a share of requests.

Modes: ``ok``; ``faults`` (503 SlowDown, 500 InternalError or a dropped connection, ``rate`` of requests);
``slowdown`` (503 SlowDown only); ``stall`` (``rate`` of responses held for ``stall_seconds``); ``down`` (every
connection dropped). ``only`` limits the faults to requests whose path contains it (``partNumber=``: UploadPart).
Every UploadPart is counted while it is in flight (``peak_parts``); with ``gather_parts`` N, each waits until N have
arrived (at most ``gather_seconds``), so parts sent in parallel are seen in flight together, whatever the timing.
"""

from __future__ import annotations

import http.client
import random
import socket
import threading
import time
from collections import Counter
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator
from urllib.parse import urlparse

SLOWDOWN = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
            b"<Message>Please reduce your request rate.</Message></Error>")
INTERNAL = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>InternalError</Code>'
            b"<Message>We encountered an internal error. Please try again.</Message></Error>")


class FaultProxy:
    def __init__(self, upstream: str, mode: str = "ok", rate: float = 0.0, seed: int = 0, stall_seconds: float = 2.0,
                 only: str = "", gather_parts: int = 0, gather_seconds: float = 5.0):
        self.upstream = urlparse(upstream)
        self.mode = mode
        self.rate = rate
        self.only = only
        self.gather_parts = gather_parts
        self.gather_seconds = gather_seconds
        self.parts_arrived = self.parts_in_flight = self.peak_parts = 0
        self.parts_changed = threading.Condition()
        self.stall_seconds = stall_seconds
        self.random = random.Random(seed)
        self.lock = threading.Lock()
        self.injected: Counter = Counter()
        self.requests = 0
        self.seen: list[tuple[str, str, dict]] = []  # (method, path, headers) of every request, as sent on the wire
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _cut_short(self, body: bytes) -> bool:
                """The client went away before its body was sent (killed mid-part): S3 would never store it."""
                return "Content-Length" in self.headers and len(body) < int(self.headers["Content-Length"])

            def _handle(self):
                with proxy.lock:
                    proxy.seen.append((self.command, self.path, {k.lower(): v for k, v in self.headers.items()}))
                body = self._body()
                if self._cut_short(body):
                    self.close_connection = True
                    return
                if "partNumber=" in self.path and self.command == "PUT":
                    with proxy.part_in_flight():
                        self._answer(body, proxy.pick(self.path))
                else:
                    self._answer(body, proxy.pick(self.path))

            def _answer(self, body: bytes, fault: str):
                if fault == "drop":
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                if fault in ("503", "500"):
                    payload = SLOWDOWN if fault == "503" else INTERNAL
                    self.send_response(int(fault))
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                if fault == "stall":
                    time.sleep(proxy.stall_seconds)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("transfer-encoding", "connection")}
                headers["Content-Length"] = str(len(body))
                upstream = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=120)
                try:
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    response = upstream.getresponse()
                    data = response.read()
                finally:
                    upstream.close()
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @contextmanager
    def part_in_flight(self) -> Iterator[None]:
        with self.parts_changed:
            self.parts_arrived += 1
            self.parts_in_flight += 1
            self.peak_parts = max(self.peak_parts, self.parts_in_flight)
            self.parts_changed.notify_all()
            self.parts_changed.wait_for(lambda: self.parts_arrived >= self.gather_parts, self.gather_seconds)
        try:
            yield
        finally:
            with self.parts_changed:
                self.parts_in_flight -= 1

    def pick(self, path: str) -> str:
        with self.lock:
            self.requests += 1
            if self.mode == "down":
                fault = "drop"
            elif self.only not in path:
                return "none"
            elif self.mode in ("faults", "slowdown", "stall") and self.random.random() < self.rate:
                fault = {"faults": self.random.choice(["503", "500", "drop"]), "slowdown": "503"}.get(self.mode, "stall")
            else:
                return "none"
            self.injected[fault] += 1
            return fault

    def start(self) -> FaultProxy:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
