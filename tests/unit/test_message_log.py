"""The default message log: exact lines, one write per reactor turn, a broken log never stops sockd.

Unit tests of L{sockd.observe.log.sink} and L{sockd.observe.log.setup} with an
injected clock, C{task.Clock} as the reactor and outputs that record or fail;
the whole daemon is in test_log_daemon.py.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import io
import json
import os
import signal
from collections.abc import Iterator
from typing import Any

import pytest
from twisted.application.service import Application, IService
from twisted.internet import task
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.logger import (
    ILogObserver,
    LogLevel,
    LogPublisher,
    formatEvent,
    formatEventAsClassicLogText,
    formatTime,
)
from twisted.python.failure import Failure
from twisted.scripts.twistd import ServerOptions

from sockd.config.settings import SIZE, BadValue
from sockd.observe.log import limit
from sockd.observe.log import messages as messagelog
from sockd.observe.log import sink as logsink
from sockd.observe.log.files import CappedLogFile
from sockd.observe.log.level import LogState, configure, parseLevel
from sockd.observe.log.limit import OTHERS, UNIX, MessageLimiter, sourceOf
from sockd.observe.log.messages import MessageLog, MessageLogging, messageText, withoutLineEnd
from sockd.observe.log.observers import jsonLogger, textLogger
from sockd.observe.log.setup import plan, twistdDestination
from sockd.observe.log.sink import PRIORITIES, FdOutput, LineSink, SinkObserver, isJournal
from sockd.observe.logsafe import escape
from sockd.runtime.daemon import SockdService


class Recorder:
    """An output that keeps every write (or fails with C{error} while it is set)."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.error: OSError | None = None

    def write(self, data: bytes) -> None:
        if self.error is not None:
            raise self.error
        self.writes.append(data)

    def text(self) -> str:
        return b"".join(self.writes).decode()


class Now:
    """An injected wall clock."""

    def __init__(self, when: float) -> None:
        self.when = when

    def __call__(self) -> float:
        return self.when


def makeSink(clock: Any = None, now: float = 1_700_000_000.25, **kw: Any) -> tuple[LineSink, Recorder, Any, Now]:
    output = Recorder()
    clock = clock or task.Clock()
    wall = Now(now)
    return LineSink(output, clock, now=wall, **kw), output, clock, wall


@contextlib.contextmanager
def capturedEvents(events: list[dict[str, Any]]) -> Iterator[None]:
    """The message log's structured events go to C{events} meanwhile."""
    original = messagelog.log.observer
    messagelog.log.observer = LogPublisher(events.append)
    try:
        yield
    finally:
        messagelog.log.observer = original


def attached(sink: LineSink, level: Any = LogLevel.info) -> MessageLogging:
    """Message logging through C{sink}, as the assembly hands it to every message log."""
    return MessageLogging(sink, level)


# -- the lines --------------------------------------------------------------------------------------------------


def test_message_lines_are_twistds_own_lines_byte_for_byte():
    sink, output, clock, wall = makeSink()
    log = MessageLog("ack", logging=attached(sink))
    log.stream(b"hi there\r\n", None)
    log.stream(b"a\x1b[2J\\ \xff\xe2\x80\xa8\n", None)
    log.datagram(b"dgram\n", ("192.0.2.1", 5))
    clock.advance(0)
    stamp = formatTime(1_700_000_000)
    assert output.writes == [(
        f"{stamp} [sockd.messages#info] Here is the message: hi there\n"
        f"{stamp} [sockd.messages#info] Here is the message: a\\x1b[2J\\\\ \\xff\\u2028\n"
        f"{stamp} [sockd.messages#info] Received a datagram: dgram\n"
    ).encode()]
    # The very line twistd's textFileLogObserver writes for the structured event of the same message.
    events: list[dict[str, Any]] = []
    original = messagelog.log.observer
    messagelog.log.observer = LogPublisher(events.append)
    try:
        MessageLog("ack", logging=MessageLogging()).stream(b"hi there\r\n", IPv4Address("TCP", "192.0.2.1", 5))
    finally:
        messagelog.log.observer = original
    events[0]["log_time"] = wall.when
    assert formatEventAsClassicLogText(events[0]) == output.text().splitlines(keepends=True)[0]


@pytest.mark.parametrize("message", [b"", b"\n", b"\r\n", b"\r\r\n", b"a\n\n", b"\\", b"x\r", b"plain words\n",
                                     b"a\\\n", b"\ta\n", b"\x7f\x00", b"\xc3\xa9", bytes(range(256))])
