"""Rate limits, access lists, stream admission and the datagram guard, all on a fake time source."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.testing import FakeDatagramTransport
from twisted.logger import capturedLogs, formatEvent

from sockd.config.settings import Settings
from sockd.defences.access import AccessError, AccessList, parseHost, parseNetworks
from sockd.defences.admission import Admission, sourceKey
from sockd.defences.datagram import DatagramPolicy, GuardedDatagramProtocol
from sockd.defences.ratelimit import GlobalBucket, KeyedBuckets, LogThrottle, TokenBucket
from sockd.observe.log.messages import MessageLog
from sockd.observe.metrics import Metrics
from sockd.protocols.ack import AckDatagramProtocol
from sockd.protocols.echo import EchoDatagramProtocol
from sockd.services import SMALL_SERVICE_PORTS


class FakeTime:
    """A time source the test moves by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def takes(take, count: int) -> int:  # type: ignore[no-untyped-def]
    """How many of C{count} immediate attempts succeed."""
    return sum(1 for _ in range(count) if take())


# -- token buckets -------------------------------------------------------------------------------------------------


def test_token_bucket_burst_then_refill() -> None:
    bucket = TokenBucket(rate=2, burst=3, now=0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.take(0.25) is False  # half a token
    assert bucket.take(0.5) is True  # one token after 0.5 s at 2/s
    assert bucket.take(0.5) is False
    assert takes(lambda: bucket.take(100.0), 10) == 3  # refill is capped at the burst


def test_token_bucket_cost() -> None:
    bucket = TokenBucket(rate=1, burst=10, now=0.0)
    assert bucket.take(0.0, cost=7) is True
    assert bucket.take(0.0, cost=4) is False
    assert bucket.take(1.0, cost=4) is True
    assert bucket.tokens == pytest.approx(0.0)


def test_token_bucket_refused_take_spends_nothing() -> None:
    bucket = TokenBucket(rate=1, burst=1, now=0.0)
    assert bucket.take(0.0)
    for t in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9):
        assert not bucket.take(t)
    assert bucket.take(1.0)


def test_token_bucket_survives_the_clock_stepping_back() -> None:
    """reactor.seconds() is the wall clock: an NTP step back of 15 minutes must not block a source for 15 minutes."""
    bucket = TokenBucket(rate=10, burst=20, now=1000.0)
    assert bucket.take(1000.0)
    assert bucket.take(100.0)  # the clock stepped back 900 s; nothing was spent in between
    assert takes(lambda: bucket.take(101.0), 30) >= 10


def test_global_budget_survives_the_clock_stepping_back() -> None:
    time = FakeTime(1000.0)
    budget = GlobalBucket(100, time)
    time.now = 400.0
    assert budget.take()
    time.now = 401.0
    assert takes(budget.take, 200) >= 100


def test_keyed_buckets_are_per_key() -> None:
    time = FakeTime()
    buckets = KeyedBuckets(rate=1, burst=3, seconds=time)
    assert takes(lambda: buckets.take("a"), 10) == 3
    assert takes(lambda: buckets.take("b"), 10) == 3
    time.now += 2
    assert takes(lambda: buckets.take("a"), 10) == 2
    assert takes(lambda: buckets.take("b"), 10) == 2


def test_keyed_buckets_memory_is_bounded_and_least_recent_forgotten() -> None:
    time = FakeTime()
    buckets = KeyedBuckets(rate=1, burst=2, seconds=time, maxKeys=3)
    assert takes(lambda: buckets.take("old"), 5) == 2  # exhausted
    assert takes(lambda: buckets.take("kept"), 5) == 2  # exhausted
    for n in range(1000):
        buckets.take("kept")  # stays most recently used
        buckets.take(f"spray-{n}")
        assert len(buckets) <= 3
    assert len(buckets) == 3
    assert buckets.take("kept") is False  # remembered, still empty
    assert buckets.take("old") is True  # forgotten: a fresh bucket (the documented leniency)


