"""The HTTP trigger's request and responses (docs/protocol.md 6.3, docs/http-streaming.md).

A handler bound with ``@app.http`` may take the request as a model and return a response::

    @app.http("GET", "/users/:id")
    @app.function("users.get")
    async def get_user(request: fnmesh.HttpRequest) -> fnmesh.HttpResponse:
        return fnmesh.HttpResponse(status_code=200, body={"id": request.path_params["id"]})

or take ``dict`` and return any JSON value (a value that is not a response object is a 200 with
an empty JSON object as body, as the engine maps it).

Any body reaches the handler through the request's ``request_body`` channel: ``await
request.read()`` (the raw bytes), ``await request.text()``, ``await request.form()`` (url-encoded
or multipart fields and files), or ``async for chunk in request.stream()`` as it arrives. A
handler streams its answer by returning a :class:`StreamingResponse` (any async or sync iterable
of bytes or text) or an :class:`EventSourceResponse` (server-sent events). Handlers that do none
of this never open a channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import urllib.parse
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import pydantic

from fnmesh.channels import ChannelRef
from fnmesh.errors import InvalidArgument

if TYPE_CHECKING:
    from fnmesh.channels import Channels, ChannelWriter

__all__ = [
    "EventSourceResponse",
    "FormData",
    "HttpRequest",
    "HttpResponse",
    "ServerSentEvent",
    "StreamingResponse",
    "UploadFile",
]

#: What :meth:`HttpRequest.read` and :meth:`HttpRequest.form` hold at most unless told otherwise
#: (the engine's ``http_body_limit_bytes`` default; a bigger body is for ``stream()``).
DEFAULT_READ_LIMIT = 16 * 1024 * 1024


@dataclasses.dataclass(frozen=True)
class UploadFile:
    """A file part of a multipart form."""

    filename: str
    content_type: str
    data: bytes = dataclasses.field(repr=False)
    headers: dict[str, str] = dataclasses.field(default_factory=dict, repr=False)

    @property
    def size(self) -> int:
        return len(self.data)


@dataclasses.dataclass(frozen=True)
class FormData:
    """A form's fields and files. ``items`` keeps every part in order (a name may repeat);
    ``fields`` and ``files`` map each name to its last value."""

    items: list[tuple[str, str | UploadFile]]

    @property
    def fields(self) -> dict[str, str]:
        return {name: value for name, value in self.items if isinstance(value, str)}

    @property
    def files(self) -> dict[str, UploadFile]:
        return {name: value for name, value in self.items if isinstance(value, UploadFile)}

    def get(self, name: str, default: str | UploadFile | None = None) -> str | UploadFile | None:
        """The last value named ``name``."""
        found = default
        for key, value in self.items:
            if key == name:
                found = value
        return found

    def getlist(self, name: str) -> list[str | UploadFile]:
        """Every value named ``name``, in order."""
        return [value for key, value in self.items if key == name]


class HttpRequest(pydantic.BaseModel):
    """An HTTP request routed to the function."""

    model_config = pydantic.ConfigDict(extra="allow")

    method: str
    """Upper-case method."""
    path: str
    """The route's template (``users/:id``), not the concrete URL."""
    path_params: dict[str, str] = {}
    query_params: dict[str, str] = {}
    headers: dict[str, str] = {}
    """Lower-case names, one value each."""
    body: Any = None
    """The JSON body when the content type is JSON, else ``None`` (see :meth:`read`)."""
    request_body: ChannelRef | None = None
    """The channel the raw body arrives on (read it with :meth:`stream`, :meth:`read`, ...)."""
    response: ChannelRef | None = None
    """The channel a streamed answer goes out on (return a :class:`StreamingResponse`)."""

    _channels: Channels | None = pydantic.PrivateAttr(default=None)
    _raw: bytes | None = pydantic.PrivateAttr(default=None)
    _streamed: bool = pydantic.PrivateAttr(default=False)

    def bind_channels(self, channels: Channels | None) -> None:
        """Where the request's channels open (the app serving it does this)."""
        self._channels = channels

    @property
    def content_type(self) -> str:
        """The media type without parameters, lower-case (``""`` if none was sent)."""
        return self.headers.get("content-type", "").split(";", 1)[0].strip().lower()

    async def stream(self) -> AsyncIterator[bytes]:
        """The body's bytes as they arrive (once; after :meth:`read`, its bytes at once)."""
        if self._raw is not None:
            if self._raw:
                yield self._raw
            return
        if self._streamed:
            raise InvalidArgument("the request body is read already")
        self._streamed = True
        if self.request_body is None:
            return
        if self._channels is None:
            raise InvalidArgument(
                "this request has no channels bound: only a request the app's HTTP route hands "
                "to its handler can read its body"
            )
        async for chunk in self._channels.reader(self.request_body).chunks():
            yield chunk

    async def read(self, limit: int = DEFAULT_READ_LIMIT) -> bytes:
        """The whole raw body (kept: later calls answer the same bytes). More than ``limit``
        bytes raise :class:`fnmesh.InvalidArgument`."""
        if self._raw is None:
            parts: list[bytes] = []
            size = 0
            async for chunk in self.stream():
                size += len(chunk)
                if size > limit:
                    raise InvalidArgument(f"the request body is larger than {limit} bytes")
                parts.append(chunk)
            self._raw = b"".join(parts)
        return self._raw

    async def text(self, limit: int = DEFAULT_READ_LIMIT) -> str:
        """The body decoded with the content type's charset (UTF-8 by default)."""
        charset = _param(self.headers.get("content-type", ""), "charset") or "utf-8"
        try:
            return (await self.read(limit)).decode(charset, errors="replace")
        except LookupError:
            raise InvalidArgument(f"unknown charset {charset!r}") from None

    async def form(self, limit: int = DEFAULT_READ_LIMIT) -> FormData:
        """The fields (and files) of an ``application/x-www-form-urlencoded`` or
        ``multipart/form-data`` body, read whole within ``limit`` bytes."""
        kind = self.content_type
        if kind == "application/x-www-form-urlencoded":
            text = (await self.read(limit)).decode("utf-8", errors="replace")
            pairs = urllib.parse.parse_qsl(text, keep_blank_values=True)
            return FormData(items=[(name, value) for name, value in pairs])
        if kind == "multipart/form-data":
            boundary = _param(self.headers.get("content-type", ""), "boundary")
            if not boundary:
                raise InvalidArgument("multipart/form-data without a boundary")
            return parse_multipart(await self.read(limit), boundary.encode("latin-1"))
        raise InvalidArgument(f"not a form: content-type {kind or 'missing'}")


