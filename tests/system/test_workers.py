"""--workers N: processes sharing the listening sockets, supervised, with limits and metrics kept whole."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import time
import urllib.request
from dataclasses import replace
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sockd import __version__
from sockd.config.settings import Settings, workerCount
from sockd.errors import StartupError
from sockd.observe.workermetrics import sumExpositions
from sockd.runtime.workers.child import shareLimits
from sockd.runtime.workers.spec import InheritedListener, ListenerUpdate, MessagePipe, WorkerSpec
from tests.daemon import LISTENING, children, connect, recvAll, recvExactly, udpExchange, waitFor


def ack(address) -> bytes:
    with connect(address) as s:
        s.sendall(b"hello\n")
        return recvExactly(s, 18)


def scrape(address) -> dict:
    with urllib.request.urlopen(f"http://{address[0]}:{address[1]}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def test_share_never_adds_up_to_more_than_the_whole():
    s = shareLimits(Settings(max_connections=10, max_per_source=5, connection_rate=20.0, udp_budget=100.0), 3)
    assert (s.max_connections, s.max_per_source) == (3, 1)
    assert s.connection_rate * 3 == 20.0 and s.udp_budget * 3 == 100.0
    assert shareLimits(Settings(max_per_source=0), 4).max_per_source == 0  # unlimited stays unlimited
    assert workerCount("auto") == len(os.sched_getaffinity(0))


def test_a_worker_spec_and_a_listener_update_go_through_json_unchanged():
    spec = WorkerSpec(index=1, count=2, listeners=(InheritedListener("ack", "tcp:0", 7),), metrics="/m.sock",
                      control=9, messages=MessagePipe(8, journal=True))
    assert WorkerSpec.fromJSON(spec.toJSON()) == spec
    assert WorkerSpec.fromJSON(replace(spec, messages=None).toJSON()).messages is None
    update = ListenerUpdate(serve=(("ack", "tcp:0"), ("echo", "unix:e")), adopt=(("echo", "unix:e"),))
    assert ListenerUpdate.fromJSON(update.toJSON()) == update


def test_a_malformed_worker_spec_is_refused_naming_what_is_wrong():
    good = json.loads(WorkerSpec(0, 1, (), "/m", 5).toJSON())
    for bad, said in [("{", "not JSON"), ("[]", "not a JSON object"), ({**good, "count": "2"}, "'count' is str"),
                      ({**good, "index": 3}, "index 3 is not below count 1"),
                      ({**good, "listeners": [["ack", "tcp:0"]]}, "[service, description, fd]"),
                      ({k: v for k, v in good.items() if k != "control"}, "no 'control'"),
                      ({**good, "messages": {"fd": 3, "journal": 1}}, "'journal' is int")]:
        with pytest.raises(StartupError, match=re.escape(said)):
            WorkerSpec.fromJSON(bad if isinstance(bad, str) else json.dumps(bad))


def test_sum_of_expositions_adds_samples_with_the_same_labels():
    one = '# TYPE sockd_answers counter\nsockd_answers_total{service="ack",transport="tcp"} 2.0\n'
    two = '# TYPE sockd_answers counter\nsockd_answers_total{service="ack",transport="tcp"} 3.0\n'
    families = list(text_string_to_metric_families(sumExpositions([one, two]).decode()))
    assert [(s.name, s.value) for s in families[0].samples] == [("sockd_answers_total", 5.0)]


def test_workers_serve_share_sockets_restart_and_stop(daemon, tmp_path):
    d = daemon("--workers", "2", "--ack", "tcp:0:interface=127.0.0.1", "--ack", "udp:0:interface=127.0.0.1",
               "--ack", "unix:ack.sock", "--metrics", "tcp:0:interface=127.0.0.1", expect=4)
    workers = waitFor(lambda: children(d.pid) if len(children(d.pid)) == 2 else None, "two workers")
    time.sleep(1.0)  # both workers have adopted the sockets
    assert (tmp_path / "ack.sock").stat().st_mode & 0o777 == 0o660  # adopting never widens the mode
    tcp, udp = d.address("ack", "tcp"), d.address("ack", "udp")
    answers = [ack(tcp) for _ in range(20)]
    assert answers == [b"I got your message"] * 20
    assert udpExchange(udp, b"hi") == b"Got your message\n"
    with connect(tcp) as held:  # an established connection, to check the kill below only hits one worker
        held.sendall(b"x\n")
        assert recvExactly(held, 18) == b"I got your message"
        samples = waitFor(lambda: (s := scrape(d.address("metrics", "tcp"))) and
                          s.get(("sockd_connections_accepted_total", (("service", "ack"), ("transport", "tcp"))))
                          == 21 and s, "metrics from both workers add up")
        assert samples[("sockd_connections_active", (("service", "ack"), ("transport", "tcp")))] == 1

    assert samples[("sockd_build_info", (("version", __version__),))] == 1  # the parent's, not one per worker
    assert samples[("process_cpu_seconds_total", ())] > 0  # the parent's own process
    assert samples[("sockd_workers_process_cpu_seconds_total", ())] > 0  # the workers', summed
    assert "Starting factory" not in d.log()  # a scrape of the workers is not logged at info

    victim = sorted(workers)[0]
    os.kill(victim, signal.SIGKILL)
    replaced = waitFor(lambda: (c := children(d.pid)) and len(c) == 2 and victim not in c and c, "a new worker")
    assert replaced - workers
    assert "restarting it" in d.log()
    waitFor(lambda: all(ack(tcp) == b"I got your message" for _ in range(5)), "still serving")
    # A counter never goes backwards: the killed worker's counts are carried in the parent's totals.
    accepted = ("sockd_connections_accepted_total", (("service", "ack"), ("transport", "tcp")))
    assert scrape(d.address("metrics", "tcp"))[accepted] >= 21 + 5

    assert d.stop() == 0
    assert not (tmp_path / "ack.sock").exists()
    for pid in replaced:
        assert not os.path.exists(f"/proc/{pid}") or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()


def test_per_source_limit_is_not_multiplied_by_workers(daemon):
    d = daemon("--workers", "2", "--ack", "tcp:0:interface=127.0.0.1", "--max-per-source", "2",
               "--exempt", "none")
    waitFor(lambda: len(children(d.pid)) == 2, "two workers")
    address = d.address("ack", "tcp")
    time.sleep(1.0)  # both workers accepting
    held, served = [], 0
    try:
        for _ in range(6):
            s = connect(address)
            held.append(s)
            s.sendall(b"hi\n")
            try:
                if recvExactly(s, 18) == b"I got your message":
                    served += 1
            except (ConnectionResetError, TimeoutError):
                pass
    finally:
        for s in held:
            s.close()
    assert 1 <= served <= 2


def test_reload_reaches_workers(daemon, tmp_path):
    config = tmp_path / "sockd.toml"
    config.write_text('[listen]\nack = ["tcp:0:interface=127.0.0.1"]\n')
    d = daemon("--workers", "2", "--config", str(config), "--exempt", "none", expect=1)
    waitFor(lambda: "all 2 workers ready" in d.log(), "both workers ready:\n" + d.log())
    address = d.address("ack", "tcp")
    assert ack(address) == b"I got your message"
    config.write_text('deny = ["127.0.0.1/32"]\n[listen]\nack = ["tcp:0:interface=127.0.0.1"]\n')
    os.kill(d.pid, signal.SIGHUP)
    waitFor(lambda: d.log().count("reloaded") >= 3, "parent and both workers reloaded:\n" + d.log())
    for _ in range(6):
        with connect(address) as s:
            assert recvAll(s) == b""


def test_sighup_while_workers_start_reaches_them_without_killing_them(daemon, tmp_path):
    """A worker still starting would die of SIGHUP's default action: the parent holds it back until ready."""
    config = tmp_path / "sockd.toml"
    config.write_text('[listen]\nack = ["tcp:0:interface=127.0.0.1"]\n')
    d = daemon("--workers", "2", "--config", str(config), expect=1)
    os.kill(d.pid, signal.SIGHUP)  # at once: the workers are still importing Twisted
    waitFor(lambda: d.log().count("reloaded") >= 3, "parent and both workers reloaded:\n" + d.log())
    assert "restarting it" not in d.log()
    assert len(children(d.pid)) == 2
    assert ack(d.address("ack", "tcp")) == b"I got your message"