def test_keyed_buckets_rate_zero_is_unlimited_and_keeps_nothing() -> None:
    buckets = KeyedBuckets(rate=0, burst=1, seconds=FakeTime())
    assert takes(lambda: buckets.take("a"), 1000) == 1000
    assert len(buckets) == 0


def test_global_bucket() -> None:
    time = FakeTime()
    budget = GlobalBucket(5, time)
    assert takes(budget.take, 10) == 5
    time.now += 0.2
    assert takes(budget.take, 10) == 1
    time.now += 10
    assert takes(budget.take, 10) == 5  # burst is one second's worth


def test_global_bucket_small_rate_has_burst_of_one_and_zero_is_unlimited() -> None:
    time = FakeTime()
    slow = GlobalBucket(0.5, time)
    assert takes(slow.take, 5) == 1
    time.now += 2
    assert takes(slow.take, 5) == 1
    assert takes(GlobalBucket(0, time).take, 10000) == 10000


def test_log_throttle() -> None:
    time = FakeTime(0.0)
    throttle = LogThrottle(interval=10, seconds=time)
    assert throttle.allow("a") is True
    assert throttle.allow("b") is True
    time.now = 9.99
    assert throttle.allow("a") is False
    assert throttle.allow("a") is False
    assert throttle.suppressed == 2
    time.now = 10.0
    assert throttle.allow("a") is True
    assert throttle.allow("b") is True


def test_log_throttle_memory_is_bounded() -> None:
    time = FakeTime(0.0)
    throttle = LogThrottle(interval=10, seconds=time, maxKeys=5)
    for n in range(100):
        assert throttle.allow(n)
    assert len(throttle._last) == 5
    assert throttle.allow(99) is False  # the most recent keys are still remembered


# -- access lists --------------------------------------------------------------------------------------------------


def test_parse_networks() -> None:
    assert [str(n) for n in parseNetworks(["10.1.2.3/8", " ::1 ", "none", "192.0.2.7"], "--allow")] == [
        "10.0.0.0/8", "::1/128", "192.0.2.7/32",
    ]
    with pytest.raises(AccessError) as e:
        parseNetworks(["10.0.0.0/8", "example.com"], "--deny")
    assert str(e.value) == "--deny: 'example.com' is not an address or CIDR block such as 192.0.2.0/24"
    with pytest.raises(AccessError, match="'10.0.0.0/33'"):
        AccessList(allow=["10.0.0.0/33"])


def test_parse_host() -> None:
    assert str(parseHost("192.0.2.1")) == "192.0.2.1"
    assert str(parseHost("::ffff:192.0.2.1")) == "192.0.2.1"
    assert str(parseHost("fe80::1%eth0")) == "fe80::1"
    assert parseHost("localhost") is None
    assert parseHost("") is None


def test_empty_access_list_allows_everyone() -> None:
    access = AccessList()
    for host in ("192.0.2.1", "::1", "2001:db8::5", "::ffff:10.0.0.1", None):
        assert access.allows(host)


def test_allow_ipv4() -> None:
    access = AccessList(allow=["10.0.0.0/8", "192.0.2.128/25"])
    assert access.allows("10.200.3.4")
    assert access.allows("192.0.2.200")
    assert not access.allows("192.0.2.127")
    assert not access.allows("11.0.0.1")
    assert not access.allows("::1")  # IPv6 peers are not in an IPv4-only allow list
    assert access.allows(None)  # Unix sockets have no address to judge


def test_deny_ipv4_and_allow_then_deny() -> None:
    access = AccessList(allow=["10.0.0.0/8"], deny=["10.1.0.0/16"])
    assert access.allows("10.2.0.1")
    assert not access.allows("10.1.2.3")
    deny = AccessList(deny=["192.0.2.0/24"])
    assert not deny.allows("192.0.2.77")
    assert deny.allows("192.0.3.1")
    assert deny.allows("2001:db8::1")