class HttpResponse(pydantic.BaseModel):
    """What the route answers. ``body`` is sent as JSON unless ``headers`` set a content type
    (then a string body is sent as is)."""

    status_code: int = pydantic.Field(default=200, ge=100, le=599)
    headers: dict[str, str] = {}
    body: Any = pydantic.Field(default_factory=dict)


Content = AsyncIterable[bytes | str] | Iterable[bytes | str]


class StreamingResponse:
    """A response whose body is produced as it goes: ``content`` is an async (or plain)
    iterable of ``bytes`` or ``str`` chunks, each sent as soon as it is produced. Status and
    headers go first; a ``content`` that raises cuts the response short (the client sees a
    broken body, never a clean end); a client that hangs up stops the iteration (an async
    generator is closed, its ``finally`` blocks run)."""

    def __init__(
        self,
        content: Content,
        status_code: int = 200,
        headers: Mapping[str, str] | None = None,
        media_type: str | None = None,
    ) -> None:
        if not 100 <= status_code <= 599:
            raise InvalidArgument(f"status_code must be within 100..599, got {status_code}")
        self.content = content
        self.status_code = status_code
        self.headers = dict(headers or {})
        if media_type is not None and not any(k.lower() == "content-type" for k in self.headers):
            self.headers["content-type"] = media_type

    def body(self) -> AsyncIterator[bytes | str]:
        """The chunks to send, in order."""
        return _aiter(self.content)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status_code={self.status_code})"


