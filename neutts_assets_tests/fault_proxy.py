"""A fault-injecting HTTP reverse proxy on loopback, between the pipeline and the S3 server or the
GCS emulator.

Each request gets, by a seeded RNG, one of:
    error_5xx   500 or 502 in the server's error format. For a write (PUT/POST/DELETE) it is sent,
                half the time, AFTER the request went upstream: the write happened, the client saw
                an error (error_5xx_after_forward).
    throttle    S3: 503 with a SlowDown XML body. GCS: 429 rateLimitExceeded or 503 JSON.
    reset       forwarded; then the headers and half the body are sent and the connection is
                reset (RST). A response with no body is cut inside its headers (reset_in_headers).
    delay       forwarded; the response waits `delay_s`, past the client's read timeout.
    (nothing)   forwarded unchanged.
Each fault hits `rate` of the requests at random, and a fault about to fall below `floor` of the
requests so far is injected first, so from the tenth request on each stays at or above `floor`. `fail_forever`
(a predicate on method and path) answers matching requests with `permanent_status` every time.
The proxy counts requests and each fault in `counts`.
"""

from __future__ import annotations

import http.client
import json
import random
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Optional
from urllib.parse import urlsplit

FAULTS = ("error_5xx", "throttle", "reset", "delay")
WRITES = ("PUT", "POST", "DELETE", "PATCH")
# Hop-by-hop headers, and the framing the proxy redoes itself (it forwards whole bodies).
_DROP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "expect",
    "content-length",
}