def test_allow_and_deny_ipv6() -> None:
    access = AccessList(allow=["2001:db8::/32", "::1"], deny=["2001:db8:bad::/48", "fe80::/10"])
    assert access.allows("2001:db8::1")
    assert access.allows("::1")
    assert not access.allows("2001:db9::1")
    assert not access.allows("2001:db8:bad::7")
    assert not access.allows("192.0.2.1")
    assert not AccessList(deny=["fe80::/10"]).allows("fe80::1%eth0")


def test_ipv4_mapped_ipv6_peers_are_judged_as_ipv4() -> None:
    assert not AccessList(deny=["192.0.2.0/24"]).allows("::ffff:192.0.2.5")
    assert AccessList(allow=["127.0.0.0/8"]).allows("::ffff:127.0.0.1")
    assert not AccessList(allow=["127.0.0.0/8"]).allows("::ffff:10.0.0.1")


def test_deny_block_written_as_ipv4_mapped_ipv6() -> None:
    """Peers are normalised to IPv4 but the blocks are not, so this deny is silently ineffective."""
    access = AccessList(deny=["::ffff:192.0.2.0/120"])
    assert not access.allows("::ffff:192.0.2.1")
    assert not access.allows("192.0.2.1")


def test_unparseable_host_is_refused_and_verdicts_are_stable() -> None:
    access = AccessList(deny=["192.0.2.0/24"])
    assert not access.allows("not-an-address")
    for _ in range(3):
        assert not access.allows("192.0.2.1")
        assert access.allows("198.51.100.1")


# -- admission -----------------------------------------------------------------------------------------------------


def makeAdmission(**overrides: object) -> tuple[Admission, FakeTime]:
    values: dict[str, object] = {
        "max_connections": 0, "max_per_source": 0, "connection_rate": 0.0, "exempt": [], "refusal_log_interval": 10.0,
    }
    values.update(overrides)
    time = FakeTime()
    return Admission(Settings(**values), time), time  # type: ignore[arg-type]


def test_admission_access() -> None:
    admission, _ = makeAdmission(deny=["192.0.2.0/24"], max_connections=1)
    assert admission.admit("192.0.2.1") == "access"
    assert admission.admit("198.51.100.1") is None
    assert admission.admit("192.0.2.1") == "access"  # access is judged before the totals
    assert admission.total == 1


def test_admission_total_limit_and_release() -> None:
    admission, _ = makeAdmission(max_connections=3)
    assert [admission.admit(h) for h in ("192.0.2.1", "192.0.2.2", None, "192.0.2.3")] == [
        None, None, None, "max-connections",
    ]
    assert admission.total == 3
    admission.release(None)
    assert admission.admit("192.0.2.3") is None
    assert admission.admit("192.0.2.4") == "max-connections"


def test_admission_per_source_limit() -> None:
    admission, _ = makeAdmission(max_per_source=2)
    assert [admission.admit("192.0.2.1") for _ in range(3)] == [None, None, "per-source"]
    assert admission.admit("192.0.2.2") is None
    admission.release("192.0.2.1")
    assert admission.admit("192.0.2.1") is None
    assert admission.perSource == {"192.0.2.1": 2, "192.0.2.2": 1}
    for host in ("192.0.2.1", "192.0.2.1", "192.0.2.2"):
        admission.release(host)
    assert admission.perSource == {}  # no memory kept for sources that left
    assert admission.total == 0


def test_admission_counts_ipv4_mapped_peers_as_ipv4() -> None:
    admission, _ = makeAdmission(max_per_source=1)
    assert sourceKey("::ffff:192.0.2.1") == "192.0.2.1"
    assert admission.admit("192.0.2.1") is None
    assert admission.admit("::ffff:192.0.2.1") == "per-source"
    admission.release("::ffff:192.0.2.1")
    assert admission.admit("::ffff:192.0.2.1") is None


def test_admission_connection_rate() -> None:
    admission, time = makeAdmission(connection_rate=2.0, connection_burst=3)
    results = []
    for _ in range(5):
        results.append(admission.admit("192.0.2.1"))
        admission.release("192.0.2.1")
    assert results == [None, None, None, "rate", "rate"]
    assert admission.admit("192.0.2.2") is None  # other sources have their own bucket
    time.now += 0.5
    assert admission.admit("192.0.2.1") is None
    assert admission.admit("192.0.2.1") == "rate"