def test_message_text_is_todays_escape(message: bytes):
    assert messageText(message) == escape(withoutLineEnd(message))
    sink, output, clock, _ = makeSink()
    sink.message(b" tail: ", message)
    clock.advance(0)
    assert output.text().split(" tail: ", 1)[1] == escape(withoutLineEnd(message)) + "\n"


def test_a_batch_mixing_plain_and_escaped_messages_keeps_order_and_escapes_each():
    messages = [b"plain\n", b"a\nb\n", b"no line end", b"again plain\n", b"back\\slash\n", b"\xff\n", b"\n",
                b"crlf\r\n", b"last\n"]
    sink, output, clock, _ = makeSink()
    log = MessageLog("ack", logging=attached(sink))
    for message in messages:
        log.stream(message, None)
    clock.advance(0)
    assert len(output.writes) == 1
    texts = [line.split("Here is the message: ", 1)[1] for line in output.text().split("\n")[:-1]]
    assert texts == [escape(withoutLineEnd(m)) for m in messages]


def test_timestamp_is_formatted_once_per_second_and_right_across_the_boundary(monkeypatch):
    calls: list[float] = []

    def counting(when: float | None, *args: Any) -> str:
        calls.append(when)  # type: ignore[arg-type]
        return formatTime(when, *args)

    monkeypatch.setattr(logsink, "formatTime", counting)
    sink, output, clock, wall = makeSink()
    log = MessageLog("ack", logging=attached(sink))
    times = [1_700_000_000.0, 1_700_000_000.5, 1_700_000_000.999999, 1_700_000_001.0, 1_700_000_001.7,
             1_699_999_999.9]  # the last one: the wall clock stepped back
    for when in times:
        wall.when = when
        log.stream(b"m\n", None)
    clock.advance(0)
    stamps = [line.split(" ", 1)[0] for line in output.text().splitlines()]
    assert stamps == [formatTime(int(t)) for t in times]
    assert calls == [1_700_000_000.0, 1_700_000_001.0, 1_699_999_999.0]


# -- when lines are written -------------------------------------------------------------------------------------


def test_a_quiet_log_is_written_at_the_end_of_the_turn_a_busy_one_every_interval():
    sink, output, clock, _ = makeSink()
    log = MessageLog("ack", logging=attached(sink))
    for i in range(3):
        log.stream(b"m%d\n" % i, None)
    assert output.writes == [] and len(clock.getDelayedCalls()) == 1
    clock.advance(0)  # the end of this reactor turn
    assert len(output.writes) == 1 and output.text().count("\n") == 3
    assert clock.getDelayedCalls() == []
    clock.advance(0)
    assert len(output.writes) == 1  # nothing new: no empty write, no timer left behind
    # Busy: lines logged less than `interval` after the last write wait for the interval's end.
    clock.advance(sink.interval / 2)
    log.datagram(b"again", None)
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(0)
    assert len(output.writes) == 1
    clock.advance(sink.interval / 2)
    assert len(output.writes) == 2 and output.writes[1].endswith(b"Received a datagram: again\n")
    # Quiet again: the next line goes out at the end of its turn.
    clock.advance(sink.interval)
    log.stream(b"later\n", None)
    clock.advance(0)
    assert len(output.writes) == 3 and clock.getDelayedCalls() == []


def test_a_long_turn_writes_every_max_lines():
    sink, output, clock, _ = makeSink()
    sink.maxLines = 10
    log = MessageLog("ack", logging=attached(sink))
    for _ in range(25):
        log.stream(b"m\n", None)
    assert [w.count(b"\n") for w in output.writes] == [10, 10]
    clock.advance(0)
    assert sum(w.count(b"\n") for w in output.writes) == 25


def test_lines_outside_the_reactor_run_are_written_at_once():
    class Stopped:
        running = False

        def seconds(self) -> float:
            return 0.0

        def callLater(self, *a: Any) -> None:
            raise AssertionError("nobody would run it")

    sink, output, _, _ = makeSink(clock=Stopped())
    MessageLog("ack", logging=attached(sink)).stream(b"early\n", None)
    assert output.text().endswith("Here is the message: early\n")


