"""The server under test: a bench configuration, clerk accounts, one ``sprechstunde serve`` subprocess.

Everything here is started by the bench and stopped by it: ``ServerProcess.stop`` is safe to call
twice and after a failed start. Only loopback addresses are used.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import math
import multiprocessing
import resource
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import psutil

HOST = "127.0.0.1"
ALWAYS_OPEN = {day: "00:00-24:00" for day in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")}
VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def die_with_parent() -> None:
    """Linux: let the kernel end this child when the bench dies, even by SIGKILL (no cleanup runs then)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _toml_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def department_ids(count: int) -> list[str]:
    return [f"dept{i:02d}" for i in range(1, count + 1)]


def write_config(directory: Path, departments: list[str], redis_url: str | None, redis_prefix: str,
                 full_gc_interval: float | None = None, behind_proxy: bool = False) -> Path:
    """A bench configuration: every department always open, no queue cap, position updates every second,
    joins and logins from one address (all clients are on 127.0.0.1) effectively unlimited. ``behind_proxy``:
    the client address comes from the local nginx's X-Forwarded-For, as deploy/nginx/sprechstunde.conf asks."""
    hours = "{ " + ", ".join(f"{d} = {_toml_str(h)}" for d, h in ALWAYS_OPEN.items()) + " }"
    lines = [
        "[server]",
        f"host = {_toml_str(HOST)}",
        f"data_dir = {_toml_str(str(directory / 'data'))}",
        "demo = false",
        "position_interval = 1.0",
        "grace_seconds = 300",
        "joins_per_address = 0",  # 0: not limited
        "join_window_seconds = 600",
        "login_attempts_per_address = 100000",
    ]
    if full_gc_interval:
        lines.append(f"full_gc_interval = {full_gc_interval}")
    if behind_proxy:
        lines += ["trust_forwarded_for = true", f"trusted_proxies = [{_toml_str(HOST)}]"]
    if redis_url:
        lines += [f"redis_url = {_toml_str(redis_url)}", f"redis_prefix = {_toml_str(redis_prefix)}"]
    for d in departments:
        lines += ["", "[[departments]]", f"id = {_toml_str(d)}", f"name = {_toml_str(d.capitalize())}",
                  "service_minutes = 10", f"hours = {hours}"]
    path = directory / "bench.toml"
    path.write_text("\n".join(lines) + "\n", "utf-8")
    return path


@dataclass(frozen=True)
class ClerkAccount:
    username: str
    password: str
    department: str


def add_clerks(config: Path, departments: list[str], per_department: int) -> list[ClerkAccount]:
    """Create clerk accounts with the CLI before the server starts (the embedded store reads staff.json
    at each lookup; the Redis store shares them anyway). One at a time: the CLI rewrites staff.json."""
    clerks = []
    for d in departments:
        for k in range(1, per_department + 1):
            account = ClerkAccount(f"clerk-{d}-{k}", secrets.token_urlsafe(12), d)
            subprocess.run(
                [str(VENV_BIN / "sprechstunde"), "--config", str(config), "staff", "add", account.username,
                 "--departments", d, "--password-stdin"],
                input=account.password + "\n", text=True, check=True, capture_output=True, timeout=60,
            )
            clerks.append(account)
    return clerks


def delete_redis_prefix(redis_url: str, prefix: str) -> int:
    """Remove the keys this bench run created (its own random prefix only)."""
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        removed = 0
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            removed += client.delete(key)
        return removed
    finally:
        client.close()


def listen_overflows() -> int | None:
    """The kernel's count of connections dropped because a listen queue was full (Linux)."""
    try:
        lines = Path("/proc/net/netstat").read_text().splitlines()
    except OSError:
        return None
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            fields = dict(zip(names.split()[1:], values.split()[1:], strict=False))
            return int(fields.get("ListenOverflows", 0))
    return None


