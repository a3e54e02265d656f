"""Profile sockd under one benchmark mode with py-spy and print its hottest functions.

    .venv/bin/pip install py-spy
    .venv/bin/python bench/profile.py --mode tcp-ack --seconds 8 [--server sockd] [--svg /tmp/sockd.svg]

Starts the server as bench/run.py does, drives it with the C load generator in the
given mode, samples it with C{py-spy record --format raw} meanwhile, and prints the
functions with the most samples on top of the stack (self) and anywhere on it (total).
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run  # noqa: E402

PY_SPY = run.VENV_BIN / "py-spy"


FRAME_FILE = re.compile(r"\((.*?):\d+\)$")
FRAME_LINE = re.compile(r":\d+\)$")


Ranking = list[tuple[str, int]]


def top_functions(raw: str, limit: int) -> tuple[Ranking, Ranking, Ranking, int]:
    """Self and total samples per function, and self samples per file, from py-spy's collapsed stacks."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    files: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        samples += n
        frames = stack.split(";")
        own[frames[-1]] += n
        match = FRAME_FILE.search(frames[-1])
        files[match.group(1) if match else frames[-1]] += n
        # Count a function once per sample however deep it recurses; lines of one function are merged.
        for function in {FRAME_LINE.sub(")", frame) for frame in frames}:
            total[function] += n
    return own.most_common(limit), total.most_common(limit), files.most_common(limit), samples


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mode", default="tcp-ack", choices=[m.name for m in run.MODES])
    p.add_argument("--server", default="sockd", choices=[s.name for s in run.SERVERS])
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--conns", type=int, default=32)
    p.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--svg", type=Path, help="also write a flame graph here")
    a = p.parse_args(argv)
    if not PY_SPY.exists():
        p.error(f"{PY_SPY} not found: .venv/bin/pip install py-spy")
    if not 1 <= a.seconds <= 120:
        p.error("--seconds 1-120")
    run.raise_nofile()
    run.build()
    mode = next(m for m in run.MODES if m.name == a.mode)
    spec = next(s for s in run.SERVERS if s.name == a.server)
    tmp = Path(tempfile.mkdtemp(prefix="sockd-profile-"))
    raw_path = tmp / "raw.txt"
    try:
        running = run.start_server(spec, tmp / spec.name)
        try:
            load = threading.Thread(target=run.loadgen, args=(mode, running.addrs[(mode.service, mode.transport)],
                                                             a.conns, a.seconds + 1.5, 0.0))
            load.start()
            spy = ["--pid", str(running.proc.pid), "--duration", str(int(a.seconds)), "--rate", str(a.rate),
                   "--nonblocking"]
            subprocess.run([str(PY_SPY), "record", *spy, "--format", "raw", "--output", str(raw_path)],
                           check=True, capture_output=True)
            load.join()
            if a.svg:
                # A second, shorter pass for the picture; the table comes from the first.
                load = threading.Thread(target=run.loadgen, args=(mode, running.addrs[(mode.service, mode.transport)],
                                                                 a.conns, 4.5, 0.0))
                load.start()
                subprocess.run([str(PY_SPY), "record", *spy[:2], "--duration", "3", "--rate", str(a.rate),
                                "--nonblocking", "--output", str(a.svg)], check=True, capture_output=True)
                load.join()
        finally:
            run.stop_server(running)
        own, total, files, samples = top_functions(raw_path.read_text(), a.top)
        print(f"{spec.name} under {mode.name}: {samples} samples")
        print("\nself (top of stack):")
        for name, n in own:
            print(f"  {100 * n / samples:5.1f}%  {name}")
        print("\nself by file:")
        for name, n in files:
            print(f"  {100 * n / samples:5.1f}%  {name}")
        print("\ntotal (anywhere on the stack, lines of a function merged):")
        for name, n in total:
            print(f"  {100 * n / samples:5.1f}%  {name}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