def test_events_are_written_at_once_after_the_messages_before_them():
    sink, output, clock, _ = makeSink()
    MessageLog("ack", logging=attached(sink)).stream(b"first\n", None)
    SinkObserver(sink)({"log_level": LogLevel.info, "log_namespace": "n", "log_format": "closing idle",
                        "log_time": 1.0})
    assert len(output.writes) == 1
    assert output.text().endswith("Here is the message: first\n" + formatTime(1.0) + " [n#info] closing idle\n")
    clock.advance(1)
    assert len(output.writes) == 1  # the turn's flush finds nothing left


def test_close_writes_what_is_left():
    sink, output, clock, _ = makeSink()
    MessageLog("ack", logging=attached(sink)).stream(b"last words\n", None)
    sink.close()
    assert output.text().endswith("Here is the message: last words\n")


# -- a log that cannot be written -------------------------------------------------------------------------------


def test_a_full_disk_drops_lines_reports_once_and_recovers():
    read, write = os.pipe()
    try:
        sink, output, clock, _ = makeSink(errorFd=write)
        log = MessageLog("ack", logging=attached(sink))
        output.error = OSError(errno.ENOSPC, "No space left on device")
        for turn in range(3):
            log.stream(b"lost %d\n" % turn, None)
            clock.advance(sink.interval)  # must not raise
        assert sink.dropped == 3 and output.writes == []
        output.error = None
        log.stream(b"kept\n", None)
        clock.advance(sink.interval)
        assert output.text().endswith("Here is the message: kept\n")
        complaints = os.read(read, 65536).decode().splitlines()
        assert complaints == [
            "sockd: cannot write the log ([Errno 28] No space left on device); dropping log lines, serving on",
            "sockd: the log is writable again; 3 lines were dropped",
        ]
    finally:
        os.close(read)
        os.close(write)


def test_dev_full_never_raises():
    with open("/dev/full", "wb", buffering=0) as full, open(os.devnull, "wb") as null:
        sink, _, clock, _ = makeSink(errorFd=null.fileno())
        sink.output = FdOutput(full.fileno())
        log = MessageLog("ack", logging=attached(sink))
        for _ in range(5):
            log.stream(b"m\n", None)
            clock.advance(sink.interval)
        assert sink.dropped == 5 and not sink.broken


def test_a_closed_pipe_is_given_up_for_good():
    read, write = os.pipe()
    os.close(read)
    with open(os.devnull, "wb") as null:
        sink, _, clock, _ = makeSink(errorFd=null.fileno())
        sink.output = FdOutput(write)
        try:
            log = MessageLog("ack", logging=attached(sink))
            log.stream(b"m\n", None)
            clock.advance(0)
            assert sink.broken and sink.dropped == 1
            log.stream(b"m\n", None)
            clock.advance(sink.interval)
            assert sink.dropped == 2
        finally:
            os.close(write)


# -- the observer: twistd's text, levels, journald ---------------------------------------------------------------


def _events() -> list[dict[str, Any]]:
    base = {"log_namespace": "sockd.x", "log_time": 1_700_000_000.5}
    return [
        {**base, "log_level": LogLevel.debug, "log_format": "ready for SIGHUP"},
        {**base, "log_level": LogLevel.info, "log_format": "Here is the message: {message}", "message": "hi"},
        {**base, "log_level": LogLevel.warn, "log_format": "two\nlines {a}", "a": "x"},
        {**base, "log_level": LogLevel.error, "log_format": "failed", "log_failure": Failure(ValueError("boom"))},
        {**base, "log_level": LogLevel.critical, "log_format": "{f()}", "f": lambda: "called"},
    ]


def test_observer_writes_twisteds_text_lines_at_and_above_the_level():
    sink, output, clock, _ = makeSink()
    observer = SinkObserver(sink, LogLevel.info)
    for event in _events():
        observer(event)
    clock.advance(0)
    assert output.text() == "".join(formatEventAsClassicLogText(e) for e in _events()[1:])


def test_a_filtered_event_writes_nothing_and_message_lines_need_no_event_first():
    sink, output, clock, _ = makeSink()
    observer = SinkObserver(sink, LogLevel.warn)
    observer(_events()[1])
    assert output.writes == [] and clock.getDelayedCalls() == []
    # The message path is the sink handed over by the assembly: no event has to reach the observer first.
    MessageLog("ack", logging=attached(sink)).stream(b"first\n", None)
    clock.advance(0)
    assert output.text().endswith("Here is the message: first\n")


