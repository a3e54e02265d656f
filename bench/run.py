"""Benchmark sockd against its peers in one run: throughput, latency, CPU and memory per connection.

    .venv/bin/python bench/run.py            # full run (about 10 minutes)
    .venv/bin/python bench/run.py --quick    # smoke check (under 2 minutes)

Builds the C load generator and C peers into bench/build/, starts every server once
(each on 127.0.0.1 ports chosen by the kernel, Unix sockets in a temporary
directory), and for each mode runs the servers that support it interleaved
(A, B, C, A, B, C ...) with the closed-loop load generator.  Medians of the
repetitions go to bench/results/latest.json and bench/results/latest.md; the
markdown table is printed.  Then each server is started afresh, alone, and holds
N idle TCP connections to measure memory per connection.  Every process started
here is stopped here (process groups, try/finally).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
BUILD = BENCH / "build"
RESULTS = BENCH / "results"
PEERS = BENCH / "peers"
VENV_BIN = REPO / ".venv" / "bin"
PYTHON = str(VENV_BIN / "python") if (VENV_BIN / "python").exists() else sys.executable
TWISTD = str(VENV_BIN / "twistd") if (VENV_BIN / "twistd").exists() else "twistd"
XINETD = shutil.which("xinetd") or ("/usr/sbin/xinetd" if Path("/usr/sbin/xinetd").exists() else None)
CLK_TCK = os.sysconf("SC_CLK_TCK")
LISTENING = re.compile(r"\b(ack|echo) listening on (tcp|udp|unix) (\S+)")
C_PROGRAMS = {"loadgen": BENCH / "loadgen.c", "epoll_server": PEERS / "epoll_server.c",
              "fork_server": PEERS / "fork_server.c"}


# --------------------------------------------------------------------------- modes


@dataclass(frozen=True)
class Mode:
    """One load pattern: which service and transport, and the load generator's arguments."""

    name: str
    service: str
    transport: str
    args: tuple[str, ...]
    what: str


MODES = [
    Mode("tcp-ack-new", "ack", "tcp", ("--pattern", "ack", "--new-conn"),
         'ack, a new TCP connection per message: connect, "hello\\n", read 18 bytes, close'),
    Mode("tcp-ack", "ack", "tcp", ("--pattern", "ack"),
         'ack, persistent TCP connections: "hello\\n", wait for the 18 bytes, repeat'),
    Mode("tcp-echo-64", "echo", "tcp", ("--pattern", "echo", "--size", "64"),
         "echo, persistent TCP, 64-byte messages read back in full"),
    Mode("tcp-echo-16k", "echo", "tcp", ("--pattern", "echo", "--size", "16384"),
         "echo, persistent TCP, 16 KiB messages read back in full"),
    Mode("udp-echo-64", "echo", "udp", ("--pattern", "echo", "--size", "64"),
         "echo, UDP, 64-byte datagrams, one in flight per socket, lost ones time out"),
    Mode("udp-ack", "ack", "udp", ("--pattern", "ack"),
         'ack, UDP: "hello\\n" answered by the 17 bytes "Got your message\\n"'),
    Mode("unix-ack", "ack", "unix", ("--pattern", "ack"),
         "ack, persistent Unix stream connections"),
    Mode("unix-echo-64", "echo", "unix", ("--pattern", "echo", "--size", "64"),
         "echo, persistent Unix stream connections, 64-byte messages"),
]


# --------------------------------------------------------------------------- servers

ALL_SIX = {(s, t) for s in ("ack", "echo") for t in ("tcp", "udp", "unix")}


def _six_listeners(tmp: Path, name: str, services: tuple[str, ...] = ("ack", "echo"),
                   transports: tuple[str, ...] = ("tcp", "udp", "unix")) -> list[str]:
    """C{--ack tcp:0:interface=127.0.0.1 --ack udp:... --ack unix:...} and the same for echo."""
    args: list[str] = []
    for service in services:
        for transport in transports:
            if transport == "unix":
                desc = f"unix:{tmp / f'{name}-{service}.sock'}"
            else:
                desc = f"{transport}:0:interface=127.0.0.1"
            args += [f"--{service}", desc]
    return args


