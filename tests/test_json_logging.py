"""twistd --logger sockd.logging.jsonLogger: one JSON object per line, with sockd's structured fields."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time

from sockd.observe.observers import eventAsRecord
from tests.daemon import REACTOR, TWISTD, udpExchange


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
        [TWISTD, *REACTOR, "-n", "--pidfile=", "--logger", "sockd.observe.observers.jsonLogger", "sockd",
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