@dataclasses.dataclass(frozen=True)
class ServerSentEvent:
    """One server-sent event: ``data`` (a string, or any JSON value sent as JSON), and the
    optional ``event`` name, ``id``, ``retry`` (ms) and ``comment``."""

    data: Any = None
    event: str | None = None
    id: str | None = None
    retry: int | None = None
    comment: str | None = None

    def encode(self) -> bytes:
        """The event in the ``text/event-stream`` format, blank line included."""
        lines: list[str] = []
        if self.comment is not None:
            lines += [f": {line}" for line in self.comment.splitlines() or [""]]
        for name, value in (("id", self.id), ("event", self.event)):
            if value is not None:
                if "\n" in value or "\r" in value:
                    raise InvalidArgument(f"an event's {name} cannot hold a line break")
                lines.append(f"{name}: {value}")
        if self.retry is not None:
            lines.append(f"retry: {int(self.retry)}")
        if self.data is not None:
            text = self.data if isinstance(self.data, str) else json.dumps(self.data, separators=(",", ":"))
            lines += [f"data: {line}" for line in text.replace("\r\n", "\n").split("\n")]
        return ("\n".join(lines) + "\n\n").encode()


class EventSourceResponse(StreamingResponse):
    """Server-sent events: ``content`` yields :class:`ServerSentEvent`\\ s, dicts of their fields
    or plain strings (each one event's data). While no event comes for ``ping`` seconds a
    keep-alive comment goes out (``None``: never). Sets ``text/event-stream``, ``no-cache`` and
    ``x-accel-buffering: no`` (proxies must not hold events back)."""

    def __init__(
        self,
        content: AsyncIterable[ServerSentEvent | Mapping[str, Any] | str]
        | Iterable[ServerSentEvent | Mapping[str, Any] | str],
        status_code: int = 200,
        headers: Mapping[str, str] | None = None,
        ping: float | None = 15.0,
    ) -> None:
        merged = {"content-type": "text/event-stream", "cache-control": "no-cache", "x-accel-buffering": "no"}
        merged.update({k.lower(): v for k, v in (headers or {}).items()})
        super().__init__((), status_code, merged)
        self.events = content
        self.ping = ping

    def body(self) -> AsyncIterator[bytes | str]:
        return self._encoded()

    async def _encoded(self) -> AsyncIterator[bytes | str]:
        events = _aiter(self.events)
        try:
            if self.ping is None:
                async for event in events:
                    yield _event(event)
                return
            pending: asyncio.Task[Any] | None = None
            try:
                while True:
                    if pending is None:
                        pending = asyncio.ensure_future(anext(events))
                    done, _ = await asyncio.wait({pending}, timeout=self.ping)
                    if not done:
                        yield b": ping\n\n"
                        continue
                    task, pending = pending, None
                    try:
                        event = task.result()
                    except StopAsyncIteration:
                        return
                    yield _event(event)
            finally:
                if pending is not None:
                    pending.cancel()
                    with contextlib.suppress(BaseException):
                        await pending
        finally:
            close = getattr(events, "aclose", None)
            if close is not None:
                await close()


def _event(event: ServerSentEvent | Mapping[str, Any] | str) -> bytes:
    if isinstance(event, ServerSentEvent):
        return event.encode()
    if isinstance(event, str):
        return ServerSentEvent(data=event).encode()
    if isinstance(event, Mapping):
        try:
            return ServerSentEvent(**event).encode()
        except TypeError as exc:
            raise InvalidArgument(f"not an event: {exc}") from None
    raise InvalidArgument(f"not an event: {type(event).__name__}")