def test_journal_lines_carry_sd_daemon_priorities():
    sink, output, clock, _ = makeSink(journal=True)
    observer = SinkObserver(sink, LogLevel.debug)
    for event in _events():
        observer(event)
    MessageLog("ack", logging=attached(sink)).stream(b"msg\n", None)
    clock.advance(sink.interval)
    lines = output.text().splitlines()
    assert [line[:3] for line in lines[:2]] == ["<7>", "<6>"]
    assert lines[2].startswith("<4>") and lines[3] == "<4>\tlines x"
    traceback = [line for line in lines if line.startswith("<3>")]
    assert len(traceback) > 3 and any("ValueError: boom" in line for line in traceback)
    assert lines[-2].startswith("<2>") and lines[-2].endswith("called")
    assert lines[-1].startswith("<6>") and lines[-1].endswith("[sockd.messages#info] Here is the message: msg")
    assert all(line[:1] == "<" for line in lines)
    assert PRIORITIES[LogLevel.warn] == 4


def test_journal_stream_is_recognised_by_device_and_inode(tmp_path):
    with open(tmp_path / "journal", "w") as mine, open(tmp_path / "other", "w") as other:
        stat = os.fstat(mine.fileno())
        environ = {"JOURNAL_STREAM": f"{stat.st_dev}:{stat.st_ino}"}
        assert isJournal(mine.fileno(), environ)
        assert not isJournal(other.fileno(), environ)
        assert not isJournal(mine.fileno(), {})
        assert not isJournal(mine.fileno(), {"JOURNAL_STREAM": "garbage"})


# -- levels -----------------------------------------------------------------------------------------------------


def test_log_level_names():
    assert parseLevel("WARNING") is LogLevel.warn and parseLevel("debug") is LogLevel.debug
    with pytest.raises(ValueError):
        parseLevel("loud")


def test_above_info_the_message_log_is_off_and_asks_for_no_peer():
    log = MessageLog("ack", logging=MessageLogging(level=LogLevel.warn))

    class Connection:
        asked = 0

        def getPeer(self):
            self.asked += 1
            return UNIXAddress(b"/run/peer.sock")

    quiet, events = Connection(), []
    with capturedEvents(events):
        log.stream(b"unseen\n", quiet)
    assert not log.enabled and quiet.asked == 0 and events == []
    assert log.forConnection(quiet) is None and quiet.asked == 0
    structured = Connection()
    with capturedEvents(events):
        MessageLog("ack", logging=MessageLogging(level=LogLevel.info)).stream(b"seen\n", structured)
        MessageLog("ack", logging=MessageLogging(level=LogLevel.info)).forConnection(structured)(b"again\n")
    assert structured.asked == 2
    assert [(e["peer"], e["transport"], e["message"]) for e in events] == [
        ("/run/peer.sock", "unix", "seen"), ("/run/peer.sock", "unix", "again")]
    sink, written = makeSink()[:2]
    text = Connection()
    MessageLog("ack", logging=attached(sink)).stream(b"line\n", text)
    unlimited = MessageLog("ack", logging=attached(sink)).forConnection(text)
    assert unlimited is not None
    unlimited(b"second\n")
    assert text.asked == 0  # the text line shows no peer (and no limiter asks for its source)
    sink.flush()
    assert [line.split(": ", 1)[1] for line in written.text().splitlines()] == ["line", "second"]


def test_json_and_text_loggers_filter_by_level(monkeypatch):
    state = LogState()
    monkeypatch.setattr("sockd.observe.log.observers.STATE", state)
    events = _events()[:3]
    for level, expected in ((LogLevel.debug, 3), (LogLevel.info, 2), (LogLevel.warn, 1)):
        configure(level, state=state)
        stream, text = io.StringIO(), io.StringIO()
        observer, textObserver = jsonLogger(stream), textLogger(text)
        assert ILogObserver.providedBy(observer) and ILogObserver.providedBy(textObserver)
        for event in events:
            observer(dict(event))
            textObserver(dict(event))
        assert [json.loads(line)["text"] for line in stream.getvalue().splitlines()][:1] == (
            [formatEvent(events[3 - expected])])
        assert len(stream.getvalue().splitlines()) == expected
        assert text.getvalue().count("[sockd.x#") == expected


# -- where twistd would have logged -----------------------------------------------------------------------------


def _parent(*args: str) -> Any:
    config = ServerOptions()
    config.parseOptions([*args, "sockd", "--ack", "tcp:0"])
    assert config.subOptions.parent is config
    return config.subOptions.parent