def test_admission_exempt_networks_skip_per_source_and_rate_only() -> None:
    admission, _ = makeAdmission(
        exempt=["127.0.0.0/8", "::1"], max_per_source=1, connection_rate=1.0, connection_burst=1, max_connections=50,
        deny=["127.0.0.2"],
    )
    assert [admission.admit("127.0.0.1") for _ in range(20)] == [None] * 20
    assert [admission.admit("::1") for _ in range(20)] == [None] * 20
    assert admission.admit("::ffff:127.0.0.1") is None  # mapped loopback is loopback
    assert admission.admit("127.0.0.2") == "access"  # exemption does not override the access list
    assert admission.admit("192.0.2.1") is None
    assert admission.admit("192.0.2.1") == "per-source"
    for _ in range(8):
        admission.admit("127.0.0.1")
    assert admission.total == 50
    assert admission.admit("127.0.0.1") == "max-connections"  # nor the total


def test_admission_unix_peers_count_in_total_only() -> None:
    admission, _ = makeAdmission(max_connections=2, max_per_source=1, connection_rate=1.0, connection_burst=1)
    assert [admission.admit(None) for _ in range(3)] == [None, None, "max-connections"]
    assert admission.perSource == {}
    admission.release(None)
    admission.release(None)
    assert admission.total == 0


def test_admission_reconfigure_applies_at_once_and_keeps_counts() -> None:
    admission, _ = makeAdmission(max_per_source=5)
    for _ in range(3):
        assert admission.admit("192.0.2.1") is None
    admission.reconfigure(Settings(max_connections=0, max_per_source=2, connection_rate=0, exempt=[]))
    assert admission.admit("192.0.2.1") == "per-source"
    assert admission.perSource["192.0.2.1"] == 3
    admission.reconfigure(Settings(deny=["192.0.2.0/24"], exempt=[]))
    assert admission.admit("192.0.2.9") == "access"


def test_admission_refusal_log_throttled() -> None:
    admission, time = makeAdmission(refusal_log_interval=10.0)
    with capturedLogs() as events:
        for _ in range(5):
            admission.noteRefusal("ack", "tcp", "192.0.2.1", "per-source")
        admission.noteRefusal("ack", "tcp", "192.0.2.1", "rate")
        admission.noteRefusal("ack", "unix", None, "max-connections")
        time.now += 10
        admission.noteRefusal("ack", "tcp", "192.0.2.1", "per-source")
    texts = [formatEvent(e) for e in events if e.get("log_namespace") == "sockd.admission"]
    assert texts == [
        "ack/tcp: refused 192.0.2.1 (per-source); further refusals of it are not logged for 10s",
        "ack/tcp: refused 192.0.2.1 (rate); further refusals of it are not logged for 10s",
        "ack/unix: refused unix (max-connections); further refusals of it are not logged for 10s",
        "ack/tcp: refused 192.0.2.1 (per-source); further refusals of it are not logged for 10s",
    ]


# -- the datagram guard --------------------------------------------------------------------------------------------


def makePolicy(**overrides: object) -> tuple[DatagramPolicy, FakeTime]:
    values: dict[str, object] = {"udp_rate": 0.0, "udp_budget": 0.0, "exempt": [], "refusal_log_interval": 10.0}
    values.update(overrides)
    time = FakeTime()
    return DatagramPolicy(Settings(**values), time, SMALL_SERVICE_PORTS), time  # type: ignore[arg-type]


@pytest.mark.parametrize("port", [0, 7, 9, 13, 17, 19, 37])
def test_small_service_source_ports_dropped(port: int) -> None:
    policy, _ = makePolicy()
    assert policy.verdict("192.0.2.1", port) == "source-port"
    assert policy.verdict("127.0.0.1", port) == "source-port"  # loopback too: loops start there


