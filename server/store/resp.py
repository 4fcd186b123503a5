"""A pipelined Redis client for the hot path of the waiting room: one connection, every command written at
once, answers matched in order, replies parsed by hiredis (C).

Why not redis-py for this: a command through redis-py's asyncio client costs about 145 us of CPU in the
calling process (a pool connection taken and given back, a timeout context, the command packed and the
answer parsed in Python) against about 25 us here (one write, one future, hiredis); commands of many pages
meeting in one turn of the event loop (a reconnect storm) cost about 13 us each here against 35 us with
redis-py's pipeline and 165 us without (``bench/store_ops.py``; docs/performance.md). Every store command of
a page, a check-in and "call next" goes through this client (server/store/redis.py, server/cluster.py), and
socket.io's publishes; the other stores' single commands too (``redis_client`` in server/store/redis.py),
while their pipelines, the statistics store and socket.io's subscription keep redis-py.

Faults are answered as redis-py's errors (``redis.exceptions.ConnectionError`` / ``TimeoutError``), which the
handlers turn into ``store_unavailable`` (server/errors.py):

- Redis refusing: the connect fails at once, every waiting command with it.
- Redis hanging: nothing received for ``socket_timeout`` while a command waits ends the connection; every
  command waiting on it fails then (commands are answered in order: none behind it can have been
  answered). A command waiting longer behind a burst whose answers keep arriving is not failed. A
  command that timed out may still have been applied: the caller decides whether to try again, as before.
- Redis back: the next command connects again; nothing to restart.

Commands are never retried here and nothing is buffered while Redis is away: a command fails or is answered.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import ssl
import time
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

import hiredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError, NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

SOCKET_TIMEOUT = 1.0
"""Seconds a command waits for its answer before the connection counts as hung (server/store/redis.py)."""
CONNECT_TIMEOUT = 1.0
"""Seconds to open the connection and say who we are (AUTH, SELECT)."""
CONFIRM_SECONDS = 0.05
"""After ``SOCKET_TIMEOUT`` of silence, how long to look again (after the loop has polled its sockets) before the
connection counts as hung."""


class _Pending:
    __slots__ = ("future", "sent")

    def __init__(self, future: asyncio.Future[Any], sent: float) -> None:
        self.future = future
        self.sent = sent


def _error(reply: ResponseError) -> ResponseError:
    message = str(reply)
    if message.startswith("NOSCRIPT"):
        return NoScriptError(message)
    return reply


class _Connection(asyncio.Protocol):
    """One connection: writes commands, hands each answer to the oldest waiting command."""

    def __init__(self, socket_timeout: float) -> None:
        self._reader = hiredis.Reader(encoding="utf-8", replyError=ResponseError, protocolError=RedisConnectionError)
        self._pending: collections.deque[_Pending] = collections.deque()
        self._timeout = socket_timeout
        self._transport: asyncio.Transport | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self._last_read = time.monotonic()
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self.closed = False
        self.writes = 0
        """Writes made (each carries every command of one turn of the event loop)."""

    # -- asyncio.Protocol --
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._last_read = time.monotonic()
        self._reader.feed(data)
        pending = self._pending
        while True:
            try:
                reply = self._reader.gets()
            except Exception as e:  # noqa: BLE001 - cannot be parsed (or decoded): nothing after it can be trusted
                self._fail(e if isinstance(e, RedisConnectionError) else RedisConnectionError(f"bad answer: {e}"))
                return
            if reply is False:
                return
            if not pending:  # an answer nobody asked for: the stream is out of step
                self._fail(RedisConnectionError("an answer from Redis that no command asked for"))
                return
            future = pending.popleft().future
            if future.done():  # its caller was cancelled: the answer is dropped, the order stays right
                continue
            if isinstance(reply, ResponseError):
                future.set_exception(_error(reply))
            else:
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(RedisConnectionError(f"Connection to Redis lost: {exc or 'closed by the server'}"))

    # -- commands --
    def send(self, commands: list[tuple[Any, ...]]) -> list[asyncio.Future[Any]]:
        """Queue the commands to be written together (no other command between them) at the end of this turn
        of the event loop, with every other command of the turn, and return one future per answer."""
        if self.closed or self._transport is None or self._transport.is_closing():
            raise RedisConnectionError("Connection to Redis closed")
        # Packed first, all of them: a command that cannot be packed (text that is not UTF-8, a None) must
        # leave nothing behind. A waiting entry without its command written would take the next command's
        # answer, and every answer after it would go to the wrong caller; half a MULTI block would leave
        # the connection inside MULTI.
        try:
            packed = [hiredis.pack_command(c) for c in commands]
        except (TypeError, ValueError) as e:  # UnicodeEncodeError is a ValueError
            raise DataError(f"a Redis command that cannot be sent: {type(e).__name__}") from None
        loop = asyncio.get_running_loop()
        sent = time.monotonic()
        futures = []
        for _ in commands:
            future = loop.create_future()
            self._pending.append(_Pending(future, sent))
            futures.append(future)
        self._out.extend(packed)
        if not self._flush_scheduled:  # one write (one system call) per turn of the event loop
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        if self._watchdog is None:
            self._watchdog = loop.call_at(loop.time() + self._timeout, self._check)
        return futures

    def _flush(self) -> None:
        self._flush_scheduled = False
        out, self._out = self._out, []
        if out and not self.closed and self._transport is not None:
            self.writes += 1
            self._transport.write(b"".join(out))

    def _check(self) -> None:
        """Redis counts as hung (or the network) when it has sent nothing for ``socket_timeout`` while a command
        waits: not when a command merely waited that long behind thousands of others whose answers keep
        coming (a reconnect storm), nor when this process's own loop was too busy to read answers that had
        arrived (timers run before the loop polls its sockets: ``_confirm`` looks again after one poll)."""
        self._watchdog = None
        if not self._pending or self.closed:
            return
        now = time.monotonic()
        quiet_since = max(self._last_read, self._pending[0].sent)
        loop = asyncio.get_running_loop()
        if now - quiet_since < self._timeout:
            self._watchdog = loop.call_at(loop.time() + (quiet_since + self._timeout - now), self._check)
            return
        self._watchdog = loop.call_at(loop.time() + CONFIRM_SECONDS, self._confirm, self._last_read)

    def _confirm(self, last_read: float) -> None:
        self._watchdog = None
        if not self._pending or self.closed:
            return
        if self._last_read == last_read:
            self._fail(RedisTimeoutError("Timeout reading from Redis"))
            return
        self._check()

    def _fail(self, error: Exception) -> None:
        """End the connection; every command still waiting gets ``error``."""
        self.closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if self._transport is not None:
            self._transport.abort()
        while self._pending:
            future = self._pending.popleft().future
            if not future.done():
                future.set_exception(error)

    def close(self) -> None:
        if not self.closed:
            self._fail(RedisConnectionError("Connection to Redis closed by the client"))


class RespClient:
    """Commands to one Redis over one pipelined connection (opened on first use, and again after a fault).

    ``call`` sends one command, ``calls`` several written together (a ``MULTI`` ... ``EXEC`` block stays
    whole), ``script`` runs a Lua script by its SHA (loading it when Redis does not know it). Answers are
    as hiredis gives them with ``decode_responses``: str, int, None, lists; a Redis error reply raises
    ``redis.exceptions.ResponseError`` (``NoScriptError`` for an unknown script)."""

    def __init__(self, url: str, *, socket_timeout: float = SOCKET_TIMEOUT,
                 connect_timeout: float = CONNECT_TIMEOUT) -> None:
        self._url = urlparse(url)
        if self._url.scheme not in ("redis", "rediss", "unix"):
            raise ValueError(f"unsupported Redis URL scheme {self._url.scheme!r}")
        query = parse_qs(self._url.query)
        path = self._url.path.strip("/") if self._url.scheme != "unix" else ""
        self._db = int(path or query.get("db", ["0"])[0] or 0)
        self._username = unquote(self._url.username) if self._url.username else None
        self._password = unquote(self._url.password) if self._url.password else None
        self._socket_timeout = socket_timeout
        self._connect_timeout = connect_timeout
        self._connection: _Connection | None = None
        self._connecting: asyncio.Future[_Connection] | None = None
        self._closed = False

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()

        def factory() -> _Connection:
            return _Connection(self._socket_timeout)

        try:
            async with asyncio.timeout(self._connect_timeout):
                if self._url.scheme == "unix":
                    _, connection = await loop.create_unix_connection(factory, self._url.path)
                else:
                    tls = ssl.create_default_context() if self._url.scheme == "rediss" else None
                    _, connection = await loop.create_connection(
                        factory, self._url.hostname or "127.0.0.1", self._url.port or 6379, ssl=tls)
                hello: list[tuple[Any, ...]] = []
                if self._password is not None:
                    hello.append(("AUTH", self._username, self._password) if self._username
                                 else ("AUTH", self._password))
                if self._db:
                    hello.append(("SELECT", self._db))
                if hello:
                    try:
                        await asyncio.gather(*connection.send(hello))
                    except BaseException:
                        connection.close()  # not left open, unauthenticated, one per attempt
                        raise
        except TimeoutError:
            raise RedisTimeoutError("Timeout connecting to Redis") from None
        except OSError as e:
            raise RedisConnectionError(f"Error connecting to Redis: {e}") from None
        except ResponseError as e:  # AUTH or SELECT refused: the store cannot be used, as if it did not answer
            raise RedisConnectionError(f"Redis refused the connection's AUTH/SELECT: {e}") from None
        return connection

    async def _ready(self) -> _Connection:
        connection = self._connection
        if connection is not None and not connection.closed:
            return connection
        if self._closed:
            raise RedisConnectionError("the Redis client is closed")
        if self._connecting is None:  # one attempt for everyone waiting, not one per command
            attempt = asyncio.ensure_future(self._connect())
            self._connecting = attempt
            attempt.add_done_callback(self._attempt_done)
        connection = await asyncio.shield(self._connecting)
        if self._closed:
            connection.close()
            raise RedisConnectionError("the Redis client is closed")
        current = self._connection  # installed by _attempt_done (or a newer one: this waiter resumed late)
        if current is not None and not current.closed:
            return current
        self._connection = connection
        return connection

    def _attempt_done(self, attempt: asyncio.Future[_Connection]) -> None:
        """An attempt is over for everyone (it runs before its waiters resume): the next command after a failure
        tries again, and a connection made is installed here, even when all its waiters were cancelled (else
        nobody would close it); one that is not needed any more is closed."""
        if self._connecting is attempt:
            self._connecting = None
        if attempt.cancelled() or attempt.exception() is not None:  # the exception is read: nothing logged
            return
        connection = attempt.result()
        current = self._connection
        if self._closed or (current is not None and not current.closed and current is not connection):
            connection.close()
        else:
            self._connection = connection

    @property
    def writes(self) -> int:
        """Writes the current connection made: commands that left together count once (tests count round
        trips with it)."""
        return self._connection.writes if self._connection is not None else 0

    async def call(self, *words: Any) -> Any:
        connection = self._connection
        if connection is None or connection.closed:
            connection = await self._ready()
        return await connection.send([words])[0]

    async def send(self, *words: Any) -> asyncio.Future[Any]:
        """Send one command without waiting for its answer: the future of the answer (connecting first when
        needed). Commands still leave and are answered in order."""
        connection = self._connection
        if connection is None or connection.closed:
            connection = await self._ready()
        return connection.send([words])[0]

    async def calls(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Several commands written together; their answers in order (the first error raises)."""
        connection = self._connection
        if connection is None or connection.closed:
            connection = await self._ready()
        answers = await asyncio.gather(*connection.send(commands), return_exceptions=True)
        for a in answers:
            if isinstance(a, BaseException):
                raise a
        return list(answers)

    async def transaction(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """``MULTI``, the commands, ``EXEC``: their answers (Redis applies all of them or, on a fault, none)."""
        answers = await self.calls([("MULTI",), *commands, ("EXEC",)])
        results = answers[-1]
        for r in results:
            if isinstance(r, ResponseError):
                raise r
        return list(results)

    async def script(self, body: str, keys: list[str], args: list[Any]) -> Any:
        sha = _SHAS.get(body) or _SHAS.setdefault(body, hashlib.sha1(body.encode()).hexdigest())  # noqa: S324
        try:
            return await self.call("EVALSHA", sha, len(keys), *keys, *args)
        except NoScriptError:
            return await self.call("EVAL", body, len(keys), *keys, *args)

    async def aclose(self) -> None:
        self._closed = True
        if self._connecting is not None:
            self._connecting.cancel()
            self._connecting = None
        if self._connection is not None:
            self._connection.close()
            self._connection = None


_SHAS: dict[str, str] = {}