@dataclass
class ServerSpec:
    """A server the benchmark can start: its command line and what it serves."""

    name: str
    supports: set[tuple[str, str]]
    command: Callable[[Path, tuple[str, ...], tuple[str, ...], bool], list[str]]
    note: str
    available: Callable[[], bool] = lambda: True
    #: Servers that print no "listening on" lines get fixed ports, written into their config.
    fixed_ports: bool = False
    is_sockd: bool = False


#: The twistd of an install of sockd as it was before (for an interleaved before/after), if given.
BEFORE_TWISTD = os.environ.get("SOCKD_BENCH_BEFORE_TWISTD", "")


def sockd_command(logging: bool, workers: int = 1, reactor: str | None = None, twistd: str | None = None
                  ) -> Callable[[Path, tuple[str, ...], tuple[str, ...], bool], list[str]]:
    """sockd with every defence at its default (loopback is exempt from per-source limits and the UDP budget)."""
    def command(tmp: Path, services: tuple[str, ...], transports: tuple[str, ...], memory: bool) -> list[str]:
        name = ("sockd-log" if logging else "sockd") + (f"-w{workers}" if workers > 1 else "") + (
            f"-{reactor}" if reactor else "")
        args = [twistd or TWISTD, *(["-r", reactor] if reactor else []), "-n", "--pidfile=", "sockd",
                *_six_listeners(tmp, name, services, transports), "--grace", "1"]
        if workers > 1:
            args += ["--workers", str(workers)]
        if not logging:
            args.append("--no-log-messages")
        if memory:
            args += ["--max-connections", "0", "--max-per-source", "0", "--idle-timeout", "3600"]
        return args

    return command


def python_peer(script: str, *extra: str) -> Callable[[Path, tuple[str, ...], tuple[str, ...], bool], list[str]]:
    def command(tmp: Path, services: tuple[str, ...], transports: tuple[str, ...], memory: bool) -> list[str]:
        return [PYTHON, str(PEERS / script), *extra, *_six_listeners(tmp, Path(script).stem, services, transports)]

    return command


def epoll_command(tmp: Path, services: tuple[str, ...], transports: tuple[str, ...], memory: bool) -> list[str]:
    return [str(BUILD / "epoll_server"), *_six_listeners(tmp, "epoll", services, transports)]


def fork_command(tmp: Path, services: tuple[str, ...], transports: tuple[str, ...], memory: bool) -> list[str]:
    return [str(BUILD / "fork_server"), "0", "4096"]


def xinetd_command(tmp: Path, services: tuple[str, ...], transports: tuple[str, ...], memory: bool) -> list[str]:
    port = free_port_pair()
    conf = tmp / "xinetd.conf"
    conf.write_text(XINETD_CONF.format(port=port, log=tmp / "xinetd.log"))
    (tmp / "xinetd.port").write_text(str(port))
    assert XINETD is not None
    return [XINETD, "-f", str(conf), "-dontfork", "-stayalive", "-pidfile", str(tmp / "xinetd.pid")]


def _uvloop_available() -> bool:
    return subprocess.run([PYTHON, "-c", "import uvloop"], capture_output=True).returncode == 0


#: xinetd's internal echo as Debian ships it (/etc/xinetd.d/echo: stream wait=no, dgram wait=yes), on a
#: high port bound to loopback, with xinetd's connection limits lifted so they do not shape the numbers.
XINETD_CONF = """\
defaults
{{
    instances = UNLIMITED
    per_source = UNLIMITED
    cps = 1000000 1
    log_type = FILE {log}
    log_on_success =
    log_on_failure =
}}
service echo
{{
    id = echo-stream
    type = INTERNAL UNLISTED
    socket_type = stream
    protocol = tcp
    port = {port}
    bind = 127.0.0.1
    wait = no
    user = root
    instances = UNLIMITED
    per_source = UNLIMITED
    cps = 1000000 1
}}
service echo
{{
    id = echo-dgram
    type = INTERNAL UNLISTED
    socket_type = dgram
    protocol = udp
    port = {port}
    bind = 127.0.0.1
    wait = yes
    user = root
}}
"""