def test_ordinary_source_ports_pass() -> None:
    policy, _ = makePolicy()
    for port in (1, 8, 53, 123, 1024, 40000, 65535):
        assert policy.verdict("192.0.2.1", port) is None


def test_own_ports_dropped() -> None:
    policy, _ = makePolicy()
    policy.addOwnPort(51717)
    policy.addOwnPort(0)  # an unbound port adds nothing
    assert policy.verdict("192.0.2.1", 51717) == "source-port"
    assert policy.verdict("192.0.2.1", 51718) is None
    assert policy.blockedPorts == {7, 9, 13, 17, 19, 37, 51717}


def test_datagram_access_is_judged_first() -> None:
    policy, _ = makePolicy(deny=["192.0.2.0/24", "2001:db8::/32"], allow=[])
    assert policy.verdict("192.0.2.1", 7) == "access"
    assert policy.verdict("192.0.2.1", 40000) == "access"
    assert policy.verdict("::ffff:192.0.2.1", 40000) == "access"
    assert policy.verdict("2001:db8::1", 40000) == "access"
    assert policy.verdict("198.51.100.1", 40000) is None


def test_datagram_per_source_rate() -> None:
    policy, time = makePolicy(udp_rate=2.0, udp_burst=3)
    verdicts = [policy.verdict("192.0.2.1", 40000) for _ in range(5)]
    assert verdicts == [None, None, None, "rate", "rate"]
    assert policy.verdict("192.0.2.2", 40000) is None
    time.now += 0.5
    assert [policy.verdict("192.0.2.1", 40001) for _ in range(3)] == [None, "rate", "rate"]


def test_datagram_rate_counts_ipv4_mapped_peers_as_ipv4() -> None:
    """Admission counts ::ffff:a.b.c.d as a.b.c.d (sourceKey); the datagram rate should too."""
    policy, _ = makePolicy(udp_rate=1.0, udp_burst=2)
    verdicts = [policy.verdict(h, 40000) for h in ("192.0.2.1", "192.0.2.1", "::ffff:192.0.2.1")]
    assert verdicts == [None, None, "rate"]


def test_datagram_exempt_skips_rate_and_budget() -> None:
    """Loopback cannot be forged from the network: it reflects nothing, so no rate applies to it."""
    policy, time = makePolicy(udp_rate=1.0, udp_burst=1, udp_budget=10.0, exempt=["127.0.0.0/8"])
    assert [policy.verdict("127.0.0.1", 40000) for _ in range(12)] == [None] * 12
    assert [policy.verdict("192.0.2.1", 40000) for _ in range(3)] == [None, "rate", "rate"]
    assert policy.verdict("127.0.0.1", 7) == "source-port"  # the loop defence still applies


def test_datagram_global_budget() -> None:
    policy, time = makePolicy(udp_budget=5.0)
    verdicts = [policy.verdict(f"192.0.2.{n}", 40000) for n in range(1, 9)]
    assert verdicts == [None] * 5 + ["budget"] * 3
    time.now += 0.2
    assert [policy.verdict("198.51.100.1", 40000) for _ in range(3)] == [None, "budget", "budget"]


