"""JSON logs: one JSON object per line with sockd's structured fields, under twistd --logger, twist and sockd."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time

import pytest

from sockd.observe.log.observers import eventAsRecord
from tests.daemon import (
    BIN,
    COMMAND_REACTOR,
    REACTOR,
    STOCK_REACTOR,
    TWIST,
    TWISTD,
    connect,
    recvExactly,
    udpExchange,
    waitFor,
)


def test_record_is_flat_and_json_safe():
    from twisted.logger import LogLevel

    record = eventAsRecord({"log_format": "Here is the message: {message}", "log_level": LogLevel.info,
                            "log_namespace": "sockd.messages", "log_time": 0.0, "message": "hi",
                            "service": "ack", "peer": "127.0.0.1:5", "bytes": 3, "thing": object()})
    assert record["text"] == "Here is the message: hi"
    assert record["time"] == "1970-01-01T00:00:00+00:00"
    assert (record["level"], record["service"], record["peer"], record["bytes"]) == ("info", "ack", "127.0.0.1:5", 3)
    json.dumps(record)


def test_twistd_logs_json_lines_with_fields(tmp_path):
    proc = subprocess.Popen(
        [TWISTD, *REACTOR, "-n", "--pidfile=", "--logger", "sockd.observe.log.observers.jsonLogger", "sockd",
         "--ack", "udp:0:interface=127.0.0.1"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None
    try:
        port = None
        deadline = time.monotonic() + 15
        while port is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            record = json.loads(line)
            if record["namespace"] == "sockd.listeners":
                port = int(re.search(r":(\d+)$", record["address"]).group(1))
        assert port is not None
        assert udpExchange(("127.0.0.1", port), b"json\n") == b"Got your message\n"
        while True:
            record = json.loads(proc.stdout.readline())
            if record["namespace"] == "sockd.messages":
                break
        assert record["text"] == "Received a datagram: json"
        assert record["service"] == "ack" and record["transport"] == "udp" and record["bytes"] == 5
        assert record["peer"].startswith("127.0.0.1:")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=15)
    assert proc.returncode == 0


@pytest.mark.parametrize("runner", ["sockd", "sockd --log-file", "twist"])
def test_every_runner_writes_one_json_object_per_line_with_the_documented_fields(tmp_path, runner):
    """twist's json format (the default when the log is not a terminal) is sockd's records, not Twisted's
    event serialisation: the same lines as twistd --logger sockd.logging.jsonLogger, messages included."""
    out = tmp_path / "out.log"
    service = ["sockd", "--ack", "tcp:0:interface=127.0.0.1"]
    if runner == "sockd":  # no --log-format: twist picks json, standard output not being a terminal
        command = [str(BIN / "sockd"), *COMMAND_REACTOR, *service[1:]]
    elif runner == "sockd --log-file":
        command = [str(BIN / "sockd"), *COMMAND_REACTOR, "--log-format", "json", "--log-file", str(out), *service[1:]]
    else:
        command = [TWIST, *(["--reactor=epoll"] if STOCK_REACTOR else []), "--log-format=json", *service]
    with open(tmp_path / "stdout.log" if runner == "sockd --log-file" else out, "wb") as stdout:
        proc = subprocess.Popen(command, cwd=tmp_path, stdout=stdout, stderr=subprocess.PIPE)

    def records() -> list[dict]:
        text = out.read_text() if out.exists() else ""
        return [json.loads(line) for line in text[:text.rfind("\n") + 1].splitlines()]  # whole lines only

    try:
        listening = waitFor(lambda: [r for r in records() if r["namespace"] == "sockd.listeners"], "a listener",
                            proc=proc)
        port = int(re.search(r":(\d+)$", listening[0]["address"]).group(1))
        with connect(("127.0.0.1", port)) as sock:
            sock.sendall(b"json\n")
            assert recvExactly(sock, 18) == b"I got your message"
        messages = waitFor(lambda: [r for r in records() if r["namespace"] == "sockd.messages"], "a message record",
                           proc=proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=15)
    assert proc.returncode == 0, stderr
    text = out.read_text()
    assert "\x1e" not in text and "log_logger" not in text and "__class_uuid__" not in text
    everything = [json.loads(line) for line in text.splitlines()]  # every line is one JSON object
    assert all({"time", "level", "namespace", "text"} <= set(r) for r in everything)
    (message,) = messages
    assert message["text"] == "Here is the message: json" and message["level"] == "info"
    assert (message["service"], message["transport"], message["bytes"]) == ("ack", "tcp", 5)
    assert message["peer"].startswith("127.0.0.1:")
