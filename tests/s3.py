"""A real S3 API server for the tests: `moto_server` in its own process on 127.0.0.1 (delta-rs
reads are known to hang against moto running in a thread of the same process), one per test
session, stopped by its PID; a fresh bucket per test. For the fault tests, proxies in front of a
server: `CuttableProxy` (TCP: the store stops answering, then answers again) and `FaultProxy`
(HTTP: 503 SlowDown as its `Faults` say)."""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from scripts import s3_server as s3_server_script
from scripts.local_prefect import HOST, free_port
from scripts.s3_server import KEYS, REGION


@dataclass(frozen=True)
class S3Server:
    """The server's endpoint, and the settings every client of it takes."""

    endpoint: str

    def storage_options(self) -> dict[str, str]:
        """delta-rs' options for this server (conditional writes by ETag, as on AWS)."""
        return {**self.environment(), "conditional_put": "etag"}

    def filesystem(self, **options):
        """pyarrow's S3 filesystem on this server."""
        from pyarrow import fs

        return fs.S3FileSystem(
            access_key=KEYS["AWS_ACCESS_KEY_ID"],
            secret_key=KEYS["AWS_SECRET_ACCESS_KEY"],
            region=REGION,
            endpoint_override=self.endpoint,
            scheme="http",
            **options,
        )

    def environment(self) -> dict[str, str]:
        """The AWS environment a process (or this one) needs to reach the server."""
        return s3_server_script.environment(self.endpoint)

    def create_bucket(self, name: str) -> str:
        """A new bucket; returns `s3://name`."""
        return s3_server_script.create_bucket(self.endpoint, name)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> Iterator[S3Server]:
    """The session's S3 API server."""
    process, endpoint = s3_server_script.start(tmp_path_factory.mktemp("s3") / "moto.log")
    try:
        yield S3Server(endpoint)
    finally:
        s3_server_script.stop(process)


@pytest.fixture
def s3_bucket(s3_server, request) -> str:
    """A fresh bucket for one test: `s3://<name>`."""
    name = f"t{abs(hash(request.node.nodeid)) % 10**10}-{time.monotonic_ns() % 10**6}"
    return s3_server.create_bucket(name)


@pytest.fixture
def s3_env(s3_server, monkeypatch) -> Iterator[dict[str, str]]:
    """This process set up as a user on the S3 server is (the AWS_* environment); yields the
    variables, for subprocesses. The store layer's clients are made anew on both sides."""
    from tasks.common import store

    for key, value in s3_server.environment().items():
        monkeypatch.setenv(key, value)
    store.forget_clients()
    yield s3_server.environment()
    store.forget_clients()


class CuttableProxy:
    """A TCP proxy in front of the server that a test can cut (the listener and every open
    connection closed: the store stops answering, as a server that died or a network that
    broke) and restore on the same port, with the server's state intact (moto keeps its
    buckets in memory: a killed server would lose them)."""

    def __init__(self, target: str) -> None:
        self.target = target.rsplit(":", 1)[0].removeprefix("http://"), int(target.rsplit(":")[-1])
        self.port = free_port()
        self.endpoint = f"http://{HOST}:{self.port}"
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self.restore()

    def restore(self) -> None:
        """Listen again (on the same port)."""
        listener = socket.create_server((HOST, self.port))
        listener.settimeout(0.1)  # the accept loop notices a cut within this
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        """Close the listener and every connection: new requests are refused, those in flight
        break."""
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        with self._lock:
            sockets, self._sockets = self._sockets, set()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while self._listener is listener:
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets |= {client, upstream}
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        """Bytes from `source` to `sink` until either closes; then both."""
        with contextlib.suppress(OSError):
            while data := source.recv(1 << 16):
                sink.sendall(data)
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message>"
    b"<RequestId>FAULTPROXY</RequestId></Error>"
)


@dataclass
class Faults:
    """Which requests the fault proxy answers with 503 SlowDown: with `every` = n, every n-th
    new request (by method, path and body) `times` times before it is served, as S3 does under
    load (the client's retry of it then goes through); with `always`, every request."""

    every: int = 0
    times: int = 1
    always: bool = False
    answered_503: int = 0
    _seen: dict[tuple[str, str, bytes], int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def fail(self, method: str, path: str, body: bytes) -> bool:
        """Whether to answer this request with a 503 (counted)."""
        key = (method, path, hashlib.sha256(body).digest())
        with self._lock:
            if key not in self._seen:
                fresh = self.every and (len(self._seen) + 1) % self.every == 0
                self._seen[key] = self.times if fresh else 0
            failing = self.always or self._seen[key] > 0
            if failing:
                self._seen[key] = max(0, self._seen[key] - 1)
                self.answered_503 += 1
            return failing


class FaultProxy:
    """An HTTP proxy in front of the server (threads in this process: run the pipeline in a
    process of its own) that forwards each request to it, or answers 503 SlowDown as `faults`
    says. `faults` may be changed while it runs."""

    def __init__(self, target: str, faults: Faults) -> None:
        self.faults = faults
        host, port = target.removeprefix("http://").rsplit(":", 1)
        handler = type("Handler", (_ForwardingHandler,), {"proxy": self, "target": (host, port)})
        self._server = ThreadingHTTPServer((HOST, 0), handler)
        self._server.daemon_threads = True
        self.endpoint = f"http://{HOST}:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class _ForwardingHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as S3 clients expect
    proxy: FaultProxy
    target: tuple[str, str]

    def do_request(self) -> None:
        body = self._body()
        if self.proxy.faults.fail(self.command, self.path, body):
            self._answer(503, "Slow Down", [("Content-Type", "application/xml")], SLOW_DOWN)
            return
        upstream = http.client.HTTPConnection(*self.target, timeout=120)
        try:
            upstream.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for key, value in self.headers.items():
                if key.lower() != "transfer-encoding":
                    upstream.putheader(key, value)
            if "content-length" not in (key.lower() for key in self.headers):
                upstream.putheader("Content-Length", str(len(body)))
            upstream.endheaders(body)
            response = upstream.getresponse()
            data = response.read()
            headers = [
                (key, value)
                for key, value in response.getheaders()
                if key.lower() not in ("transfer-encoding", "connection", "content-length")
            ]
            length = response.getheader("Content-Length") if self.command == "HEAD" else None
            self._answer(response.status, response.reason, headers, data, length)
        finally:
            upstream.close()

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = do_request  # noqa: N815

    def _body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", ""):
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0], 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            self.rfile.readline()
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _answer(self, status, reason, headers, data, length=None) -> None:
        self.send_response_only(status, reason)
        for key, value in headers:
            self.send_header(key, value)
        self.send_header("Content-Length", length or str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def log_message(self, *args) -> None:  # quiet: the test's output is the pipeline's
        pass