def test_destination_is_twistds_own():
    assert twistdDestination(_parent("-n")) == ("stdout", "")
    assert twistdDestination(_parent("-n", "--logfile", "-")) == ("stdout", "")
    assert twistdDestination(_parent("-n", "--logfile", "x.log")) == ("file", "x.log")
    assert twistdDestination(_parent()) == ("file", "twistd.log")
    # twistd handles these itself (or refuses to start): sockd leaves the log to it.
    assert twistdDestination(_parent("--logfile", "-")) is None
    assert twistdDestination(_parent("-n", "--syslog")) is None
    assert twistdDestination(_parent("-n", "--logger", "sockd.logging.jsonLogger")) is None
    assert twistdDestination(None) is None
    assert twistdDestination({"logFile": None, "fileLogObserverFactory": None}) is None  # twist


def topService(observer: Any) -> SockdService:
    """The top service as the assembly builds it, offering C{observer}."""
    top = SockdService(task.Clock(), None, None, 5.0)
    top.logObserver = observer
    return top


def test_the_observer_is_offered_as_the_applications_component(tmp_path):
    made: list[Any] = [object(), object()]
    service = topService(made[0])
    application = Application("sockd")
    service.setServiceParent(application)
    assert application.getComponent(ILogObserver) is made[0]
    assert service in list(IService(application))
    # A component set already (a .tac file's) wins.
    other = topService(made[1])
    other.setServiceParent(application)
    assert application.getComponent(ILogObserver) is made[0] and len(made) == 2
    # Nothing to offer: nothing set.
    bare, application = topService(None), Application("sockd")
    bare.setServiceParent(application)
    assert application.getComponent(ILogObserver, None) is None


def test_sink_observer_writes_twistds_log_file_every_turn_and_after_shutdown(tmp_path, monkeypatch):
    atExit: list[Any] = []
    monkeypatch.setattr("atexit.register", atExit.append)
    handlers: list[Any] = []
    monkeypatch.setattr("signal.signal", lambda signum, handler: handlers.append((signum, handler)))
    from twisted.internet.testing import MemoryReactorClock

    reactor = MemoryReactorClock()
    reactor.running = True
    path = tmp_path / "twistd.log"
    logging = plan(type("Options", (), {"parent": _parent("-n", "--logfile", str(path))})(), reactor,
                   state=LogState())
    observer = logging.observer
    assert isinstance(observer, SinkObserver) and logging.sink is observer.sink  # one sink: events and messages
    observer({"log_level": LogLevel.info, "log_namespace": "n", "log_format": "up", "log_time": 1.0})
    log = MessageLog("ack", logging=logging)
    assert path.read_text().count("\n") == 1  # an event: written at once
    log.stream(b"one\n", None)
    assert path.read_text().count("\n") == 1
    reactor.advance(1)
    assert path.read_text().count("\n") == 2
    log.stream(b"two\n", None)
    reactor.advance(0)
    assert path.read_text().count("\n") == 2  # the log is busy: the interval is not over
    ((flush, args, kw),) = reactor.triggers["after"]["shutdown"]
    flush(*args, **kw)
    assert path.read_text().endswith("Here is the message: two\n")
    assert atExit == [observer.sink.close]
    assert [signum for signum, _ in handlers] == [signal.SIGUSR1]  # rotation, as twistd's own LogFile
    reactor.advance(1)  # the interval's flush finds nothing left
    assert path.read_text().count("\n") == 3


def test_syslog_gets_twistds_own_observer_behind_the_level_filter(monkeypatch):
    sent: list[dict[str, Any]] = []

    class FakeSyslog:
        def __init__(self, prefix: str) -> None:
            self.prefix = prefix

        def emit(self, eventDict: dict[str, Any]) -> None:
            sent.append({**eventDict, "prefix": self.prefix})

    monkeypatch.setattr("twisted.python.syslog.SyslogObserver", FakeSyslog)
    state = LogState()
    configure(LogLevel.warn, state=state)
    options = type("Options", (), {"parent": _parent("-n", "--syslog", "--prefix", "sockd-test")})()
    logging = plan(options, task.Clock(), state=state)
    service = topService(logging.observer)
    application = Application("sockd")
    service.setServiceParent(application)
    observer = application.getComponent(ILogObserver)
    for level in (LogLevel.info, LogLevel.warn):
        observer({"log_level": level, "log_namespace": "n", "log_format": level.name, "log_time": 1.0})
    assert [(e["prefix"], e["log_format"]) for e in sent] == [("sockd-test", "warn")]
    assert logging.sink is None  # messages stay structured events
    # A --logger of the user's own: sockd offers nothing, twistd uses the user's choice.
    application = Application("sockd")
    mine = _parent("-n", "--syslog", "--logger", "sockd.logging.textLogger")
    other = topService(plan(type("Options", (), {"parent": mine})(), task.Clock(), state=state).observer)
    other.setServiceParent(application)
    assert application.getComponent(ILogObserver, None) is None