SERVERS = [
    ServerSpec("sockd", ALL_SIX, sockd_command(True),
               "twistd sockd with its defaults: every message logged (to stdout, a file here), every defence on",
               is_sockd=True),
    ServerSpec("sockd-quiet", ALL_SIX, sockd_command(False), "the same with --no-log-messages", is_sockd=True),
    ServerSpec("sockd-w2", ALL_SIX, sockd_command(True, workers=2), "the defaults with --workers 2", is_sockd=True),
    ServerSpec("sockd-stock", ALL_SIX, sockd_command(True, reactor="epoll"),
               "the defaults on Twisted's own reactor and transports (twistd -r epoll)", is_sockd=True),
    ServerSpec("sockd-before", ALL_SIX, sockd_command(True, twistd=BEFORE_TWISTD),
               "sockd's defaults as it was before ($SOCKD_BENCH_BEFORE_TWISTD)", is_sockd=True,
               available=lambda: bool(BEFORE_TWISTD) and Path(BEFORE_TWISTD).exists()),
    ServerSpec("asyncio", ALL_SIX, python_peer("asyncio_server.py"), "stdlib asyncio Protocols"),
    ServerSpec("asyncio-w2", ALL_SIX, python_peer("asyncio_server.py", "--processes", "2"),
               "asyncio in 2 processes: TCP/UDP ports shared with SO_REUSEPORT, Unix sockets inherited"),
    ServerSpec("uvloop-w2", ALL_SIX, python_peer("asyncio_server.py", "--uvloop", "--processes", "2"),
               "the same on uvloop", available=_uvloop_available),
    ServerSpec("uvloop", ALL_SIX, python_peer("asyncio_server.py", "--uvloop"), "the same on uvloop",
               available=_uvloop_available),
    ServerSpec("twisted", ALL_SIX, python_peer("twisted_plain.py"),
               "plain Twisted: LineReceiver / Protocol / DatagramProtocol, epollreactor"),
    ServerSpec("epoll-c", ALL_SIX, epoll_command, "single-threaded C epoll server (the ceiling)"),
    ServerSpec("fork-c", {("ack", "tcp")}, fork_command,
               "the tutorial's fork-per-connection C server, answering every message"),
    ServerSpec("xinetd", {("echo", "tcp"), ("echo", "udp")}, xinetd_command,
               "xinetd internal echo (stream forks per connection)", available=lambda: XINETD is not None,
               fixed_ports=True),
]