class FaultProxy:
    def __init__(
        self,
        upstream: str,
        flavor: str,
        rate: float = 0.1,
        floor: float = 0.1,
        delay_s: float = 2.0,
        seed: Optional[int] = None,
        faults: tuple[str, ...] = FAULTS,
    ):
        assert flavor in ("s3", "gcs") and set(faults) <= set(FAULTS)
        self.faults = faults  # the kinds injected
        target = urlsplit(upstream)
        self.upstream = (target.hostname, target.port)
        self.flavor, self.rate, self.floor, self.delay_s = flavor, rate, floor, delay_s
        self.seed = seed if seed is not None else random.SystemRandom().randrange(2**32)
        self.rng = random.Random(self.seed)
        self.enabled = False  # faults off until a test turns them on
        self.fail_forever: Optional[Callable[[str, str], bool]] = None
        self.permanent_status = 503
        self.counts: Counter = Counter()
        self.log: list[tuple[str, str, str]] = []  # (method, path, fault or "")
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.proxy = self
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name=f"fault-proxy-{flavor}", daemon=True)
        print(
            f"fault proxy {flavor}: {self.url} -> {upstream}, seed {self.seed} (FaultProxy(..., seed={self.seed}) replays the dice)"
        )

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def reset_counts(self) -> None:
        with self._lock:
            self.counts.clear()

    def share(self, fault: str) -> float:
        """The fault's share of the requests made while faults were on."""
        with self._lock:
            return self.counts[fault] / self.counts["requests_faults_on"] if self.counts["requests_faults_on"] else 0.0

    # --- deciding ---

    def _choose(self, method: str, path: str) -> Optional[str]:
        with self._lock:
            fault = self._roll(method, path)
            self.log.append((method, path, fault or ""))
            return fault

    def _roll(self, method: str, path: str) -> Optional[str]:  # under the lock
        self.counts["requests"] += 1
        if self.fail_forever is not None and self.fail_forever(method, path):
            self.counts["permanent"] += 1
            return "permanent"
        if not self.enabled:
            return None
        self.counts["requests_faults_on"] += 1
        n = self.counts["requests_faults_on"]
        # A fault under its floor goes first. Looking len(faults) requests ahead leaves room to
        # serve all of them, one per request, before any drops below the floor (from 10 requests on).
        lacking = [f for f in self.faults if self.counts[f] < self.floor * (n + len(self.faults))]
        if lacking:
            fault = min(lacking, key=lambda f: (self.counts[f], self.rng.random()))
        else:
            roll = self.rng.random()
            fault = self.faults[int(roll / self.rate)] if roll < self.rate * len(self.faults) else None
        if fault is not None:
            self.counts[fault] += 1
            if fault == "error_5xx" and method in WRITES:
                # Every other error on a write comes after the write was forwarded (it happened, the
                # client sees an error): by count, not by dice, so a run always has both kinds.
                self.counts["error_5xx_on_writes"] += 1
                if self.counts["error_5xx_on_writes"] % 2 == 1:
                    self.counts["error_5xx_after_forward"] += 1
                    fault = "error_5xx_after_forward"
        return fault

    def _pick(self, options: list):
        with self._lock:
            return self.rng.choice(options)

    # --- handling ---

    def handle(self, h: _Handler) -> None:
        body = _read_body(h)
        fault = self._choose(h.command, h.path)
        if fault == "permanent":
            return self._send_error(h, self.permanent_status)
        if fault == "throttle":
            return self._send_error(h, 503 if self.flavor == "s3" else self._pick([429, 503]), throttle=True)
        if fault == "error_5xx":
            return self._send_error(h, self._pick([500, 502]))
        try:
            status, reason, headers, data = self._forward(h, body)
        except (OSError, http.client.HTTPException) as exc:  # upstream gone: what a real gateway says
            return self._send_raw(h, 502, "Bad Gateway", [("Content-Type", "text/plain")], f"upstream: {exc}".encode())
        if fault == "error_5xx_after_forward":
            return self._send_error(h, self._pick([500, 502]))
        if fault == "reset":
            return self._reset(h, status, reason, headers, data)
        if fault == "delay":
            time.sleep(self.delay_s)
            h.close_connection = True
        self._send_raw(h, status, reason, headers, data)

    def _forward(self, h: _Handler, body: bytes):
        conn = http.client.HTTPConnection(*self.upstream, timeout=120)
        try:
            conn.putrequest(h.command, h.path, skip_host=True, skip_accept_encoding=True)
            for name, value in h.headers.items():
                if name.lower() not in _DROP:
                    conn.putheader(name, value)
            if body or h.command in WRITES:
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body or None)
            resp = conn.getresponse()
            data = resp.read()
            headers = [(k, v) for k, v in resp.getheaders() if k.lower() not in _DROP]
            length = resp.getheader("Content-Length") if h.command == "HEAD" else None
            headers.append(("Content-Length", length if length is not None else str(len(data))))
            return resp.status, resp.reason, headers, data
        finally:
            conn.close()

    def _send_error(self, h: _Handler, status: int, throttle: bool = False) -> None:
        reason = http.client.responses.get(status, "Error")
        if status == 502:  # a gateway's page, in neither server's format
            return self._send_raw(
                h, 502, reason, [("Content-Type", "text/html")], b"<html><body>502 Bad Gateway</body></html>"
            )
        if self.flavor == "s3":
            code, message = {
                (503, True): ("SlowDown", "Please reduce your request rate."),
                (503, False): ("ServiceUnavailable", "Service is unable to handle request."),
                (500, False): ("InternalError", "We encountered an internal error. Please try again."),
            }[(status, throttle)]
            body = (
                f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
                f"<RequestId>FAULTPROXY</RequestId></Error>"
            ).encode()
            ctype = "application/xml"
        else:
            why = {429: "rateLimitExceeded", 503: "backendError", 500: "backendError"}[status]
            body = json.dumps(
                {
                    "error": {
                        "code": status,
                        "message": f"fault proxy: {why}",
                        "errors": [{"domain": "global", "reason": why, "message": why}],
                    }
                }
            ).encode()
            ctype = "application/json; charset=UTF-8"
        self._send_raw(h, status, reason, [("Content-Type", ctype), ("Content-Length", str(len(body)))], body)

    def _send_raw(self, h: _Handler, status: int, reason: str, headers: list, data: bytes) -> None:
        if not any(k.lower() == "content-length" for k, _ in headers):
            headers = [*headers, ("Content-Length", str(len(data)))]
        try:
            h.connection.sendall(_head(status, reason, headers) + (b"" if h.command == "HEAD" else data))
        except OSError:  # the client gave up (a delayed response): nothing to tell it
            h.close_connection = True

    def _reset(self, h: _Handler, status: int, reason: str, headers: list, data: bytes) -> None:
        head = _head(status, reason, headers)
        body = b"" if h.command == "HEAD" else data
        with self._lock:
            self.counts["reset_mid_body" if len(body) >= 2 else "reset_in_headers"] += 1
        cut = head + body[: len(body) // 2] if len(body) >= 2 else head[: len(head) // 2]
        try:
            h.connection.sendall(cut)
            # Linger 0: close() sends RST, not FIN, as a dropped connection does.
            h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            h.connection.close()
        except OSError:
            pass
        h.close_connection = True


def _head(status: int, reason: str, headers: list) -> bytes:
    lines = [f"HTTP/1.1 {status} {reason}"] + [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _read_body(h: BaseHTTPRequestHandler) -> bytes:
    if h.headers.get("Transfer-Encoding", "").lower() == "chunked":
        parts = []
        while True:
            size = int(h.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while h.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                    pass
                return b"".join(parts)
            parts.append(h.rfile.read(size))
            h.rfile.readline()
    return h.rfile.read(int(h.headers.get("Content-Length") or 0))


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the clients expect

    def log_message(self, *args) -> None:  # quiet: the counts say what happened
        pass

    def do_GET(self) -> None:
        self.server.proxy.handle(self)

    do_PUT = do_POST = do_DELETE = do_HEAD = do_PATCH = do_GET
