"""Real HTTP servers on loopback for the external-function tests (tests/test_external.py)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import shutil
import ssl
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web


@dataclasses.dataclass
class Seen:
    """One request as the receiver saw it."""

    method: str
    path: str
    headers: list[tuple[str, str]]  # in the order they were sent
    body: bytes
    at: float  # time.monotonic() on arrival
    count: int  # 1 for the first request to this path, 2 for the second...

    def header(self, name: str) -> str | None:
        values = self.all(name)
        return values[0] if values else None

    def all(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key.lower() == name.lower()]


Handler = Callable[[Seen], Awaitable[web.StreamResponse]]


def reply(
    status: int = 200,
    body: bytes | str = b"",
    content_type: str = "application/json",
    headers: dict[str, str] | None = None,
) -> web.Response:
    data = body.encode() if isinstance(body, str) else body
    return web.Response(status=status, body=data, headers={"Content-Type": content_type, **(headers or {})})


class Receiver:
    """An aiohttp server on 127.0.0.1 (a free port) that records every request and answers each
    path with the handler a test gave it (404 for any other path)."""

    def __init__(self) -> None:
        self.requests: list[Seen] = []
        self.release = asyncio.Event()  # set at shutdown: handlers that wait for it return
        self._routes: dict[str, Handler] = {}
        self._runner: web.AppRunner | None = None
        self.port = 0
        self.scheme = "http"

    def route(self, path: str, handler: Handler) -> str:
        """Serves ``path`` with ``handler``; returns its URL."""
        self._routes[path] = handler
        return self.url(path)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"{self.scheme}://{host}:{self.port}{path}"

    def seen(self, path: str) -> list[Seen]:
        return [request for request in self.requests if request.path == path]

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        count = sum(1 for seen in self.requests if seen.path == request.path) + 1
        seen = Seen(
            method=request.method,
            path=request.path,
            headers=[(key.decode("latin-1"), value.decode("latin-1")) for key, value in request.raw_headers],
            body=body,
            at=time.monotonic(),
            count=count,
        )
        self.requests.append(seen)
        handler = self._routes.get(request.path)
        if handler is None:
            return reply(404, "no such path", "text/plain")
        return await handler(seen)

    async def start(self, ssl_context: ssl.SSLContext | None = None) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=ssl_context)
        await site.start()
        self.port = self._runner.addresses[0][1]
        self.scheme = "https" if ssl_context is not None else "http"

    async def stop(self) -> None:
        self.release.set()
        if self._runner is not None:
            await self._runner.cleanup()


RawReply = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class RawServer:
    """A bare TCP server on 127.0.0.1 answering each connection with ``respond`` (for answers no
    HTTP server library would send, such as a body shorter than its Content-Length)."""

    def __init__(self, respond: RawReply) -> None:
        self._respond = respond
        self._server: asyncio.Server | None = None
        self.connections = 0
        self.port = 0

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await reader.readuntil(b"\r\n\r\n")
            await self._respond(reader, writer)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


@dataclasses.dataclass(frozen=True)
class TlsFiles:
    ca: Path
    cert: Path
    key: Path


def make_certificates(directory: Path, host: str) -> TlsFiles | None:
    """A test CA and a server certificate for ``host`` signed by it, made with the openssl command
    (None when it is not installed)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        return None

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True, cwd=directory)

    curve = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    run(
        "req", "-x509", *curve, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=fnmesh test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    run("req", *curve, "-keyout", "server.key", "-out", "server.csr", "-subj", f"/CN={host}")
    (directory / "server.ext").write_text(
        f"subjectAltName=DNS:{host}\nbasicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
    )
    run(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.pem", "-days", "2", "-extfile", "server.ext",
    )  # fmt: skip
    return TlsFiles(ca=directory / "ca.pem", cert=directory / "server.pem", key=directory / "server.key")