def free_port_pair() -> int:
    """A port free for both TCP and UDP on 127.0.0.1 (for servers that cannot take port 0)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
            t.bind(("127.0.0.1", 0))
            port = t.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                try:
                    u.bind(("127.0.0.1", port))
                except OSError:
                    continue
        return port
    raise RuntimeError("no free port for both TCP and UDP")


@dataclass
class Running:
    """A started server: its process (leader of its own process group) and where it listens."""

    spec: ServerSpec
    proc: subprocess.Popen[bytes]
    tmp: Path
    addrs: dict[tuple[str, str], str] = field(default_factory=dict)

    @property
    def log(self) -> Path:
        return self.tmp / f"{self.spec.name}.out"


def start_server(spec: ServerSpec, tmp: Path, services: tuple[str, ...] = ("ack", "echo"),
                 transports: tuple[str, ...] = ("tcp", "udp", "unix"), memory: bool = False,
                 timeout: float = 30.0) -> Running:
    """Start C{spec}, wait until it listens everywhere asked, and return it."""
    tmp.mkdir(parents=True, exist_ok=True)
    wanted = {(s, t) for s in services for t in transports} & spec.supports
    argv = spec.command(tmp, services, transports, memory)
    out = open(tmp / f"{spec.name}.out", "wb")
    try:
        proc = subprocess.Popen(argv, cwd=tmp, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    finally:
        out.close()
    running = Running(spec, proc, tmp)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{spec.name} exited with {proc.returncode}: {running.log.read_text()[-2000:]}")
            if spec.fixed_ports:
                port = int((tmp / "xinetd.port").read_text())
                if _accepts(port):
                    running.addrs = {k: f"127.0.0.1:{port}" for k in wanted}
                    return running
            else:
                for m in LISTENING.finditer(running.log.read_text(errors="replace")):
                    running.addrs[(m.group(1), m.group(2))] = m.group(3)
                if wanted <= running.addrs.keys():
                    return running
            time.sleep(0.05)
        raise RuntimeError(f"{spec.name} did not listen within {timeout}s: {running.log.read_text()[-2000:]}")
    except BaseException:
        stop_server(running)
        raise


def _accepts(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        try:
            s.connect(("127.0.0.1", port))
        except OSError:
            return False
    return True


def stop_server(running: Running, grace: float = 5.0) -> None:
    """SIGTERM the server's process group, SIGKILL it if it lingers."""
    proc = running.proc
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)


# --------------------------------------------------------------------------- /proc accounting


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2:].split()


def descendants(pid: int) -> list[int]:
    """C{pid} and every live process below it."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields:
                children.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo.extend(children.get(p, []))
    return found


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of C{pid}, its live descendants, and the children it has reaped."""
    ticks = 0
    for i, p in enumerate(descendants(pid)):
        fields = _stat_fields(p)
        if fields:
            # after the ")": state=0 ppid=1 ... utime=11 stime=12 cutime=13 cstime=14
            ticks += int(fields[11]) + int(fields[12])
            if i == 0:
                ticks += int(fields[13]) + int(fields[14])
    return ticks / CLK_TCK


def memory_kib(pid: int) -> tuple[int, int, int]:
    """(RSS of the main process, summed PSS of the process tree, processes in the tree), KiB."""
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    pss = 0
    pids = descendants(pid)
    for p in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    pss += int(line.split()[1])
    return rss, pss, len(pids)


# --------------------------------------------------------------------------- load generator


def loadgen(mode: Mode, addr: str, conns: int, duration: float, warmup: float) -> dict[str, Any]:
    """One closed-loop run of the C load generator; its JSON line."""
    timeout_ms = 250 if mode.transport == "udp" else 2000
    argv = [str(BUILD / "loadgen"), "--transport", mode.transport, "--addr", addr, *mode.args,
            "--conns", str(conns), "--duration", str(duration), "--warmup", str(warmup),
            "--timeout-ms", str(timeout_ms)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=duration + warmup + 30)
    line = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else "{}"
    result = json.loads(line)
    if not result.get("ok"):
        raise RuntimeError(f"loadgen failed: {done.stdout} {done.stderr}")
    return result


def measure(running: Running, mode: Mode, conns: int, duration: float, warmup: float) -> dict[str, Any]:
    """Run C{mode} against C{running}, adding the server's CPU time per answered request."""
    addr = running.addrs[(mode.service, mode.transport)]
    before = tree_cpu_seconds(running.proc.pid)
    result = loadgen(mode, addr, conns, duration, warmup)
    time.sleep(0.15)  # let forked children exit and be reaped, so their CPU time is counted
    after = tree_cpu_seconds(running.proc.pid)
    span = duration + warmup
    # CPU over the whole run (warm-up included) per request over the whole run, estimated from the window's rate.
    requests = max(result["rate"] * span, 1.0)
    result["server_cpu_s"] = round(after - before, 3)
    result["server_cpu_us_per_req"] = round((after - before) / requests * 1e6, 2)
    result["client_cpu_us_per_req"] = round(result["client_cpu_s"] / requests * 1e6, 2)
    if running.proc.poll() is not None:
        raise RuntimeError(f"{running.spec.name} died during {mode.name}: {running.log.read_text()[-2000:]}")
    return result


