"""Store fixtures: a Redis for the session (the one at REDIS_URL, else a private redis-server) and
``store``, which runs a test once on the memory store and once on Redis.

Every Redis test works under its own key prefix, deleted afterwards, so tests share one server
without seeing each other.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
import redis

from server.store.memory import MemoryStore
from server.store.redis import RedisStore

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
START_TIMEOUT = 15.0
"""Seconds a freshly started redis-server gets to answer."""


def _answers(url: str, timeout: float = 0.5) -> bool:
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        return bool(client.ping())
    except (redis.ConnectionError, redis.TimeoutError, OSError):
        return False
    finally:
        client.close()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """Terminate a helper server started by a fixture; kill it if it does not go within 10 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _start_redis(binary: str, workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Start redis-server on a free port; retry on another port if that one was taken meanwhile."""
    log_file = workdir / "redis.log"
    for _ in range(3):
        port = _free_port()
        url = f"redis://127.0.0.1:{port}/0"
        args = [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
            "--logfile",
            str(log_file),
        ]
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline and proc.poll() is None:
            if _answers(url, timeout=0.2):
                return proc, url
            time.sleep(0.05)
        stop_process(proc)
    log = log_file.read_text("utf-8", errors="replace")[-2000:] if log_file.exists() else ""
    pytest.fail(f"redis-server ({binary}) did not start answering on 127.0.0.1; its log:\n{log}", pytrace=False)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Redis that answers: REDIS_URL (default the local 6379) or a redis-server started here."""
    url = os.environ.get("REDIS_URL", DEFAULT_REDIS_URL)
    if _answers(url):
        yield url
        return
    binary = shutil.which("redis-server") or next(
        (p for p in ("/usr/bin/redis-server", "/usr/sbin/redis-server") if os.access(p, os.X_OK)), None
    )
    if binary is None:
        pytest.fail(
            f"no Redis answers at {url} and no redis-server binary was found to start one "
            "(install redis-server or set REDIS_URL)",
            pytrace=False,
        )
    proc, started_url = _start_redis(binary, tmp_path_factory.mktemp("redis"))
    try:
        yield started_url
    finally:
        stop_process(proc)


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of this test alone; every key under it is deleted afterwards."""
    prefix = f"sps-test-{uuid.uuid4().hex}:"
    yield prefix
    delete_prefix(redis_url, prefix)


def delete_prefix(redis_url: str, prefix: str) -> None:
    """Delete every key under ``prefix`` (in batches: a multi-node test leaves thousands)."""
    client = redis.Redis.from_url(redis_url)
    try:
        batch: list[bytes] = []
        for key in client.scan_iter(match=prefix + "*", count=500):
            batch.append(key)
            if len(batch) >= 500:
                client.delete(*batch)
                batch.clear()
        if batch:
            client.delete(*batch)
    finally:
        client.close()


@pytest_asyncio.fixture
async def redis_store(redis_url: str, redis_prefix: str) -> AsyncIterator[RedisStore]:
    store = RedisStore(redis_url, prefix=redis_prefix)
    try:
        yield store
    finally:
        await store.close()


@pytest_asyncio.fixture
async def memory_store(tmp_path: Path) -> AsyncIterator[MemoryStore]:
    store = MemoryStore(staff_file=tmp_path / "staff.json")
    try:
        yield store
    finally:
        await store.close()


@pytest_asyncio.fixture(params=[pytest.param("memory"), pytest.param("redis", marks=pytest.mark.redis)])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[MemoryStore | RedisStore]:
    """Each store in turn: the contract suite runs on both. Redis is only started for "redis"."""
    s: MemoryStore | RedisStore
    if request.param == "memory":
        s = MemoryStore(staff_file=request.getfixturevalue("tmp_path") / "staff.json")
    else:
        s = RedisStore(request.getfixturevalue("redis_url"), prefix=request.getfixturevalue("redis_prefix"))
    try:
        yield s
    finally:
        await s.close()
