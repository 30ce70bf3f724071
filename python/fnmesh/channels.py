"""Data channels from Python (docs/protocol.md 1.7): a reader is an async iterator of the items
its writer sends, a writer sends bytes (and text messages) with backpressure.

A channel is made by the engine (``engine::channels::create``) and handed around as two refs,
one per end; whoever holds a ref opens that end over the engine's channel socket
(``/ws/channels/{id}?key=..&dir=read|write``), once. In a handler::

    channel = await ctx.channel()                  # a new channel: two refs
    await ctx.call("images.resize", {"source": channel.reader})
    async with ctx.writer(channel.writer) as writer:
        async for block in read_file(path):
            await writer.write(block)               # waits while the reader lags behind

    async for chunk in ctx.reader(data["source"]):  # the other side: bytes (or str) items
        ...

A clean :meth:`ChannelWriter.close` ends the reader's iteration; a writer that fails or
:meth:`ChannelWriter.abort`\\ s makes the reader's iteration raise :class:`fnmesh.InvocationStopped`,
so a cut stream is never taken for a whole one. A writer whose reader has gone gets
:class:`fnmesh.InvocationStopped` from its next write.

The sockets use the ``websockets`` package, imported when the first channel opens.
"""

from __future__ import annotations

import dataclasses
import urllib.parse
from collections.abc import AsyncIterator, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

import pydantic

from fnmesh.errors import ConnectionFailed, InvalidArgument, InvocationStopped

if TYPE_CHECKING:
    from websockets.asyncio.client import ClientConnection

__all__ = ["Channel", "ChannelReader", "ChannelRef", "ChannelWriter", "Channels"]

#: Largest frame a writer sends: bigger writes are split (the engine's own chunk size for
#: request bodies, docs/protocol.md 6.3).
CHUNK_BYTES = 64 * 1024
#: Largest frame a reader accepts: a channel holds at most 1 MiB at once (docs/protocol.md 1.7).
MAX_FRAME_BYTES = 1024 * 1024
#: How long opening an end may take.
OPEN_TIMEOUT_S = 30.0


class ChannelRef(pydantic.BaseModel):
    """One end of a channel as it travels in a payload: ``{"channel_id", "access_key",
    "direction"}``."""

    model_config = pydantic.ConfigDict(frozen=True)

    channel_id: str
    access_key: str = pydantic.Field(repr=False)
    direction: Literal["read", "write"]


@dataclasses.dataclass(frozen=True)
class Channel:
    """A channel's two refs (``ctx.channel()``): give ``reader`` to whoever reads, ``writer`` to
    whoever writes (either may be this handler)."""

    writer: ChannelRef
    reader: ChannelRef


def as_ref(ref: ChannelRef | Mapping[str, Any], direction: str) -> ChannelRef:
    """``ref`` as a :class:`ChannelRef` of the given direction (a dict from a payload works)."""
    try:
        parsed = ref if isinstance(ref, ChannelRef) else ChannelRef.model_validate(ref)
    except pydantic.ValidationError:
        raise InvalidArgument(f"not a channel ref: {ref!r}") from None
    if parsed.direction != direction:
        raise InvalidArgument(
            f"channel {parsed.channel_id} ref is for {parsed.direction}ing, not {direction}ing"
        )
    return parsed