# --------------------------------------------------------------------------- memory


def memory_test(spec: ServerSpec, tmp: Path, conns: int) -> dict[str, Any]:
    """Start C{spec} alone, hold C{conns} idle TCP connections, and measure what they cost."""
    service = "ack" if ("ack", "tcp") in spec.supports else "echo"
    running = start_server(spec, tmp, services=(service,), transports=("tcp",), memory=True)
    holder: subprocess.Popen[str] | None = None
    try:
        time.sleep(0.5)
        rss0, pss0, procs0 = memory_kib(running.proc.pid)
        args = ["--pattern", "ack"] if service == "ack" else ["--pattern", "echo", "--size", "64"]
        holder = subprocess.Popen(
            [str(BUILD / "loadgen"), "--idle", "--transport", "tcp", "--addr", running.addrs[(service, "tcp")],
             *args, "--conns", str(conns), "--duration", "90", "--hold", "300", "--timeout-ms", "30000"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True)
        assert holder.stdout is not None
        ready = json.loads(holder.stdout.readline() or "{}")
        time.sleep(1.0)
        rss1, pss1, procs1 = memory_kib(running.proc.pid)
        n = max(int(ready.get("connected", 0)), 1)
        return {
            "server": spec.name, "service": service, "wanted": conns, "connected": ready.get("connected", 0),
            "errors": ready.get("errors"), "connect_s": ready.get("seconds"),
            "rss_before_kib": rss0, "rss_after_kib": rss1, "pss_tree_before_kib": pss0, "pss_tree_after_kib": pss1,
            "processes_before": procs0, "processes_after": procs1,
            "rss_kib_per_conn": round((rss1 - rss0) / n, 2), "pss_tree_kib_per_conn": round((pss1 - pss0) / n, 2),
        }
    finally:
        if holder is not None:
            with contextlib.suppress(Exception):
                assert holder.stdin is not None
                holder.stdin.close()
            try:
                holder.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(holder.pid, signal.SIGKILL)
                holder.wait(5)
        stop_server(running)


# --------------------------------------------------------------------------- build, machine


def build() -> None:
    """Compile the C programs with gcc -O2 into bench/build/ when their source is newer."""
    BUILD.mkdir(exist_ok=True)
    for name, source in C_PROGRAMS.items():
        target = BUILD / name
        if target.exists() and target.stat().st_mtime >= source.stat().st_mtime:
            continue
        subprocess.run(["gcc", "-O2", "-Wall", "-o", str(target), str(source)], check=True)


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = subprocess.run(
        [PYTHON, "-c", "import sys, twisted; print(sys.version.split()[0]); print(twisted.__version__)"],
        capture_output=True, text=True).stdout.split()
    uv = subprocess.run([PYTHON, "-c", "import uvloop; print(uvloop.__version__)"], capture_output=True, text=True)
    xi = subprocess.run([XINETD, "-version"], capture_output=True, text=True) if XINETD else None
    gcc = subprocess.run(["gcc", "-dumpfullversion"], capture_output=True, text=True).stdout.strip()
    return {
        "nproc": os.cpu_count(), "cpu": cpu, "kernel": platform.release(), "os": _os_release(),
        "python": versions[0] if versions else "?", "twisted": versions[1] if len(versions) > 1 else "?",
        "uvloop": uv.stdout.strip() if uv.returncode == 0 else None,
        "xinetd": (xi.stdout + xi.stderr).split()[0] if xi and (xi.stdout + xi.stderr).split() else None,
        "gcc": gcc, "loadavg_start": os.getloadavg()[0],
    }


def _os_release() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    return platform.platform()


# --------------------------------------------------------------------------- report


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the repetitions of one (mode, server); errors are summed."""

    def med(key: str) -> float:
        return statistics.median(r[key] for r in runs)

    return {
        "reps": len(runs), "rate": med("rate"), "p50_us": med("p50_us"), "p99_us": med("p99_us"),
        "errors": sum(r["errors"] for r in runs), "timeouts": sum(r["timeouts"] for r in runs),
        "server_cpu_us_per_req": med("server_cpu_us_per_req"), "client_cpu_us_per_req": med("client_cpu_us_per_req"),
        "rates": [r["rate"] for r in runs],
    }


def _fmt_rate(x: float) -> str:
    return f"{x:,.0f}"


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if a and b else "–"


def markdown(report: dict[str, Any]) -> str:
    """The report as markdown tables."""
    m, s = report["machine"], report["settings"]
    out = [
        f"# sockd benchmark — {report['started']}",
        "",
        f"Machine: {m['nproc']} CPUs ({m['cpu']}), Linux {m['kernel']}, {m['os']}; Python {m['python']}, "
        f"Twisted {m['twisted']}, uvloop {m['uvloop'] or 'not installed'}, xinetd {m['xinetd'] or 'not installed'}, "
        f"gcc {m['gcc']}; load average {m['loadavg_start']:.2f} at start, {m.get('loadavg_end', 0):.2f} at end.",
        f"Settings: {s['conns']} connections (UDP: sockets) in a closed loop, {s['duration']} s measured after "
        f"{s['warmup']} s warm-up, {s['reps']} repetitions interleaved, medians shown; errors are summed over the "
        f"repetitions. Load generator and server share the {m['nproc']} CPUs.",
        "",
        "Ratios are sockd ÷ that server: for rate, above 1 means sockd answers more per second; for CPU per "
        "request, above 1 means sockd spends more server CPU per answer.",
        "",
        "## Throughput and latency",
        "",
        "| mode | server | rate/s | p50 µs | p99 µs | errors | server CPU µs/req | client CPU µs/req "
        "| sockd ÷ rate | sockd ÷ CPU/req |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    table = report["summary"]
    for mode in report["modes"]:
        rows = table.get(mode, {})
        base = rows.get("sockd")
        for server, row in rows.items():
            ratio_rate = _ratio(base["rate"], row["rate"]) if base and server != "sockd" else ""
            ratio_cpu = (_ratio(base["server_cpu_us_per_req"], row["server_cpu_us_per_req"])
                         if base and server != "sockd" else "")
            out.append(
                f"| {mode} | {server} | {_fmt_rate(row['rate'])} | {row['p50_us']:.0f} | {row['p99_us']:.0f} | "
                f"{row['errors']} | {row['server_cpu_us_per_req']:.1f} | {row['client_cpu_us_per_req']:.1f} | "
                f"{ratio_rate} | {ratio_cpu} |")
    peers = [s["name"] for s in report["servers"] if s["name"] != "sockd"]
    out += ["", "## sockd rate ÷ peer rate", "", "| mode | " + " | ".join(peers) + " |",
            "|---|" + "---:|" * len(peers)]
    for mode in report["modes"]:
        rows = table.get(mode, {})
        base = rows.get("sockd")
        cells = [(_ratio(base["rate"], rows[p]["rate"]) if base and p in rows else "") for p in peers]
        out.append(f"| {mode} | " + " | ".join(cells) + " |")
    out += _targets(report)
    if report.get("memory"):
        out += ["", f"## Memory per idle TCP connection ({report['settings']['mem_conns']} connections)", "",
                "RSS is the server's main process; PSS sums the process tree (forking servers), each after one "
                "round trip per connection. Kernel socket buffers are not included.", "",
                "| server | service | connected | RSS before MiB | RSS after MiB | KiB/conn (RSS) "
                "| KiB/conn (PSS tree) | processes | sockd ÷ server |",
                "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        base_mem = next((r for r in report["memory"] if r["server"] == "sockd"), None)
        for r in report["memory"]:
            if "error" in r:
                out.append(f"| {r['server']} | – | failed: {r['error'][:80]} | | | | | | |")
                continue
            ratio = (_ratio(base_mem["pss_tree_kib_per_conn"], r["pss_tree_kib_per_conn"])
                     if base_mem and r["server"] != "sockd" else "")
            out.append(
                f"| {r['server']} | {r['service']} | {r['connected']} | {r['rss_before_kib'] / 1024:.1f} | "
                f"{r['rss_after_kib'] / 1024:.1f} | {r['rss_kib_per_conn']:.2f} | {r['pss_tree_kib_per_conn']:.2f} | "
                f"{r['processes_after']} | {ratio} |")
    out += ["", "## Modes", ""] + [f"- **{mo.name}**: {mo.what}" for mo in MODES if mo.name in report["modes"]]
    out += ["", "## Servers", ""] + [f"- **{sv['name']}**: {sv['note']}" for sv in report["servers"]]
    if report.get("failures"):
        out += ["", "## Failures", ""] + [f"- {f}" for f in report["failures"]]
    return "\n".join(out) + "\n"


def _targets(report: dict) -> list[str]:
    """The targets sockd is held to, as measured in this run: defaults vs asyncio, quiet vs uvloop."""
    table = report["summary"]
    out = ["", "## Targets", "",
           "sockd with its defaults (messages logged) against stdlib asyncio (which logs nothing): rate ratio "
           "(≥ 1 met) and CPU per request ratio (≤ 1 met); sockd --no-log-messages against uvloop, CPU per "
           "request (≤ 1 met); what a logged message adds (sockd − sockd-quiet, µs of server CPU).", "",
           "| mode | sockd ÷ asyncio rate | sockd ÷ asyncio CPU/req | sockd-quiet ÷ uvloop CPU/req "
           "| logged message µs |",
           "|---|---:|---:|---:|---:|"]
    for mode in report["modes"]:
        rows = table.get(mode, {})
        sockd, quiet, aio, uv = (rows.get(n) for n in ("sockd", "sockd-quiet", "asyncio", "uvloop"))
        cpu = "server_cpu_us_per_req"
        cells = [
            _ratio(sockd["rate"], aio["rate"]) if sockd and aio else "",
            _ratio(sockd[cpu], aio[cpu]) if sockd and aio else "",
            _ratio(quiet[cpu], uv[cpu]) if quiet and uv else "",
            f"{sockd[cpu] - quiet[cpu]:+.1f}" if sockd and quiet else "",
        ]
        out.append(f"| {mode} | " + " | ".join(cells) + " |")
    return out


# --------------------------------------------------------------------------- main


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


@contextlib.contextmanager
def servers_running(specs: list[ServerSpec], tmp: Path) -> Iterator[dict[str, Running]]:
    """Start every server in C{specs}; stop all of them however the block ends."""
    running: dict[str, Running] = {}
    try:
        for spec in specs:
            running[spec.name] = start_server(spec, tmp / spec.name)
        yield running
    finally:
        for r in running.values():
            stop_server(r)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Benchmark sockd against its peers.")
    p.add_argument("--quick", action="store_true", help="1 repetition of 1 s per run, 1000 idle connections")
    p.add_argument("--reps", type=int, help="repetitions per (mode, server) [3; quick 1]")
    p.add_argument("--duration", type=float, help="measured seconds per run [2.0; quick 0.8]")
    p.add_argument("--warmup", type=float, help="warm-up seconds per run, not measured [0.5; quick 0.2]")
    p.add_argument("--conns", type=int, default=32, help="concurrent connections / UDP sockets [32]")
    p.add_argument("--mem-conns", type=int, help="idle connections for the memory test [5000; quick 1000]")
    p.add_argument("--modes", help="comma-separated modes to run [all]: " + ",".join(m.name for m in MODES))
    p.add_argument("--servers", help="comma-separated servers [all]: " + ",".join(s.name for s in SERVERS))
    p.add_argument("--no-memory", action="store_true", help="skip the idle-connection memory test")
    p.add_argument("--out", type=Path, default=RESULTS, help="directory for latest.json and latest.md")
    a = p.parse_args(argv)
    a.reps = a.reps or (1 if a.quick else 3)
    a.duration = a.duration or (0.8 if a.quick else 2.0)
    a.warmup = a.warmup if a.warmup is not None else (0.2 if a.quick else 0.5)
    a.mem_conns = a.mem_conns or (1000 if a.quick else 5000)
    if not (1 <= a.reps <= 20 and 0 < a.duration <= 60 and 1 <= a.conns <= 1024 and 1 <= a.mem_conns <= 15000):
        p.error("reps 1-20, duration 0-60 s, conns 1-1024, mem-conns 1-15000")
    return a


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    raise_nofile()
    build()
    modes = [m for m in MODES if not args.modes or m.name in args.modes.split(",")]
    wanted = args.servers.split(",") if args.servers else [s.name for s in SERVERS]
    specs = [s for s in SERVERS if s.name in wanted and s.available()]
    skipped = [s.name for s in SERVERS if s.name in wanted and s not in specs]
    report: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": machine(),
        "settings": {"conns": args.conns, "duration": args.duration, "warmup": args.warmup, "reps": args.reps,
                     "mem_conns": args.mem_conns, "quick": args.quick, "argv": sys.argv[1:]},
        "servers": [{"name": s.name, "note": s.note} for s in specs], "modes": [m.name for m in modes],
        "runs": [], "summary": {}, "memory": [], "failures": [f"{n}: not installed" for n in skipped],
    }
    t0 = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="sockd-bench-"))
    try:
        with servers_running(specs, tmp) as running:
            for mode in modes:
                order = [r for r in running.values() if (mode.service, mode.transport) in r.spec.supports]
                per: dict[str, list[dict[str, Any]]] = {r.spec.name: [] for r in order}
                for rep in range(args.reps):
                    for r in order:
                        try:
                            result = measure(r, mode, args.conns, args.duration, args.warmup)
                        except Exception as e:  # one failed run must not lose the others
                            report["failures"].append(f"{mode.name}/{r.spec.name} rep {rep + 1}: {e}")
                            print(f"  FAILED {mode.name} {r.spec.name}: {e}", file=sys.stderr)
                            continue
                        result.update(mode=mode.name, server=r.spec.name, rep=rep + 1)
                        report["runs"].append(result)
                        per[r.spec.name].append(result)
                        print(f"  {mode.name:13} {r.spec.name:10} rep {rep + 1}: {result['rate']:>10,.0f}/s  "
                              f"p50 {result['p50_us']:>6.0f} µs  p99 {result['p99_us']:>7.0f} µs  "
                              f"errors {result['errors']:>5}  server CPU {result['server_cpu_us_per_req']:6.1f} µs/req",
                              file=sys.stderr, flush=True)
                report["summary"][mode.name] = {name: summarise(rs) for name, rs in per.items() if rs}
        if not args.no_memory:
            for spec in specs:
                if spec.name == "sockd-quiet":
                    continue  # the same process as sockd when no messages flow
                try:
                    result = memory_test(spec, tmp / f"mem-{spec.name}", args.mem_conns)
                except Exception as e:
                    report["failures"].append(f"memory/{spec.name}: {e}")
                    report["memory"].append({"server": spec.name, "error": str(e)})
                    continue
                report["memory"].append(result)
                print(f"  memory        {spec.name:10} {result['connected']} conns: "
                      f"{result['rss_kib_per_conn']:.2f} KiB/conn RSS, {result['pss_tree_kib_per_conn']:.2f} KiB/conn "
                      f"PSS tree", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report["seconds"] = round(time.monotonic() - t0, 1)
    report["machine"]["loadavg_end"] = os.getloadavg()[0]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "latest.json").write_text(json.dumps(report, indent=1) + "\n")
    text = markdown(report) + f"\nTotal time {report['seconds']} s.\n"
    (args.out / "latest.md").write_text(text)
    print(text)
    return 1 if len(report["failures"]) > len(skipped) else 0


if __name__ == "__main__":
    sys.exit(main())