def test_lines_from_a_worker_are_written_in_order_with_our_own():
    sink, output, clock, wall = makeSink()
    log = MessageLog("ack", logging=attached(sink))
    log.stream(b"ours first\n", None)
    sink.lines(b"a worker's line\nand another\n")
    log.stream(b"ours after\n", None)
    clock.advance(0)
    lines = output.text().splitlines()
    assert [line.split(": ", 1)[-1] for line in lines] == ["ours first", "a worker's line", "and another",
                                                            "ours after"]


# -- the ceiling: per-source rate, capped files, short writes ------------------------------------------------------


class Peer:
    """A connection as the message log sees it: C{getPeer()} gives its address."""

    def __init__(self, host: str) -> None:
        self.address = IPv4Address("TCP", host, 5000)

    def getPeer(self) -> IPv4Address:
        return self.address


@pytest.mark.parametrize("perConnection", [False, True], ids=["stream", "forConnection"])
def test_each_source_logs_its_burst_then_its_rate_and_the_rest_is_summarised(perConnection: bool):
    clock = task.Clock()
    limiter = MessageLimiter(rate=10, burst=50, clock=clock)
    sink, output, sinkClock, _ = makeSink()
    log = MessageLog("ack", logging=MessageLogging(sink, limiter=limiter))
    flooder, other = Peer("192.0.2.1"), Peer("192.0.2.2")

    def logOf(peer: Peer) -> Any:
        """A connection's message log: the per-connection one, or stream() with the connection each time."""
        return log.forConnection(peer) if perConnection else functools.partial(log.stream, peer=peer)

    flooding = logOf(flooder)
    for i in range(200):
        flooding(b"f%d\n" % i)
    logOf(other)(b"other\n")  # another source has its own bucket
    log.datagram(b"dgram\n", ("192.0.2.1", 7))  # the flooder's datagrams share its bucket
    clock.advance(1.0)  # one second: ten more
    for i in range(200, 230):
        flooding(b"f%d\n" % i)
    sinkClock.advance(1)
    texts = [line.split(": ", 1)[1] for line in output.text().splitlines()]
    assert texts == [f"f{i}" for i in range(50)] + ["other"] + [f"f{i}" for i in range(200, 210)]
    assert limiter.suppressed == 150 + 1 + 20 and MessageLogging(sink, limiter=limiter).suppressed == 171
    events: list[dict[str, Any]] = []
    with capturedEvents(events), capturedLimiterEvents(events):
        clock.advance(limiter.interval - 1)  # the interval began with the first line held back
    assert [formatEvent(e) for e in events] == ["suppressed 171 messages from 192.0.2.1 in the last 10 s"]
    assert (events[0]["source"], events[0]["count"]) == ("192.0.2.1", 171)
    assert clock.getDelayedCalls() == []  # no timer while nothing is held back
    clock.advance(100)
    flooding(b"again\n")  # the bucket filled up again meanwhile (and the summary dropped the full bucket)
    sinkClock.advance(1)
    assert output.text().endswith("Here is the message: again\n")


def test_connections_from_one_source_share_their_logger_and_the_table_is_bounded():
    clock = task.Clock()
    limiter = MessageLimiter(rate=10, burst=2, clock=clock)
    sink, output, sinkClock, _ = makeSink()
    log = MessageLog("ack", logging=MessageLogging(sink, limiter=limiter))
    log.maxSources = 2
    first, second, other = Peer("192.0.2.1"), Peer("192.0.2.1"), Peer("192.0.2.2")
    assert log.forConnection(first) is log.forConnection(second) is not log.forConnection(other)
    third = log.forConnection(Peer("192.0.2.3"))  # beyond the table: its own logger, not kept, still limited
    assert third is not None and len(log._bySource) == 2
    for i in range(3):
        third(b"t%d\n" % i)
    sinkClock.advance(1)
    assert [line.split(": ", 1)[1] for line in output.text().splitlines()] == ["t0", "t1"]
    unlimited = MessageLog("ack", logging=MessageLogging(sink))
    assert unlimited.forConnection(first) is unlimited.forConnection(other)


