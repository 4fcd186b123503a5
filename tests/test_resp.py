"""The pipelined Redis client (server/store/resp.py) against real redis-server processes: answers in order
under concurrency, an error for its command only, MULTI blocks kept whole, a cancelled caller not shifting
anyone's answer, AUTH and SELECT from the URL, and the faults (refused, hung, connection killed) answered
as redis-py's errors within the timeouts, then service again without a restart."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError, NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from server.store.resp import RespClient

from .redis_fixtures import START_TIMEOUT, _answers, _free_port, stop_process

pytestmark = pytest.mark.redis


@pytest.fixture
async def client(redis_url: str, redis_prefix: str) -> AsyncIterator[RespClient]:
    c = RespClient(redis_url)
    yield c
    await c.aclose()


class _Server:
    def __init__(self, workdir: Path, password: str | None = None) -> None:
        self.port = _free_port()
        self.workdir = workdir
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", str(workdir)]
        if password:
            args += ["--requirepass", password]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        url = f"redis://:{password}@127.0.0.1:{self.port}/0" if password else f"redis://127.0.0.1:{self.port}/0"
        deadline = time.monotonic() + START_TIMEOUT
        while not _answers(url, timeout=0.2):
            assert self.proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)  # polling a starting process; there is no event to wait on


@pytest.fixture
def private_server(tmp_path: Path) -> Iterator[_Server]:
    server = _Server(tmp_path)
    yield server
    if server.proc.poll() is None:
        os.kill(server.proc.pid, signal.SIGCONT)
        stop_process(server.proc)


async def test_concurrent_commands_each_get_their_own_answer(client: RespClient, redis_prefix: str) -> None:
    key = redis_prefix + "n"
    answers = await asyncio.gather(*(client.call("INCR", key) for _ in range(500)))
    assert sorted(answers) == list(range(1, 501))
    assert answers == list(range(1, 501))  # written in call order, answered in order
    await client.call("SET", redis_prefix + "s", "wert ä")
    assert await client.call("GET", redis_prefix + "s") == "wert ä"
    assert await client.call("GET", redis_prefix + "missing") is None


async def test_an_error_reply_fails_its_command_only(client: RespClient, redis_prefix: str) -> None:
    await client.call("SET", redis_prefix + "s", "text")
    got = await asyncio.gather(client.call("INCR", redis_prefix + "s"), client.call("GET", redis_prefix + "s"),
                               return_exceptions=True)
    assert isinstance(got[0], ResponseError) and got[1] == "text"
    with pytest.raises(NoScriptError):
        await client.call("EVALSHA", "0" * 40, 0)
    assert await client.script("return ARGV[1] .. 'x'", [], ["a"]) == "ax"  # unknown SHA: sent in full


async def test_a_transaction_is_applied_whole(client: RespClient, redis_prefix: str) -> None:
    key = redis_prefix + "l"
    results = await asyncio.gather(*(client.transaction([("RPUSH", key, i), ("RPUSH", key, i)]) for i in range(50)))
    assert len(results) == 50
    listed = await client.call("LRANGE", key, 0, -1)
    assert listed == [str(i) for i in range(50) for _ in (0, 1)]  # no other command between a pair
    with pytest.raises(ResponseError):
        await client.transaction([("SET", redis_prefix + "t", "x"), ("INCR", redis_prefix + "t")])
    assert await client.call("GET", redis_prefix + "t") == "x"  # Redis ran the block; the error is INCR's


async def test_a_cancelled_caller_does_not_shift_answers(client: RespClient, redis_prefix: str) -> None:
    await client.call("SET", redis_prefix + "a", "A")
    await client.call("SET", redis_prefix + "b", "B")
    slow = asyncio.ensure_future(client.call("EVAL", "local i = 0 while i < 3000000 do i = i + 1 end return 'slow'", 0))
    await asyncio.sleep(0)  # written; its answer comes later
    slow.cancel()
    assert await client.call("GET", redis_prefix + "a") == "A"
    assert await client.call("GET", redis_prefix + "b") == "B"


async def test_auth_and_database_from_the_url(tmp_path: Path) -> None:
    server = _Server(tmp_path, password="geheim p@ss")
    try:
        url = f"redis://:geheim%20p%40ss@127.0.0.1:{server.port}/3"
        c = RespClient(url)
        try:
            await c.call("SET", "k", "in three")
            assert await c.call("GET", "k") == "in three"
        finally:
            await c.aclose()
        other = RespClient(f"redis://:geheim%20p%40ss@127.0.0.1:{server.port}/0")
        try:
            assert await other.call("GET", "k") is None  # database 3 was selected, not 0
        finally:
            await other.aclose()
        wrong = RespClient(f"redis://:wrong@127.0.0.1:{server.port}/0")
        try:
            for _ in range(5):  # refused as a store that cannot be used, and no connection is left open
                with pytest.raises(RedisConnectionError):
                    await wrong.call("GET", "k")
        finally:
            await wrong.aclose()
        checker = RespClient(f"redis://:geheim%20p%40ss@127.0.0.1:{server.port}/0")
        try:
            deadline = time.monotonic() + 10
            while (await checker.call("CLIENT", "LIST")).count("\n") > 1:  # only the checker itself
                assert time.monotonic() < deadline, await checker.call("CLIENT", "LIST")
                await asyncio.sleep(0.05)  # Redis notices closed connections on its own loop
        finally:
            await checker.aclose()
    finally:
        stop_process(server.proc)


async def test_refused_hung_and_killed_connections(private_server: _Server) -> None:
    c = RespClient(f"redis://127.0.0.1:{private_server.port}/0", socket_timeout=0.5, connect_timeout=0.5)
    try:
        assert await c.call("PING") == "PONG"
        # Hung (SIGSTOP): every command waiting fails with a timeout within the socket timeout, all at once.
        os.kill(private_server.proc.pid, signal.SIGSTOP)
        started = time.monotonic()
        got = await asyncio.gather(*(c.call("PING") for _ in range(20)), return_exceptions=True)
        assert all(isinstance(g, (RedisTimeoutError, RedisConnectionError)) for g in got), got
        assert time.monotonic() - started < 2.0  # the bound, with the timeout at 0.5 s
        os.kill(private_server.proc.pid, signal.SIGCONT)
        assert await c.call("PING") == "PONG"  # back: a new connection, no restart
        # The server drops the connection: a command either finds it gone and connects again, or fails with a
        # connection error; the one after it is answered.
        killer = RespClient(f"redis://127.0.0.1:{private_server.port}/0")
        try:
            assert await killer.call("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes") >= 1
        finally:
            await killer.aclose()
        try:
            assert await c.call("PING") == "PONG"
        except RedisConnectionError:
            pass
        assert await c.call("PING") == "PONG"
        # Refused: the server is gone; commands fail at once instead of waiting.
        stop_process(private_server.proc)
        started = time.monotonic()
        with pytest.raises(RedisConnectionError):
            await c.call("PING")
        with pytest.raises(RedisConnectionError):
            await c.call("PING")
        assert time.monotonic() - started < 2.0
    finally:
        await c.aclose()
    with pytest.raises(RedisConnectionError):
        await c.call("PING")  # closed for good


async def test_no_false_timeout_while_answers_keep_coming_or_the_loop_is_busy(redis_url: str) -> None:
    """Hung means silent: a burst whose answers keep arriving for longer than the timeout is answered in full
    (a reconnect storm queues thousands of commands on the one connection), and so is a command whose answer
    arrived while this process's loop was busy past the timeout (timers run before the loop reads)."""
    c = RespClient(redis_url, socket_timeout=0.2)
    try:
        # Each command about a millisecond of Redis's time and 8 KB long: Redis reads a couple per read and
        # answers each read, so answers stream while the last commands wait several timeouts behind the first.
        busy = "local i = 0 while i < 60000 do i = i + 1 end return 'done'"
        started = time.monotonic()
        answers = await asyncio.gather(*(c.call("EVAL", busy, 0, "x" * 8000) for _ in range(400)))
        assert answers == ["done"] * 400
        took = time.monotonic() - started
        pending = asyncio.ensure_future(c.call("PING"))
        await asyncio.sleep(0)  # queued
        await asyncio.sleep(0)  # written
        time.sleep(0.5)  # noqa: ASYNC251 - the point: this process's loop blocked past the timeout
        assert await pending == "PONG"
    finally:
        await c.aclose()
    assert took > 0.2, f"the burst took {took:.2f} s: not longer than the timeout, it showed nothing"


async def test_a_command_that_cannot_be_sent_leaves_the_connection_in_step(
    client: RespClient, redis_prefix: str
) -> None:
    """Text that is not UTF-8 (a lone surrogate, as a JSON body may carry) or a None cannot be packed: that
    command fails alone, nothing of it is written, and every later command still gets its own answer (a
    waiting entry left behind would hand each answer to the wrong caller; half a MULTI block would leave the
    connection inside MULTI)."""
    key = redis_prefix + "k"
    await client.call("SET", key, "mine")
    for bad in ("\ud800", None, {"a": 1}):
        with pytest.raises(DataError):
            await client.call("GET", bad)
    with pytest.raises(DataError):
        await client.transaction([("SET", key, "half"), ("SET", key, "\udfff")])
    assert await client.call("GET", key) == "mine"  # nothing of the refused block ran
    got = await asyncio.gather(*(client.call("ECHO", str(i)) for i in range(50)))
    assert got == [str(i) for i in range(50)]