class ServerProcess:
    """``sprechstunde serve`` in its own process group, output to a log file in the run directory."""

    def __init__(self, config: Path, port: int, log_path: Path, profile: str) -> None:
        self.config = config
        self.port = port
        self.url = f"http://{HOST}:{port}"
        self.log_path = log_path
        self.profile = profile
        self.cprofile_path = log_path.with_name("server.pstats")
        self.proc: subprocess.Popen[bytes] | None = None
        self.ps: psutil.Process | None = None
        self._log = None
        self._spy: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> None:
        serve = ["--config", str(self.config), "serve", "--host", HOST, "--port", str(self.port)]
        if self.profile == "cprofile":
            argv = [sys.executable, "-m", "cProfile", "-o", str(self.cprofile_path), "-m", "server.cli", *serve]
        else:
            argv = [str(VENV_BIN / "sprechstunde"), *serve]
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True, preexec_fn=die_with_parent)
        self.ps = psutil.Process(self.proc.pid)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.tail()}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=1) as r:
                    if r.status == 200:
                        return
            time.sleep(0.1)
        raise RuntimeError(f"server did not answer /healthz within {timeout:.0f} s:\n{self.tail()}")

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text("utf-8", "replace").splitlines()[-lines:])
        except OSError:
            return ""

    def rss(self) -> int:
        assert self.ps is not None
        return int(self.ps.memory_info().rss)

    def cpu_seconds(self) -> float:
        assert self.ps is not None
        t = self.ps.cpu_times()
        return float(t.user + t.system)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start_py_spy(self, seconds: float, output: Path) -> bool:
        """Sample the server with py-spy (if installed) for ``seconds``, raw collapsed stacks."""
        spy = VENV_BIN / "py-spy"
        if not spy.exists() or self.proc is None:
            return False
        self._spy = subprocess.Popen(
            [str(spy), "record", "--pid", str(self.proc.pid), "--duration", str(max(1, round(seconds))),
             "--rate", "100", "--nonblocking", "--format", "raw", "--output", str(output)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
            preexec_fn=die_with_parent,
        )
        return True

    def wait_py_spy(self, timeout: float = 30.0) -> None:
        if self._spy is not None:
            try:
                self._spy.wait(timeout)
            except subprocess.TimeoutExpired:
                self._spy.kill()
                self._spy.wait(5)
            self._spy = None

    def stop(self, timeout: float = 15.0) -> None:
        if self._spy is not None and self._spy.poll() is None:
            self._spy.kill()
            self._spy.wait(5)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # graceful: aiohttp drains, cProfile writes its stats
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self._log is not None:
            self._log.close()
            self._log = None


class NginxProxy:
    """Debian's nginx with the shipped site (deploy/nginx/sprechstunde.conf) in front of the nodes, set up as
    tests/test_nodes_nginx.py does it, with the helpers of tests/test_deploy.py: a throwaway certificate, the
    site on free loopback ports, its upstream listing every node, Host with the port (the app's same-origin
    checks). Only the size differs from the tests: enough worker connections for every page (two each), and
    enough workers for them under the open-files limit."""

    def __init__(self, directory: Path, upstreams: list[int], connections: int, tls: bool = True) -> None:
        root = str(Path(__file__).resolve().parent.parent)
        if root not in sys.path:
            sys.path.insert(0, root)
        from tests.test_deploy import Nginx, _nginx_conf, _self_signed, _site

        directory.mkdir(parents=True, exist_ok=True)
        cert, key = _self_signed(directory)
        http, https = free_port(), free_port()
        site = _site(cert, key, (http, https, upstreams[0]))
        first = f"server 127.0.0.1:{upstreams[0]} max_fails=1 fail_timeout=10s;"
        if site.count(first) != 1 or site.count("proxy_set_header Host $host;") != 2:
            raise RuntimeError("the shipped nginx site changed: adapt bench/_server.py NginxProxy")
        site = site.replace(first, "\n    ".join(f"server 127.0.0.1:{port} max_fails=1 fail_timeout=10s;"
                                                 for port in upstreams))
        site = site.replace("proxy_set_header Host $host;", f"proxy_set_header Host $host:{https};")
        # A worker holds two descriptors per page (the client's connection and the node's) and can have no
        # more than the hard open-files limit (20,000 on some hosts: one worker then failed 10,000 pages with
        # "accept4() failed (24: Too many open files)" and a clerk's sign-in timed out). Enough workers for
        # every page, with a margin, and `reuseport` so that the kernel spreads the connections over them.
        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        wanted = connections + 1000
        per_worker = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        self.workers = 1 if per_worker == wanted else math.ceil(wanted * 1.25 / per_worker)
        if self.workers > 1:
            if site.count("backlog=65535;") != 1:
                raise RuntimeError("the shipped nginx site changed: adapt bench/_server.py NginxProxy")
            site = site.replace("backlog=65535;", "backlog=65535 reuseport;")
        if not tls:
            # The load generator's side without TLS (``--proxy-tls off``): in a deployment the clients' TLS costs
            # their own machines; here the generator's (Python's) share of it took most of a core in a storm.
            listen = f"listen 127.0.0.1:{https} ssl http2 backlog=65535"
            if site.count(listen) != 1:
                raise RuntimeError("the shipped nginx site changed: adapt bench/_server.py NginxProxy")
            site = site.replace(listen, f"listen 127.0.0.1:{https} backlog=65535")
        conf = _nginx_conf(directory, site, foreground=True)
        text = conf.read_text("utf-8")
        if text.count("worker_connections 256;") != 1 or text.count("worker_processes 1;") != 1:
            raise RuntimeError("tests/test_deploy.py _nginx_conf changed: adapt bench/_server.py NginxProxy")
        text = text.replace("worker_processes 1;", f"worker_processes {self.workers};")
        text = text.replace("worker_connections 256;", f"worker_connections {per_worker - 100};")
        text = f"worker_rlimit_nofile {per_worker};\n" + text
        conf.write_text(text, "utf-8")
        self.url = f"{'https' if tls else 'http'}://{HOST}:{https}"
        self.nginx = Nginx(directory, conf, http, https)
        self.nginx.wait_listening()

    def cpu_seconds(self) -> float:
        total = 0.0
        with contextlib.suppress(psutil.Error):
            main = psutil.Process(self.nginx.proc.pid)
            for p in (main, *main.children(recursive=True)):
                with contextlib.suppress(psutil.Error):
                    t = p.cpu_times()
                    total += t.user + t.system
        return total

    def stop(self) -> None:
        self.nginx.stop()


class ServerGroup:
    """N ``sprechstunde serve`` nodes on one Redis, with nginx in front when there are several (or when
    asked), seen by the bench as one server: its URL (nginx's or the one node's), CPU and RSS summed over
    the nodes. py-spy samples the first node."""

    def __init__(self, nodes: list[ServerProcess], proxy_dir: Path | None, proxy_tls: bool = True) -> None:
        self.nodes = nodes
        self.proxy_dir = proxy_dir
        self.proxy_tls = proxy_tls
        self.proxy: NginxProxy | None = None
        self.url = nodes[0].url
        self.log_path = nodes[0].log_path

    def start(self, connections: int) -> None:
        for node in self.nodes:
            node.start()
        if self.proxy_dir is not None:
            self.proxy = NginxProxy(self.proxy_dir, [n.port for n in self.nodes], connections, self.proxy_tls)
            self.url = self.proxy.url

    @property
    def proc(self) -> subprocess.Popen[bytes] | None:
        return self.nodes[0].proc

    def tail(self, lines: int = 20) -> str:
        out = [f"-- node {k + 1} --\n{n.tail(lines)}" for k, n in enumerate(self.nodes) if n.proc is not None]
        if self.proxy is not None:
            out.append(f"-- nginx --\n{self.proxy.nginx.log()}")
        return "\n".join(out)

    def logs(self) -> list[str]:
        lines: list[str] = []
        for n in self.nodes:
            with contextlib.suppress(OSError):
                lines += n.log_path.read_text("utf-8", "replace").splitlines()
        return lines

    def rss(self) -> int:
        return sum(n.rss() for n in self.nodes)

    def cpu_seconds(self) -> float:
        return sum(n.cpu_seconds() for n in self.nodes)

    def proxy_cpu_seconds(self) -> float:
        return self.proxy.cpu_seconds() if self.proxy is not None else 0.0

    def start_py_spy(self, seconds: float, output: Path) -> bool:
        return self.nodes[0].start_py_spy(seconds, output)

    def wait_py_spy(self, timeout: float = 30.0) -> None:
        self.nodes[0].wait_py_spy(timeout)

    def stop(self) -> None:
        if self.proxy is not None:
            self.proxy.stop()
        for n in self.nodes:
            n.stop()


def summarize_py_spy(path: Path, top: int = 14) -> list[str]:
    """Own time (the sampled leaf) and inclusive time per function, from py-spy's raw collapsed stacks."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    try:
        text = path.read_text("utf-8", "replace")
    except OSError:
        return []
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_short(f) for f in stack.split(";")]
        total += count
        own[frames[-1]] += count
        for f in set(frames):
            inclusive[f] += count
    if not total:
        return []
    out = [f"{total} samples at 100 Hz", "own time (leaf frames):"]
    out += [f"  {100 * n / total:5.1f}%  {f}" for f, n in own.most_common(top)]
    out.append("inclusive time:")
    out += [f"  {100 * n / total:5.1f}%  {f}" for f, n in inclusive.most_common(top * 2)]
    return out


def _short(frame: str) -> str:
    """``emit (/…/site-packages/socketio/base_manager.py:93)`` -> ``emit (socketio/base_manager.py)``."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    path = where.rsplit(":", 1)[0]
    for marker in ("site-packages/", "/server/", "python3.11/"):
        if marker in path:
            path = ("server/" if marker == "/server/" else "") + path.split(marker, 1)[1]
            break
    return f"{name} ({path})" if path else name


class WorkerProcesses:
    """Client processes of a bench and their pipes: one command to all, their replies gathered; ``stop``
    ends them whatever state they are in. ``kind`` names them in errors."""

    reply_timeout = 300.0

    def __init__(self, kind: str = "client") -> None:
        self.kind = kind
        self.procs: list[multiprocessing.process.BaseProcess] = []
        self.pipes: list[Connection] = []

    def spawn(self, count: int, target: Callable[..., None], args: tuple[Any, ...]) -> None:
        """Start ``count`` processes running ``target(pipe, *args)``."""
        ctx = multiprocessing.get_context("spawn")
        for _ in range(count):
            ours, theirs = ctx.Pipe()
            p = ctx.Process(target=target, args=(theirs, *args), daemon=True)
            p.start()
            theirs.close()
            self.procs.append(p)
            self.pipes.append(ours)

    async def ask(self, command: str, args: Sequence[Any], seconds: float | None = None) -> list[Any]:
        """Send one command to every process (its own argument each) and collect the replies."""
        for pipe, arg in zip(self.pipes, args, strict=True):
            pipe.send((command, arg))
        limit = self.reply_timeout if seconds is None else seconds
        return list(await asyncio.gather(*(self._reply(pipe, p, limit)
                                           for pipe, p in zip(self.pipes, self.procs, strict=True))))

    async def _reply(self, pipe: Connection, proc: multiprocessing.process.BaseProcess, seconds: float) -> Any:
        deadline = time.monotonic() + seconds
        while not pipe.poll():
            if not proc.is_alive():
                raise RuntimeError(f"{self.kind} process {proc.pid} died (exit code {proc.exitcode})")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.kind} process {proc.pid} did not answer within {seconds:.0f} s")
            await asyncio.sleep(0.05)
        return pipe.recv()

    def cpu_seconds(self) -> float:
        total = 0.0
        for p in self.procs:
            with contextlib.suppress(psutil.Error, TypeError):
                t = psutil.Process(p.pid).cpu_times()
                total += t.user + t.system
        return total

    def stop(self) -> None:
        for pipe in self.pipes:
            with contextlib.suppress(Exception):
                pipe.send(("stop", None))
        deadline = time.monotonic() + 30
        for p in self.procs:
            p.join(max(0.1, deadline - time.monotonic()))
        for p in self.procs:
            if p.is_alive():
                p.terminate()
                p.join(5)
            if p.is_alive():
                p.kill()
                p.join(5)
        for pipe in self.pipes:
            pipe.close()