async def _aiter(content: AsyncIterable[Any] | Iterable[Any]) -> AsyncIterator[Any]:
    """``content``'s items; whatever stops the iteration closes ``content`` too (its
    ``finally`` blocks run now, not whenever the garbage collector gets to it)."""
    if isinstance(content, AsyncIterable):
        iterator = aiter(content)
        try:
            async for item in iterator:
                yield item
        finally:
            aclose = getattr(iterator, "aclose", None)
            if aclose is not None:
                await aclose()
    else:
        sync = iter(content)
        try:
            for item in sync:
                yield item
        finally:
            close = getattr(sync, "close", None)
            if close is not None:
                close()


async def send_streaming(response: StreamingResponse, writer: ChannelWriter) -> None:
    """Streams ``response`` out through the HTTP ``response`` channel (docs/protocol.md 6.3):
    status and headers as text items, then the chunks; closes the channel at the end, aborts
    it when the content fails. Returns when done or when the client is gone."""
    await writer.send_message(json.dumps({"type": "set_status", "status_code": response.status_code}))
    if response.headers:
        await writer.send_message(json.dumps({"type": "set_headers", "headers": response.headers}))
    body = response.body()
    try:
        async for chunk in body:
            if chunk:
                await writer.write(chunk)
    except BaseException as exc:
        await writer.abort(f"{type(exc).__name__}: {exc}")
        raise
    finally:
        close = getattr(body, "aclose", None)
        if close is not None:
            await close()
    await writer.close()


# ------------------------------------------------------------------------------------------------
# Multipart
# ------------------------------------------------------------------------------------------------


def _param(header: str, name: str) -> str | None:
    """A parameter of a header value (``boundary`` of a content type, ``filename`` of a
    content disposition), unquoted."""
    for part in _split_params(header)[1:]:
        key, sep, value = part.partition("=")
        if sep and key.strip().lower() == name:
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
            return value
    return None


def _split_params(header: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for ch in header:
        if escaped:
            escaped = False
        elif ch == "\\" and quoted:
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == ";" and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(ch)
    parts.append("".join(current))
    return parts


def parse_multipart(body: bytes, boundary: bytes) -> FormData:
    """A ``multipart/form-data`` body's parts (RFC 7578), byte for byte."""
    delimiter = b"--" + boundary
    at = body.find(delimiter)
    if at < 0:
        raise InvalidArgument("malformed multipart body: no boundary")
    items: list[tuple[str, str | UploadFile]] = []
    at += len(delimiter)
    while not body.startswith(b"--", at):
        line_end = body.find(b"\r\n", at)
        if line_end < 0:
            raise InvalidArgument("malformed multipart body: a boundary line has no end")
        start = line_end + 2
        end = body.find(b"\r\n" + delimiter, start)
        if end < 0:
            raise InvalidArgument("malformed multipart body: no closing boundary")
        items.append(_part(body[start:end]))
        at = end + 2 + len(delimiter)
    return FormData(items=items)


def _part(part: bytes) -> tuple[str, str | UploadFile]:
    if part.startswith(b"\r\n"):
        head, content = b"", part[2:]
    else:
        head, sep, content = part.partition(b"\r\n\r\n")
        if not sep:
            raise InvalidArgument("malformed multipart body: a part has no blank line after its headers")
    headers: dict[str, str] = {}
    for line in head.decode("utf-8", errors="replace").split("\r\n"):
        key, colon, value = line.partition(":")
        if colon:
            headers[key.strip().lower()] = value.strip()
    disposition = headers.get("content-disposition", "")
    name = _param(disposition, "name")
    if name is None:
        raise InvalidArgument("malformed multipart body: a part has no name")
    filename = _param(disposition, "filename")
    if filename is None:
        charset = _param(headers.get("content-type", ""), "charset") or "utf-8"
        return name, content.decode(charset, errors="replace")
    kind = headers.get("content-type", "application/octet-stream")
    return name, UploadFile(filename=filename, content_type=kind, data=content, headers=headers)