def test_workers_message_lines_reach_the_parents_log_as_lines_not_events(daemon):
    """Each worker formats its message lines and pipes them to the parent, which copies them into its log."""
    d = daemon("--workers", "2", "--ack", "tcp:0:interface=127.0.0.1", "--ack", "unix:ack.sock", expect=2)
    workers = waitFor(lambda: children(d.pid) if len(children(d.pid)) == 2 else None, "two workers")
    time.sleep(1.0)
    for pid in workers:  # each worker writes its lines to a pipe of its own, named in its description
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        spec = json.loads(argv[argv.index(b"--worker") + 1])
        assert os.readlink(f"/proc/{pid}/fd/{spec['messages']['fd']}").startswith("pipe:")
    for i in range(30):
        with connect(d.address("ack", "tcp")) as s:
            s.sendall(b"from worker %d \x1b[2J\n" % i)
            assert recvExactly(s, 18) == b"I got your message"
    lines = waitFor(lambda: (found := [line for line in d.log().splitlines() if "Here is the message: from worker"
                                       in line]) and len(found) == 30 and found, "30 message lines:\n" + d.log())
    # twistd's text format, escaped by the worker; not a relayed event ("worker N: ...", fields).
    assert all(line.split(" ", 1)[1].startswith("[sockd.messages#info] Here is the message: from worker ")
               and line.endswith(" \\x1b[2J") for line in lines), lines[:3]
    assert sorted(int(line.split("from worker ")[1].split()[0]) for line in lines) == list(range(30))
    assert d.stop() == 0