def test_summaries_use_thousands_separators_and_report_at_shutdown():
    clock = task.Clock()
    limiter = MessageLimiter(rate=100, burst=1000, clock=clock)
    for _ in range(49_211 + 1000):
        limiter.allowPeer(Peer("127.0.0.1"))
    events: list[dict[str, Any]] = []
    clock.advance(3)
    with capturedLimiterEvents(events):
        limiter.report()  # what the shutdown trigger calls
    assert [formatEvent(e) for e in events] == ["suppressed 49,211 messages from 127.0.0.1 in the last 3 s"]
    assert clock.getDelayedCalls() == []


def test_the_source_table_is_bounded_and_newcomers_share_one_bucket():
    clock = task.Clock()
    limiter = MessageLimiter(rate=1, burst=2, clock=clock)
    limiter.maxSources = 4
    allowed = [limiter.allow(f"10.0.0.{i}") for i in range(4)]
    # 100 more addresses, 3 lines each: together they get one burst, not 100.
    allowed += [limiter.allow(f"10.0.1.{i}") for i in range(100) for _ in range(3)]
    assert allowed.count(True) == 4 + 2 and len(limiter._due) <= limiter.maxSources + 1
    events: list[dict[str, Any]] = []
    with capturedLimiterEvents(events):
        clock.advance(limiter.interval)  # every bucket is full again by the summary, which prunes the table
    assert [e["source"] for e in events] == [OTHERS] and limiter._due == {}
    assert limiter.allow("10.0.2.1")


def test_sources_of_peers():
    assert sourceOf(Peer("192.0.2.9")) == "192.0.2.9"
    assert sourceOf(IPv6Address("TCP", "::1", 5)) == "::1"
    assert sourceOf(("198.51.100.1", 7)) == "198.51.100.1"
    assert sourceOf(UNIXAddress(b"/run/x.sock")) == UNIX == sourceOf(None)


def test_a_reload_to_rate_zero_lifts_the_limit():
    limiter = MessageLimiter(rate=1, burst=1, clock=task.Clock())
    written: list[bytes] = []
    gated = limiter.gate("b", written.append)  # an open connection's log keeps its gate across the reload
    assert [limiter.allow("a") for _ in range(3)] == [True, False, False]
    for _ in range(3):
        gated(b"x")
    assert len(written) == 1
    limiter.reconfigure(0, 1)
    assert all(limiter.allow("a") for _ in range(10_000))
    for _ in range(10_000):
        gated(b"y")
    assert len(written) == 10_001 and limiter.suppressed == 4


@contextlib.contextmanager
def capturedLimiterEvents(events: list[dict[str, Any]]) -> Iterator[None]:
    """The limiter's summaries go to C{events} meanwhile."""
    original = limit.log.observer
    limit.log.observer = LogPublisher(events.append)
    try:
        yield
    finally:
        limit.log.observer = original


def lines(path: Any) -> list[str]:
    return path.read_text().splitlines()


def test_log_files_rotate_by_size_keep_a_bounded_number_and_never_split_a_line(tmp_path):
    path = tmp_path / "sockd.log"
    logFile = CappedLogFile(str(path), maxSize=1000, maxFiles=3)
    written = [b"line %05d %s\n" % (i, b"x" * (i % 40)) for i in range(2000)]
    for start in range(0, len(written), 37):
        logFile.write(b"".join(written[start:start + 37]))
    files = sorted(tmp_path.iterdir(), key=lambda p: int(p.suffix[1:]) if p.suffix[1:].isdigit() else 1 << 30)
    assert [p.name for p in files][-1] == "sockd.log" and len(files) == 3
    assert all(p.stat().st_size <= 1000 for p in files)
    kept = b"".join(p.read_bytes() for p in files)
    assert kept.endswith(b"".join(written[-10:])) and b"".join(written).endswith(kept)  # whole lines, in order


def test_a_rotation_is_one_rename_and_at_most_one_unlink_however_many_are_kept(tmp_path, monkeypatch):
    path = tmp_path / "sockd.log"
    logFile = CappedLogFile(str(path), maxSize=0, maxFiles=50)
    calls: list[str] = []
    rename, unlink = os.rename, os.unlink
    monkeypatch.setattr(os, "rename", lambda a, b: calls.append("rename") or rename(a, b))
    monkeypatch.setattr(os, "unlink", lambda a: calls.append("unlink") or unlink(a))
    for i in range(120):
        logFile.write(b"rotation %d\n" % i)
        calls.clear()
        logFile.rotate()
        assert calls == (["rename"] if i < 49 else ["rename", "unlink"])
    assert len(list(tmp_path.iterdir())) == 50  # 49 rotated and the current one
    assert (tmp_path / "sockd.log.120").read_text() == "rotation 119\n"
    logFile.rotate()  # an empty current file: nothing to rotate
    assert not (tmp_path / "sockd.log.121").exists()


