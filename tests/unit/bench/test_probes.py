"""The benchmarks' profiler: py-spy from the dev extras records a running process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bench.probes import py_spy

BUSY = """
import time
def spin_here():
    while True:
        sum(range(1000))
print("ready", flush=True)
spin_here()
"""


def test_py_spy_records_where_a_process_spends_its_time(tmp_path: Path) -> None:
    target = subprocess.Popen([sys.executable, "-c", BUSY], stdout=subprocess.PIPE)
    try:
        assert target.stdout is not None and target.stdout.readline() == b"ready\n"
        out = tmp_path / "profile.txt"
        spy = py_spy(target.pid, 1, out, threads=True, idle=True)
        assert spy.wait(60) == 0
    finally:
        target.kill()
        target.wait()
    stacks = out.read_text().splitlines()
    assert stacks and any("spin_here" in line for line in stacks)
    # Raw folded stacks: "frame;frame;... count".
    assert all(line.rsplit(" ", 1)[1].isdigit() for line in stacks)
