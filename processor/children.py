"""Child processes that never outlive the Python process that started them.

Three layers. (1) Each child starts in its own session, so a terminal's Ctrl-C goes to Python
only, which stops the children itself. (2) Whoever starts a child stops it at exit
(:mod:`processor.embedded` registers an ``atexit`` hook). (3) On Linux the child asks the kernel
for a signal when its parent dies (``PR_SET_PDEATHSIG``): the one layer that survives a SIGKILL of
the Python process. The kernel ties that signal to the *thread* that forked the child, so
:func:`spawn_child` forks from the main thread or from one daemon thread that lives as long as
the process, never from a short-lived worker thread (e.g. ``asyncio.to_thread``).
"""

from __future__ import annotations

import ctypes
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

__all__ = ["spawn_child"]

_T = TypeVar("_T")

_PR_SET_PDEATHSIG = 1


def _deathsig_preexec(sig: signal.Signals) -> Callable[[], None] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the request took effect
            os._exit(1)

    return preexec


_spawn_requests: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]]] = queue.SimpleQueue()
_spawner_lock = threading.Lock()
_spawner: threading.Thread | None = None


def _spawner_loop() -> None:
    while True:
        call, result = _spawn_requests.get()
        try:
            result.set_result(call())
        except BaseException as exc:
            result.set_exception(exc)


def _on_long_lived_thread(call: Callable[[], _T]) -> _T:
    global _spawner
    if threading.current_thread() is threading.main_thread():
        return call()
    with _spawner_lock:
        if _spawner is None:
            _spawner = threading.Thread(target=_spawner_loop, name="child-spawner", daemon=True)
            _spawner.start()
    result: Future[_T] = Future()
    _spawn_requests.put((call, result))
    return result.result()


def spawn_child(
    command: list[str], *, stdout: Any, env: dict[str, str], cwd: Path, deathsig: signal.Signals
) -> subprocess.Popen[bytes]:
    """Start ``command`` in its own session, output to ``stdout``, ``deathsig`` if we die."""
    preexec = _deathsig_preexec(deathsig)
    return _on_long_lived_thread(
        lambda: subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=preexec,
        )
    )