def test_datagram_reconfigure() -> None:
    policy, _ = makePolicy(udp_rate=1.0, udp_burst=1)
    assert policy.verdict("192.0.2.1", 40000) is None
    assert policy.verdict("192.0.2.1", 40000) == "rate"
    policy.reconfigure(Settings(udp_rate=0.0, udp_budget=0.0, exempt=[], deny=["10.0.0.0/8"]))
    assert [policy.verdict("192.0.2.1", 40000) for _ in range(10)] == [None] * 10
    assert policy.verdict("10.1.1.1", 40000) == "access"


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def test_guarded_protocol_passes_allowed_and_drops_others() -> None:
    policy, _ = makePolicy(deny=["192.0.2.66"], udp_rate=1.0, udp_burst=2)
    service = "guard-test-1"
    metrics = Metrics(process=False)
    guarded = GuardedDatagramProtocol(AckDatagramProtocol(MessageLog("ack", False)), policy, service,
                                      metrics=metrics)
    transport = FakeDatagramTransport()
    guarded.makeConnection(transport)
    before = {r: sample(metrics, "sockd_datagrams_dropped_total", service=service, transport="udp", reason=r)
              for r in ("source-port", "access", "rate")}
    with capturedLogs() as events:
        guarded.datagramReceived(b"hello", ("192.0.2.1", 40000))
        guarded.datagramReceived(b"loop", ("192.0.2.1", 7))
        guarded.datagramReceived(b"loop", ("192.0.2.1", 19))
        guarded.datagramReceived(b"denied", ("192.0.2.66", 40000))
        guarded.datagramReceived(b"again", ("192.0.2.1", 40000))
        guarded.datagramReceived(b"too many", ("192.0.2.1", 40000))
    assert transport.written == [(b"Got your message\n", ("192.0.2.1", 40000))] * 2
    after = {r: sample(metrics, "sockd_datagrams_dropped_total", service=service, transport="udp", reason=r)
             for r in ("source-port", "access", "rate")}
    assert {r: after[r] - before[r] for r in after} == {"source-port": 2, "access": 1, "rate": 1}
    assert sample(metrics, "sockd_answers_total", service=service, transport="udp") == 2
    assert sample(metrics, "sockd_datagrams_received_total", service=service, transport="udp") == 6
    assert sample(metrics, "sockd_sent_bytes_total", service=service, transport="udp") == 34
    warnings = [formatEvent(e) for e in events if e.get("log_namespace") == "sockd.udpguard"]
    # One warning per (source, reason) and interval: the two source-port drops log once.
    assert warnings == [
        "guard-test-1/udp: dropping datagrams from 192.0.2.1 (source-port); not logged again for 10s",
        "guard-test-1/udp: dropping datagrams from 192.0.2.66 (access); not logged again for 10s",
        "guard-test-1/udp: dropping datagrams from 192.0.2.1 (rate); not logged again for 10s",
    ]


def test_guarded_protocol_echo_exact_bytes_and_stop() -> None:
    policy, _ = makePolicy()
    inner = EchoDatagramProtocol()
    guarded = GuardedDatagramProtocol(inner, policy, "guard-test-2")
    transport = FakeDatagramTransport()
    guarded.makeConnection(transport)
    guarded.datagramReceived(b"\x00\xffdata", ("::1", 40000, 0, 0))
    assert transport.written == [(b"\x00\xffdata", ("::1", 40000, 0, 0))]
    assert inner.transport is not None
    guarded.doStop()
    assert inner.transport is None and guarded.transport is None


def test_guarded_protocol_replace_inner() -> None:
    policy, _ = makePolicy()
    old = EchoDatagramProtocol()
    guarded = GuardedDatagramProtocol(old, policy, "guard-test-3")
    transport = FakeDatagramTransport()
    guarded.makeConnection(transport)
    new = AckDatagramProtocol(MessageLog("ack", False))
    guarded.replaceInner(new)
    assert old.transport is None
    guarded.datagramReceived(b"x", ("192.0.2.1", 40000))
    assert transport.written == [(b"Got your message\n", ("192.0.2.1", 40000))]


def test_host_rules_decide_once_per_host_and_stay_bounded() -> None:
    from sockd.defences.access import HostRules

    rules = HostRules(deny=["192.0.2.0/24"], exempt=["127.0.0.0/8"], maxHosts=3)
    assert rules.lookup("192.0.2.9") == (False, False, "192.0.2.9")
    assert rules.lookup("::ffff:127.0.0.1") == (True, True, "127.0.0.1")  # counted and exempt as IPv4
    assert rules.lookup("198.51.100.7") == (True, False, "198.51.100.7")
    assert rules.lookup("198.51.100.7") is rules.lookup("198.51.100.7")  # decided once
    rules.lookup("198.51.100.8")
    assert len(rules._known) <= 3


