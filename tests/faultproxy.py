"""An HTTP proxy on loopback in front of moto_server that injects S3 faults for a share of requests.

Modes: ``ok``; ``faults`` (503 SlowDown, 500 InternalError or a dropped connection, ``rate`` of requests);
``slowdown`` (503 SlowDown only); ``stall`` (``rate`` of responses held for ``stall_seconds``); ``down`` (every
connection dropped). ``only`` limits the faults to requests whose path contains it (``partNumber=``: UploadPart).
Every UploadPart is counted while it is in flight (``peak_parts``); with ``gather_parts`` N, each waits until N have
arrived (at most ``gather_seconds``), so parts sent in parallel are seen in flight together, whatever the timing.
With ``aws_checksums``, multipart uploads are held to AWS's checksum rules, which moto does not enforce: a part with a
checksum other than the one its upload was created with is refused, and so is a completion that leaves out a part's
checksum.
"""

from __future__ import annotations

import http.client
import random
import re
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
CHECKSUM_HEADER = "x-amz-checksum-"


def part_checksum(headers: dict) -> str | None:
    """The checksum algorithm a request's body carries (a header, or an aws-chunked trailer), lower case."""
    names = [name for name in headers if name.startswith(CHECKSUM_HEADER) and name != CHECKSUM_HEADER + "algorithm"]
    names += [name.strip() for name in headers.get("x-amz-trailer", "").split(",") if name.strip()]
    return names[0][len(CHECKSUM_HEADER):] if names else None


class FaultProxy:
    def __init__(self, upstream: str, mode: str = "ok", rate: float = 0.0, seed: int = 0, stall_seconds: float = 2.0,
                 only: str = "", gather_parts: int = 0, gather_seconds: float = 5.0, aws_checksums: bool = False):
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
        self.aws_checksums = aws_checksums
        self.created_with: dict[str, str | None] = {}  # upload id: the checksum algorithm it was created with
        self.refused: list[str] = []  # what aws_checksums refused
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
                refusal = proxy.checksum_refusal(self.command, self.path, self.headers, body)
                if refusal:
                    proxy.refused.append(refusal)
                    self._error(400, f"<Code>InvalidRequest</Code><Message>{refusal}</Message>".encode())
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
                    self._error(int(fault), SLOWDOWN if fault == "503" else INTERNAL)
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
                created = re.search(rb"<UploadId>([^<]+)</UploadId>", data)
                if self.command == "POST" and self.path.endswith("?uploads") and created:
                    proxy.created_with[created.group(1).decode()] = self.headers.get("x-amz-checksum-algorithm")
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            def _error(self, status: int, payload: bytes):
                if not payload.startswith(b"<?xml"):
                    payload = b'<?xml version="1.0" encoding="UTF-8"?><Error>' + payload + b"</Error>"
                self.send_response(status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

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

    def checksum_refusal(self, method: str, path: str, headers, body: bytes) -> str | None:
        """AWS's refusal of a multipart request whose checksums do not match its upload's, or None."""
        upload = re.search(r"uploadId=([^&]+)", path)
        if not self.aws_checksums or upload is None or upload.group(1) not in self.created_with:
            return None
        created = (self.created_with[upload.group(1)] or "").lower() or None
        if method == "PUT" and "partNumber=" in path:
            sent = part_checksum({name.lower(): value for name, value in headers.items()})
            if sent and sent != created:
                return (f"Checksum Type mismatch occurred, expected checksum Type: {created or 'null'}, "
                        f"actual checksum Type: {sent}")
        if method == "POST" and created:
            for number, part in enumerate(re.findall(rb"<Part>(.*?)</Part>", body, re.S), start=1):
                if f"<Checksum{created.upper()}>".encode() not in part:
                    return (f"The upload was created using a {created} checksum. The complete request must include "
                            f"the checksum for each part. It was missing for part {number} in the request.")
        return None

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