def test_a_workers_message_lines_cut_by_the_pipe_are_joined_before_they_reach_the_sink():
    from sockd.runtime.workers.supervisor import WorkerProcess

    class Sink:
        def __init__(self) -> None:
            self.chunks: list[bytes] = []

        def lines(self, data: bytes) -> None:
            self.chunks.append(data)

    class Supervisor:
        class reactor:
            @staticmethod
            def seconds() -> float:
                return 0.0

    sink = Sink()
    worker = WorkerProcess(Supervisor(), 0, messagesFd=7, messageSink=sink)  # type: ignore[arg-type]
    worker.childDataReceived(7, b"one\ntw")
    worker.childDataReceived(7, b"o\nthr")
    worker.childDataReceived(7, b"ee\nfour\n")
    assert sink.chunks == [b"one\n", b"two\n", b"three\nfour\n"]


def echoes(sock, payload: bytes) -> bool:
    """Whether an established echo connection still answers (False if it was closed or reset)."""
    try:
        sock.sendall(payload)
        return recvExactly(sock, len(payload)) == payload
    except OSError:
        return False


def test_a_reload_that_changes_the_listeners_keeps_every_established_connection(daemon, tmp_path):
    """SIGHUP with a new [listen]: workers adopt the added socket, close the removed one, keep their connections."""
    config = tmp_path / "sockd.toml"
    config.write_text('[listen]\necho = ["tcp:0:interface=127.0.0.1", "unix:echo.sock"]\n'
                      'ack = ["tcp:0:interface=127.0.0.1"]\n')
    d = daemon("--workers", "2", "--config", str(config), "--exempt", "none", "--grace", "1", expect=3)
    waitFor(lambda: "all 2 workers ready" in d.log(), "both workers ready:\n" + d.log())
    workers = children(d.pid)
    tcp, removed = d.address("echo", "tcp"), d.address("ack", "tcp")
    held = []
    try:
        for serving in sorted(workers):
            # The kernel may hand every connection to one worker: stop the others, so each one holds some.
            others = workers - {serving}
            for pid in others:
                os.kill(pid, signal.SIGSTOP)
            try:
                mine = []
                for _ in range(4):
                    mine.append(connect(tcp))
                    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    sock.settimeout(5.0)
                    sock.connect(str(tmp_path / "echo.sock"))
                    mine.append(sock)
                held += mine
                assert all(echoes(s, b"before %d\n" % i) for i, s in enumerate(mine))  # served by `serving`
            finally:
                for pid in others:
                    os.kill(pid, signal.SIGCONT)
        config.write_text('[listen]\necho = ["tcp:0:interface=127.0.0.1", "unix:echo.sock"]\n'
                          'daytime = ["tcp:0:interface=127.0.0.2"]\n')
        os.kill(d.pid, signal.SIGHUP)
        waitFor(lambda: "all 2 workers reloaded" in d.log(), "both workers reloaded:\n" + d.log())
        added = LISTENING.findall(d.log())[-1]
        assert added[:2] == ("daytime", "tcp"), added
        host, _, port = added[2].rpartition(":")
        for _ in range(6):  # each worker accepts on the added socket (the kernel picks which)
            with connect((host, int(port))) as s:
                assert recvAll(s).endswith(b"\r\n")
        try:
            connect(removed).close()
            refused = False
        except ConnectionRefusedError:
            refused = True
        assert refused, f"{removed} still accepts after it left [listen]"
        alive = [echoes(s, b"after %d\n" % i) for i, s in enumerate(held)]
        assert all(alive), f"{alive.count(False)}/{len(alive)} established connections dropped:\n{d.log()}"
        assert "restarting it" not in d.log() and children(d.pid) == workers
    finally:
        for s in held:
            s.close()


def test_faults_switched_by_a_reload_reach_every_worker_on_the_same_socket(daemon, tmp_path):
    """A reload that changes only a listener's faults keeps its socket under --workers: each worker adopts it anew,
    with the new faults for new connections, while the connections already open keep going."""
    config = tmp_path / "sockd.toml"
    plain = '[listen]\necho = ["tcp:0:interface=127.0.0.1"]\n'
    config.write_text(plain)
    d = daemon("--workers", "2", "--config", str(config), "--exempt", "none", expect=1)
    waitFor(lambda: "all 2 workers ready" in d.log(), "both workers ready:\n" + d.log())
    workers = children(d.pid)
    address = d.address("echo", "tcp")

    def roundTrip() -> float:
        with connect(address) as s:
            started = time.monotonic()
            assert echoes(s, b"timed\n")
            return time.monotonic() - started

    held = connect(address)
    try:
        assert echoes(held, b"before\n")
        for round, (text, slow) in enumerate([(plain.replace('1"]', '1:delay=300ms"]'), True), (plain, False)], 1):
            config.write_text(text)
            os.kill(d.pid, signal.SIGHUP)
            waitFor(lambda n=round: d.log().count("all 2 workers reloaded") >= n, "both workers reloaded:\n" + d.log())
            times = [roundTrip() for _ in range(6)]  # the kernel spreads them over both workers
            if slow:
                assert min(times) >= 0.29, times
            else:
                assert max(times) < 0.29, times
            assert echoes(held, b"still here %d\n" % round)
        assert d.address("echo", "tcp") == address and "restarting it" not in d.log()
        assert children(d.pid) == workers
    finally:
        held.close()