def test_the_service_sees_a_whole_udp_transport_not_a_proxy() -> None:
    """The counting transport declares IUDPTransport and passes each of its methods through (no __getattr__)."""
    from twisted.internet.address import IPv4Address
    from twisted.internet.interfaces import IUDPTransport
    from zope.interface.verify import verifyObject

    class Port:
        def __init__(self) -> None:
            self.calls: list[tuple[str, Any]] = []
            self.broadcast = False

        def write(self, data: bytes, addr: Any = None) -> None:
            self.calls.append(("write", (data, addr)))

        def connect(self, host: str, port: int) -> None:
            self.calls.append(("connect", (host, port)))

        def getHost(self) -> IPv4Address:
            return IPv4Address("UDP", "127.0.0.1", 50007)

        def stopListening(self) -> None:
            self.calls.append(("stopListening", None))

        def setBroadcastAllowed(self, enabled: bool) -> None:
            self.broadcast = enabled

        def getBroadcastAllowed(self) -> bool:
            return self.broadcast

    policy, _ = makePolicy()
    inner = EchoDatagramProtocol()
    port = Port()
    GuardedDatagramProtocol(inner, policy, "guard-test-4").makeConnection(port)
    seen = inner.transport
    assert verifyObject(IUDPTransport, seen)
    assert not hasattr(type(seen), "__getattr__")
    seen.connect("127.0.0.1", 9)
    seen.setBroadcastAllowed(True)
    assert seen.getBroadcastAllowed() is True
    assert seen.getHost().port == 50007
    seen.stopListening()
    assert port.calls == [("connect", ("127.0.0.1", 9)), ("stopListening", None)]


# ---------------------------------------------------------------------------------------------------------------
# Per-connection warnings (EMFILE): one line per interval with counts.


def test_warning_summary_logs_the_first_then_counts_per_interval() -> None:
    from twisted.internet.task import Clock
    from twisted.logger import Logger

    from sockd.observe.throttle import WarningSummary

    clock = Clock()
    summary = WarningSummary(Logger(namespace="test.summary"), interval=10.0, clock=clock)
    with capturedLogs() as events:
        for _ in range(458):
            summary.note("closed (EMFILE)")
        summary.note("could not accept (ENFILE)")
        clock.advance(10)
        clock.advance(10)  # a quiet interval ends the window
        summary.note("closed (EMFILE)")
    lines = [formatEvent(e) for e in events if e.get("log_namespace") == "test.summary"]
    assert lines == [
        "closed (EMFILE); more like it are counted and logged every 10s",
        "in the last 10s: 457 x closed (EMFILE); 1 x could not accept (ENFILE)",
        "closed (EMFILE); more like it are counted and logged every 10s",
    ]
    summary.stop()
    assert clock.getDelayedCalls() == []


def test_twisted_accept_lines_are_summed_up_once_whatever_the_observers() -> None:
    from twisted.internet.task import Clock
    from twisted.logger import Logger, PredicateResult

    from sockd.observe.throttle import TwistedAcceptWarnings, WarningSummary

    clock = Clock()
    summary = WarningSummary(Logger(namespace="test.summary"), interval=10.0, clock=clock)
    predicate = TwistedAcceptWarnings(summary)
    closed = {"log_format": "EMFILE recovery: Closed socket from {address}", "address": ("127.0.0.1", 1)}
    with capturedLogs() as events:
        for _ in range(5):
            event = dict(closed)
            assert predicate(event) == PredicateResult.no
            assert predicate(event) == PredicateResult.no  # a second observer's filter: not counted again
        assert predicate({"log_format": "Re-reserving EMFILE recovery file descriptor."}) == PredicateResult.no
        assert predicate({"log_format": "Could not accept new connection ({acceptError})",
                          "acceptError": "ENFILE"}) == PredicateResult.no
        assert predicate({"log_format": "something else"}) == PredicateResult.maybe
        clock.advance(10)
    lines = [formatEvent(e) for e in events if e.get("log_namespace") == "test.summary"]
    assert len(lines) == 2 and lines[1] == (
        "in the last 10s: 4 x connection closed unanswered: descriptor table full (EMFILE);"
        " 1 x could not accept a connection (ENFILE)")
    summary.stop()