class Channels:
    """Opens channel ends at one engine: its worker URL (``ws://host:port``) and token."""

    def __init__(self, url: str, token: str | None = None) -> None:
        self.url = url.rstrip("/")
        self.token = token

    def reader(self, ref: ChannelRef | Mapping[str, Any]) -> ChannelReader:
        """The read end of ``ref`` (opened on first use)."""
        return ChannelReader(self, as_ref(ref, "read"))

    def writer(self, ref: ChannelRef | Mapping[str, Any]) -> ChannelWriter:
        """The write end of ``ref`` (opened on first use)."""
        return ChannelWriter(self, as_ref(ref, "write"))

    async def open(self, ref: ChannelRef) -> ClientConnection:
        from websockets.asyncio.client import connect
        from websockets.exceptions import InvalidStatus, WebSocketException

        channel_id = urllib.parse.quote(ref.channel_id, safe="")
        key = urllib.parse.quote(ref.access_key, safe="")
        url = f"{self.url}/ws/channels/{channel_id}?key={key}&dir={ref.direction}"
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        try:
            return await connect(
                url,
                additional_headers=headers,
                max_size=MAX_FRAME_BYTES,
                compression=None,
                open_timeout=OPEN_TIMEOUT_S,
                # The engine pings nobody on channel sockets; a stalled peer is the engine's
                # timeouts' business (the request's, the channel's sweep).
                ping_interval=None,
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            raise InvocationStopped(
                f"channel {ref.channel_id}: the engine refused the {ref.direction} end ({status}): "
                "unknown, expired, or the request it belonged to is over"
            ) from None
        except (OSError, TimeoutError, WebSocketException) as exc:
            raise ConnectionFailed(f"channel {ref.channel_id}: cannot reach {self.url}: {exc}") from None


def _ended(ref: ChannelRef, exc: Exception) -> InvocationStopped | None:
    """``None`` for a clean close (the end of the stream), else the error to raise."""
    from websockets.exceptions import ConnectionClosed

    if isinstance(exc, ConnectionClosed):
        frame = exc.rcvd
        if frame is not None and frame.code == 1000:
            return None
        why = f"{frame.code} {frame.reason}".strip() if frame is not None else "connection lost"
        return InvocationStopped(f"channel {ref.channel_id} failed: {why}")
    return InvocationStopped(f"channel {ref.channel_id} failed: {exc}")


class ChannelReader:
    """The read end: ``async for item in reader`` yields each item as sent, ``bytes`` for binary
    items and ``str`` for text ones; the iteration ends when the writer closes cleanly and raises
    :class:`fnmesh.InvocationStopped` when it failed. An end is read once."""

    def __init__(self, channels: Channels, ref: ChannelRef) -> None:
        self.ref = ref
        self._channels = channels
        self._ws: ClientConnection | None = None
        self._started = False

    def __aiter__(self) -> AsyncIterator[bytes | str]:
        if self._started:
            raise InvalidArgument(f"channel {self.ref.channel_id} is read already")
        self._started = True
        return self._items()

    async def _items(self) -> AsyncIterator[bytes | str]:
        ws = self._ws = await self._channels.open(self.ref)
        try:
            while True:
                try:
                    item = await ws.recv()
                except Exception as exc:  # websockets' ConnectionClosed, or the socket broke
                    error = _ended(self.ref, exc)
                    if error is None:
                        return
                    raise error from None
                yield item
        finally:
            await ws.close()

    async def chunks(self) -> AsyncIterator[bytes]:
        """The items as bytes (text items UTF-8 encoded)."""
        async for item in self:
            yield item.encode() if isinstance(item, str) else item

    async def read_all(self, limit: int | None = None) -> bytes:
        """Every item, joined; more than ``limit`` bytes raise :class:`fnmesh.InvalidArgument`."""
        parts: list[bytes] = []
        size = 0
        async for chunk in self.chunks():
            size += len(chunk)
            if limit is not None and size > limit:
                await self.close()
                raise InvalidArgument(f"channel {self.ref.channel_id} holds more than {limit} bytes")
            parts.append(chunk)
        return b"".join(parts)

    async def close(self) -> None:
        """Stops reading: the writer's next write fails."""
        self._started = True
        if self._ws is not None:
            await self._ws.close()


class ChannelWriter:
    """The write end: :meth:`write` sends bytes (or text, UTF-8 encoded) as binary items and
    waits while the channel is full; :meth:`send_message` sends a text item. Close it
    (:meth:`close`, or ``async with``) to end the reader's stream; :meth:`abort` fails it."""

    def __init__(self, channels: Channels, ref: ChannelRef) -> None:
        self.ref = ref
        self._channels = channels
        self._ws: ClientConnection | None = None
        self._closed = False

    async def open(self) -> ChannelWriter:
        """Claims the end now (writes do it on first use)."""
        if self._ws is None:
            if self._closed:
                raise InvalidArgument(f"channel {self.ref.channel_id}'s writer is closed")
            self._ws = await self._channels.open(self.ref)
        return self

    async def write(self, data: bytes | bytearray | memoryview | str) -> None:
        """Sends ``data`` as binary items (split into 64 KiB frames)."""
        raw = data.encode() if isinstance(data, str) else bytes(data)
        ws = self._ws or (await self.open())._ws
        assert ws is not None
        try:
            for at in range(0, len(raw), CHUNK_BYTES):
                await ws.send(raw[at : at + CHUNK_BYTES])
        except Exception as exc:
            raise self._failed(exc) from None

    async def send_message(self, text: str) -> None:
        """Sends one text item (the HTTP response channel's control messages are such items)."""
        ws = self._ws or (await self.open())._ws
        assert ws is not None
        try:
            await ws.send(text)
        except Exception as exc:
            raise self._failed(exc) from None

    def _failed(self, exc: Exception) -> InvocationStopped:
        from websockets.exceptions import ConnectionClosed

        if isinstance(exc, ConnectionClosed) and exc.rcvd is not None and exc.rcvd.code == 1000:
            reason = exc.rcvd.reason or "the channel closed"
            return InvocationStopped(f"channel {self.ref.channel_id}: {reason}")
        error = _ended(self.ref, exc)
        return error or InvocationStopped(f"channel {self.ref.channel_id} closed")

    async def close(self) -> None:
        """Ends the stream cleanly (the reader's iteration ends). Idempotent."""
        self._closed = True
        ws, self._ws = self._ws, None
        if ws is not None:
            await ws.close()

    async def abort(self, reason: str = "the writer failed") -> None:
        """Fails the stream: the reader's iteration raises (an HTTP response is cut short)."""
        self._closed = True
        ws, self._ws = self._ws, None
        if ws is not None:
            await ws.close(code=1011, reason=reason[:120])

    @property
    def closed(self) -> bool:
        return self._closed

    async def __aenter__(self) -> ChannelWriter:
        return await self.open()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is None:
            await self.close()
        else:
            await self.abort(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