def test_files_left_by_an_earlier_run_count_towards_the_limit(tmp_path):
    for number in range(1, 8):
        (tmp_path / f"sockd.log.{number}").write_text(f"old {number}\n")
    (tmp_path / "sockd.log.notes").write_text("not ours\n")
    logFile = CappedLogFile(str(tmp_path / "sockd.log"), maxSize=100, maxFiles=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sockd.log", "sockd.log.6", "sockd.log.7", "sockd.log.notes"]
    logFile.write(b"new\n")
    logFile.rotate()
    assert (tmp_path / "sockd.log.8").read_text() == "new\n" and not (tmp_path / "sockd.log.6").exists()


class ShortWrites:
    """An C{os.write} that writes at most C{most} bytes a call, and fails with C{error} after C{budget} bytes."""

    def __init__(self, most: int, budget: int | None = None, error: int = errno.ENOSPC) -> None:
        self.most = most
        self.budget = budget
        self.error = error

    def __call__(self, fd: int, data: Any) -> int:
        size = min(len(data), self.most)
        if self.budget is not None:
            if self.budget == 0:
                raise OSError(self.error, os.strerror(self.error))
            size = min(size, self.budget)
            self.budget -= size
        return os.write(fd, bytes(data[:size]))


def test_short_writes_are_finished(tmp_path):
    path = tmp_path / "sockd.log"
    sink, _, clock, _ = makeSink()
    sink.output = CappedLogFile(str(path), 0, 0, write=ShortWrites(7))
    log = MessageLog("ack", logging=attached(sink))
    for i in range(100):
        log.stream(b"message %d\n" % i, None)
    clock.advance(0)
    assert [line.split(": ", 1)[1] for line in lines(path)] == [f"message {i}" for i in range(100)]
    assert sink.dropped == 0


def test_a_write_failing_part_way_counts_what_is_lost_and_splices_no_line(tmp_path):
    path = tmp_path / "sockd.log"
    with open(os.devnull, "wb") as null:
        sink, _, clock, _ = makeSink(errorFd=null.fileno())
        full = ShortWrites(1000, budget=150)  # the disk fills up in the middle of the third line
        sink.output = CappedLogFile(str(path), 0, 0, write=full)
        log = MessageLog("ack", logging=attached(sink))
        for i in range(10):
            log.stream(b"first batch %d\n" % i, None)
        clock.advance(0)
        kept = lines(path)
        assert path.read_bytes().endswith(b"\n") and all(line.endswith(f"first batch {i}")
                                                         for i, line in enumerate(kept))
        assert len(kept) + sink.dropped == 10 and sink.dropped >= 8
        full.budget = None  # space again
        log.stream(b"after\n", None)
        clock.advance(sink.interval)
        assert lines(path)[:-1] == kept and lines(path)[-1].endswith("Here is the message: after")


def test_a_pipe_that_fails_part_way_gets_the_half_line_ended(tmp_path):
    read, write = os.pipe()
    try:
        with open(os.devnull, "wb") as null:
            sink, _, clock, _ = makeSink(errorFd=null.fileno())
            failing = ShortWrites(1000, budget=60, error=errno.EAGAIN)
            sink.output = FdOutput(write, write=failing)
            log = MessageLog("ack", logging=attached(sink))
            for i in range(4):
                log.stream(b"piped %d\n" % i, None)
            clock.advance(0)
            failing.budget = None
            log.stream(b"next\n", None)
            clock.advance(sink.interval)
        text = os.read(read, 65536).decode()
    finally:
        os.close(read)
        os.close(write)
    half, rest = text.split("\n", 1)
    assert len(half) == 60 and rest.endswith("Here is the message: next\n") and rest.count("\n") == 1
    assert sink.dropped == 4


def test_sizes_take_suffixes():
    assert [SIZE.fromText(t) for t in ("65536", "512K", "10M", "1g", "10MiB", "0")] == [
        65536, 512 << 10, 10 << 20, 1 << 30, 10 << 20, 0]
    for bad in ("", "M", "-1", "1.5M", "ten"):
        with pytest.raises(BadValue):
            SIZE.fromText(bad)
