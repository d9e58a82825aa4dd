"""The outbound HTTP resilience layer (secflow/http) against real loopback servers.

Every test uses a dependency name of its own, so the process-wide breakers and limiters
of one test (or of the sca tests' "osv") never leak into another.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from email.utils import format_datetime
from datetime import datetime, timedelta, timezone

import httpx
import pytest

from secflow.errors import Category, TransientError, classify
from secflow.http import (
    BreakerState,
    DependencySettings,
    RetryTransport,
    RollingWindowLimiter,
    TokenBucket,
    breaker_for,
    breaker_states,
    client_for,
    register_dependency,
    reset_http_state,
    settings_for,
)
from secflow.http.registry import unregister_dependency
from tests.servers import Reply, ScriptedServer

FAST = DependencySettings(rate=1000.0, burst=1000, retry_attempts=3, retry_initial=0.05, retry_max=0.2, deadline=10.0)
TIMEOUT = httpx.Timeout(connect=2.0, read=2.0, write=2.0, pool=2.0)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


class Timed(ScriptedServer):
    """A ScriptedServer that also answers POST and records when (monotonic) each request came."""

    def __init__(self, script: list[Reply]) -> None:
        self.times: list[float] = []
        self.replies = script
        self._times_lock = threading.Lock()

        def answer(n: int, path: str) -> Reply:
            with self._times_lock:
                self.times.append(time.monotonic())
            return self.replies[min(n, len(self.replies) - 1)]

        super().__init__(answer)
        handler = self.httpd.RequestHandlerClass
        handler.do_POST = handler.do_GET  # type: ignore[attr-defined]  # HTTP/1.0: body unread is fine


@pytest.fixture
def dep() -> Iterator[str]:
    name = f"test-{uuid.uuid4().hex[:8]}"
    register_dependency(name, FAST)
    yield name
    unregister_dependency(name)


@pytest.fixture
def dep1() -> Iterator[str]:
    """A dependency without retries inside the transport: every outcome reaches the caller."""
    name = f"test-{uuid.uuid4().hex[:8]}"
    register_dependency(name, FAST.model_copy(update={"retry_attempts": 1, "minimum_calls": 1000}))
    yield name
    unregister_dependency(name)


@pytest.fixture
def servers() -> Iterator[list[ScriptedServer]]:
    started: list[ScriptedServer] = []
    yield started
    for s in started:
        s.close()


def retry_layer(http: httpx.AsyncClient) -> RetryTransport:
    layer = http._transport
    while not isinstance(layer, RetryTransport):
        layer = layer.inner  # type: ignore[attr-defined]
    return layer


def serve(servers: list[ScriptedServer], script: list[Reply]) -> Timed:
    server = Timed(script)
    servers.append(server)
    return server


# --- retry ---------------------------------------------------------------------------------
async def test_503_503_200_is_recovered_by_the_retry_transport(dep: str, servers) -> None:
    server = serve(servers, [Reply(503), Reply(503), Reply(200, body=b"ok")])
    async with client_for(dep, base_url=server.url, timeout=TIMEOUT) as http:
        response = await http.get("/data")
    assert response.status_code == 200 and response.content == b"ok"
    assert len(server.requests) == 3
    # full jitter: each wait anywhere in [0, min(cap, initial * 2^(n-1))] (10 ms floor)
    retry = retry_layer(http)
    assert len(retry.delays) == 2
    assert all(0.0 < d <= 0.2 for d in retry.delays), retry.delays


async def test_out_of_attempts_hands_the_last_answer_back(dep: str, servers) -> None:
    server = serve(servers, [Reply(503)])
    async with client_for(dep, base_url=server.url, timeout=TIMEOUT) as http:
        response = await http.get("/")
    assert response.status_code == 503
    assert len(server.requests) == 3


async def test_retry_after_seconds_is_honoured(dep: str, servers) -> None:
    server = serve(servers, [Reply(429, headers={"Retry-After": "1"}), Reply(200)])
    async with client_for(dep, base_url=server.url, timeout=TIMEOUT) as http:
        response = await http.get("/")
    assert response.status_code == 200
    assert len(server.times) == 2
    assert server.times[1] - server.times[0] >= 1.0, "the retry must wait for Retry-After, not the 50 ms backoff"


async def test_retry_after_http_date_is_honoured(dep: str, servers) -> None:
    when = format_datetime(datetime.now(timezone.utc) + timedelta(seconds=3), usegmt=True)
    server = serve(servers, [Reply(503, headers={"Retry-After": when}), Reply(200)])
    async with client_for(dep, base_url=server.url, timeout=TIMEOUT) as http:
        response = await http.get("/")
    assert response.status_code == 200
    # HTTP-dates have whole-second resolution: a date 3 s ahead is at least 2 s ahead
    assert server.times[1] - server.times[0] >= 1.5


async def test_retry_after_beyond_the_deadline_goes_back_to_the_caller(servers) -> None:
    name = f"test-{uuid.uuid4().hex[:8]}"
    register_dependency(name, FAST.model_copy(update={"deadline": 8.0}))
    try:
        server = serve(servers, [Reply(503, headers={"Retry-After": "120"}), Reply(200)])
        async with client_for(name, base_url=server.url, timeout=httpx.Timeout(1.0)) as http:
            response = await http.get("/")
    finally:
        unregister_dependency(name)
    # not slept here: the activity's retry honours it via next_retry_delay
    assert response.status_code == 503 and len(server.requests) == 1
    assert classify(httpx.HTTPStatusError("x", request=response.request, response=response)).retry_after == 120


async def test_post_is_retried_only_when_the_server_did_not_act(dep: str, servers) -> None:
    server = serve(servers, [Reply(502), Reply(200)])
    async with client_for(dep, base_url=server.url, timeout=TIMEOUT) as http:
        response = await http.post("/", json={"q": 1})
        assert response.status_code == 502 and len(server.requests) == 1  # 502: it may have acted
    server.replies = [Reply(503), Reply(429), Reply(200)]
    server.requests.clear()
    async with client_for(dep, base_url=server.url, timeout=TIMEOUT) as http:
        assert (await http.post("/", json={"q": 1})).status_code == 200
    assert len(server.requests) == 3


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422, 501, 505])
async def test_other_4xx_and_501_505_are_not_retried(dep: str, servers, status: int) -> None:
    server = serve(servers, [Reply(status), Reply(200)])
    async with client_for(dep, base_url=server.url, timeout=TIMEOUT) as http:
        response = await http.get("/")
    assert response.status_code == status
    assert len(server.requests) == 1


async def test_connection_refused_is_retried_then_raised(dep: str) -> None:
    from tests.servers import closed_port

    async with client_for(dep, base_url=f"http://127.0.0.1:{closed_port()}", timeout=TIMEOUT) as http:
        with pytest.raises(httpx.ConnectError):
            await http.get("/")
    assert retry_layer(http).delays  # it did retry before giving up


# --- circuit breaker ---------------------------------------------------------------------------
def breaker_settings(**kw: object) -> DependencySettings:
    return FAST.model_copy(
        update={"retry_attempts": 1, "minimum_calls": 3, "failure_window": 60.0, "open_timeout": 30.0,
                "max_open_timeout": 100.0, **kw}
    )


async def test_breaker_opens_then_refuses_without_io(servers) -> None:
    reset_http_state()
    name = f"test-{uuid.uuid4().hex[:8]}"
    register_dependency(name, breaker_settings())
    clock = FakeClock()
    breaker = breaker_for(name, settings_for(name), clock=clock)
    server = serve(servers, [Reply(503)])
    try:
        async with client_for(name, base_url=server.url, timeout=TIMEOUT) as http:
            for _ in range(3):
                assert (await http.get("/")).status_code == 503
            assert breaker.state is BreakerState.OPEN
            clock.now += 10
            started = time.perf_counter()
            with pytest.raises(TransientError) as refused:
                await http.get("/")
            elapsed = time.perf_counter() - started
    finally:
        unregister_dependency(name)
    assert len(server.requests) == 3, "an open breaker must not send the request"
    assert refused.value.retry_after == pytest.approx(20.0)
    verdict = classify(refused.value)
    assert verdict.category is Category.TRANSIENT and verdict.retry_after == pytest.approx(20.0)
    assert elapsed < 0.5  # no I/O, no waiting (not a benchmark: a generous bound)
    snap = breaker_states()[name]
    assert snap.state is BreakerState.OPEN and snap.trips == 1 and snap.failures == 3
    assert snap.opened_at == 1000.0 and snap.next_half_open_at == 1030.0


async def test_failures_outside_the_window_do_not_open(servers) -> None:
    name = f"test-{uuid.uuid4().hex[:8]}"
    register_dependency(name, breaker_settings())
    clock = FakeClock()
    breaker = breaker_for(name, settings_for(name), clock=clock)
    server = serve(servers, [Reply(500)])
    try:
        async with client_for(name, base_url=server.url, timeout=TIMEOUT) as http:
            for _ in range(4):
                await http.get("/")
                clock.now += 40  # window is 60 s: never three failures inside one window
    finally:
        unregister_dependency(name)
    assert breaker.state is BreakerState.CLOSED and len(server.requests) == 4


async def test_half_open_success_closes_and_failure_reopens_longer(servers) -> None:
    name = f"test-{uuid.uuid4().hex[:8]}"
    register_dependency(name, breaker_settings())
    clock = FakeClock()
    breaker = breaker_for(name, settings_for(name), clock=clock)
    healthy = {"now": False}
    server = ScriptedServer(lambda n, path: Reply(200) if healthy["now"] else Reply(503))
    servers.append(server)
    try:
        async with client_for(name, base_url=server.url, timeout=TIMEOUT) as http:
            for _ in range(3):
                await http.get("/")
            assert breaker.state is BreakerState.OPEN

            # trial fails: open again, timeout doubled (30 -> 60)
            clock.now += 30
            assert (await http.get("/")).status_code == 503
            snap = breaker.snapshot()
            assert snap.state is BreakerState.OPEN and snap.trips == 2
            assert snap.next_half_open_at - clock.now == pytest.approx(60.0)

            # and doubled again, capped at max_open_timeout (100)
            clock.now += 60
            await http.get("/")
            assert breaker.snapshot().next_half_open_at - clock.now == pytest.approx(100.0)

            # trial succeeds: closed, and the timeout is back to 30 for the next trip
            clock.now += 100
            healthy["now"] = True
            assert (await http.get("/")).status_code == 200
            assert breaker.state is BreakerState.CLOSED
            healthy["now"] = False
            for _ in range(3):
                await http.get("/")
            assert breaker.snapshot().next_half_open_at - clock.now == pytest.approx(30.0)
    finally:
        unregister_dependency(name)


async def test_a_half_open_trial_is_one_attempt(servers) -> None:
    name = f"test-{uuid.uuid4().hex[:8]}"
    register_dependency(name, breaker_settings(retry_attempts=3, minimum_calls=1))
    clock = FakeClock()
    breaker = breaker_for(name, settings_for(name), clock=clock)
    server = serve(servers, [Reply(503)])
    try:
        async with client_for(name, base_url=server.url, timeout=TIMEOUT) as http:
            with pytest.raises(TransientError):  # attempt 1 fails and opens; attempt 2 refused
                await http.get("/")
            assert len(server.requests) == 1
            clock.now += 30  # half-open: one trial, and it fails
            with pytest.raises(TransientError) as refused:
                await http.get("/")
    finally:
        unregister_dependency(name)
    assert len(server.requests) == 2, "the trial must not be retried against a dependency that just failed it"
    assert refused.value.retry_after == pytest.approx(60.0)  # reopened with the doubled timeout
    assert breaker.snapshot().trips == 2


async def test_half_open_allows_only_the_trial_calls() -> None:
    clock = FakeClock()
    from secflow.http.breaker import CircuitBreaker

    breaker = CircuitBreaker("x", breaker_settings(minimum_calls=1), clock=clock)
    breaker.before_call()
    breaker.on_failure()
    clock.now += 30
    breaker.before_call()  # the one trial
    with pytest.raises(TransientError):
        breaker.before_call()
    breaker.on_abandoned()  # the trial was cancelled: its slot is free again
    breaker.before_call()
    breaker.on_success()
    assert breaker.state is BreakerState.CLOSED


async def test_4xx_and_429_do_not_count_as_breaker_failures(servers) -> None:
    name = f"test-{uuid.uuid4().hex[:8]}"
    register_dependency(name, breaker_settings(minimum_calls=2))
    breaker = breaker_for(name, settings_for(name), clock=FakeClock())
    server = serve(servers, [Reply(404), Reply(429), Reply(401), Reply(404)])
    try:
        async with client_for(name, base_url=server.url, timeout=TIMEOUT) as http:
            for _ in range(4):
                await http.get("/")
    finally:
        unregister_dependency(name)
    assert breaker.state is BreakerState.CLOSED and breaker.snapshot().failures == 0


async def test_refused_calls_neither_wait_for_nor_spend_rate_tokens(servers) -> None:
    from secflow.http import limiter_for

    name = f"test-{uuid.uuid4().hex[:8]}"
    register_dependency(name, breaker_settings(rate=1.0, burst=1, minimum_calls=1))
    clock = FakeClock()
    limiter = limiter_for(name, settings_for(name), clock=clock, sleep=clock.sleep)
    breaker_for(name, settings_for(name), clock=clock)
    server = serve(servers, [Reply(503)])
    try:
        async with client_for(name, base_url=server.url, timeout=TIMEOUT) as http:
            assert (await http.get("/")).status_code == 503  # the one token; opens the breaker
            for _ in range(20):
                with pytest.raises(TransientError):
                    await http.get("/")
    finally:
        unregister_dependency(name)
    assert clock.slept == [], "a refused call must not queue behind the rate limiter"
    clock.now += 1.0  # one second: exactly one new token, none spent by the refusals
    assert limiter.reserve() == 0.0 and limiter.reserve() > 0
    assert len(server.requests) == 1


async def test_retries_take_rate_tokens_too(servers) -> None:
    from secflow.http import limiter_for

    name = f"test-{uuid.uuid4().hex[:8]}"
    register_dependency(name, FAST.model_copy(update={"window_limit": 2, "window_seconds": 1000.0}))
    clock = FakeClock()
    limiter_for(name, settings_for(name), clock=clock, sleep=clock.sleep)
    server = serve(servers, [Reply(503), Reply(503), Reply(200)])
    try:
        async with client_for(name, base_url=server.url, timeout=TIMEOUT) as http:
            assert (await http.get("/")).status_code == 200
    finally:
        unregister_dependency(name)
    # three attempts, two per window: the third waited for the window to roll
    assert len(server.requests) == 3
    assert clock.slept == [pytest.approx(1000.0)]


# --- rate limiters ----------------------------------------------------------------------------
async def test_rolling_window_allows_5_then_blocks_the_6th_until_the_window_rolls() -> None:
    clock = FakeClock()
    limiter = RollingWindowLimiter(5, 30.0, clock=clock, sleep=clock.sleep)
    for i in range(5):
        assert await limiter.acquire() == 0.0
        clock.now += 1  # requests at t=0,1,2,3,4
    # t=5: the 6th waits until the first leaves the window (t=30)
    assert await limiter.acquire() == pytest.approx(25.0)
    assert clock.now == pytest.approx(1030.0)
    # t=30: the 7th waits for the second (t=1 -> 31)
    assert await limiter.acquire() == pytest.approx(1.0)
    # a full window later, five go at once again
    clock.now += 60
    assert [await limiter.acquire() for _ in range(5)] == [0.0] * 5


async def test_the_window_runs_from_the_answer_not_the_booking() -> None:
    # The server counts a request when it arrives, which is after the client booked it;
    # a settled slot (answer received) is the safe upper bound of that moment.
    clock = FakeClock()
    limiter = RollingWindowLimiter(1, 10.0, clock=clock, sleep=clock.sleep)
    slot = await limiter.acquire_slot()
    clock.now += 3.0  # the request took 3 s to be answered
    slot.settle()
    assert limiter.reserve() == pytest.approx(10.0), "10 s after the answer (13), not after the booking (10)"


async def test_token_bucket_bursts_then_paces() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=2.0, burst=3, clock=clock, sleep=clock.sleep)
    assert [await bucket.acquire() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert await bucket.acquire() == pytest.approx(0.5)
    assert bucket.reserve() == pytest.approx(0.5)  # concurrent reservations queue up
    assert bucket.reserve() == pytest.approx(1.0)


def test_nvd_uses_a_rolling_window_and_more_with_an_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SECFLOW_NVD_API_KEY", raising=False)
    assert (settings_for("nvd").window_limit, settings_for("nvd").window_seconds) == (5, 30.0)
    monkeypatch.setenv("SECFLOW_NVD_API_KEY", "k")
    assert settings_for("nvd").window_limit == 50
    assert settings_for("no-such-api") == DependencySettings()
    monkeypatch.setenv("SECFLOW_HTTP_EPSS_RATE", "0.5")
    assert settings_for("epss").rate == 0.5
    monkeypatch.setenv("SECFLOW_HTTP_EPSS_RATE", "0")
    with pytest.raises(ValueError):
        settings_for("epss")


async def test_the_limiter_is_shared_by_clients_of_one_dependency(servers) -> None:
    name = f"test-{uuid.uuid4().hex[:8]}"
    register_dependency(name, FAST.model_copy(update={"window_limit": 2, "window_seconds": 1.0}))
    server = serve(servers, [Reply(200)])
    try:
        async with client_for(name, base_url=server.url, timeout=TIMEOUT) as a, client_for(
            name, base_url=server.url, timeout=TIMEOUT
        ) as b:
            for http in (a, b, a):
                await http.get("/")
    finally:
        unregister_dependency(name)
    assert server.times[2] - server.times[0] >= 0.9  # the third waited for the window


# --- chaos ------------------------------------------------------------------------------------
def chaos(monkeypatch: pytest.MonkeyPatch, dep: str, faults: list[dict]) -> None:
    monkeypatch.setenv("SECFLOW_CHAOS", "1")
    monkeypatch.setenv("SECFLOW_CHAOS_CONFIG", json.dumps({dep: faults}))


async def test_chaos_status_first_n_with_retry_after(monkeypatch, dep1: str, servers) -> None:
    chaos(monkeypatch, dep1, [{"fault": "status", "status": 429, "retry_after": 7, "first_n": 2}])
    server = serve(servers, [Reply(200)])
    async with client_for(dep1, base_url=server.url, timeout=TIMEOUT) as http:
        answers = [await http.get("/") for _ in range(3)]
    assert [r.status_code for r in answers] == [429, 429, 200]
    assert answers[0].headers["Retry-After"] == "7"
    assert len(server.requests) == 1  # the injected answers made no request


async def test_chaos_sits_below_retries_and_breaker(monkeypatch, servers) -> None:
    # Injected faults look like the dependency failing: the retry transport retries them
    # (each retry is a request and counts towards first_n) and the breaker counts every
    # failed attempt.
    name, other = f"test-{uuid.uuid4().hex[:8]}", f"test-{uuid.uuid4().hex[:8]}"
    register_dependency(name, breaker_settings(retry_attempts=3, minimum_calls=10))
    register_dependency(other, breaker_settings(retry_attempts=3, minimum_calls=2))
    server = serve(servers, [Reply(200, body=b"ok")])
    try:
        chaos(monkeypatch, name, [{"fault": "status", "status": 503, "first_n": 2}])
        async with client_for(name, base_url=server.url, timeout=TIMEOUT) as http:
            response = await http.get("/")
        assert response.status_code == 200 and response.content == b"ok"
        assert len(retry_layer(http).delays) == 2 and len(server.requests) == 1
        assert breaker_states()[name].failures == 2

        chaos(monkeypatch, other, [{"fault": "reset"}])
        async with client_for(other, base_url=server.url, timeout=TIMEOUT) as http:
            # attempts 1 and 2 reset (two failures: open); attempt 3 is refused, so the
            # caller gets the breaker's transient error with its wait, not a third reset
            with pytest.raises(TransientError) as refused:
                await http.get("/")
            assert refused.value.retry_after == pytest.approx(30.0, abs=1.0)
            with pytest.raises(TransientError):  # and the next call is refused at the gate
                await http.get("/")
        snap = breaker_states()[other]
        assert snap.state is BreakerState.OPEN and snap.failures == 2 and snap.trips == 1
        assert len(server.requests) == 1
    finally:
        unregister_dependency(name)
        unregister_dependency(other)


async def test_chaos_probability_is_seedable(monkeypatch, dep1: str, servers) -> None:
    dep = dep1
    chaos(monkeypatch, dep, [{"fault": "status", "status": 503, "probability": 0.5}])
    monkeypatch.setenv("SECFLOW_CHAOS_SEED", "42")
    server = serve(servers, [Reply(200)])
    runs = []
    for _ in range(2):
        async with client_for(dep, base_url=server.url, timeout=TIMEOUT) as http:
            runs.append([(await http.get("/")).status_code for _ in range(20)])
    assert runs[0] == runs[1] and {503, 200} <= set(runs[0])


async def test_chaos_latency_hang_and_reset(monkeypatch, servers) -> None:
    server = serve(servers, [Reply(200)])
    quick = httpx.Timeout(connect=1.0, read=0.3, write=1.0, pool=1.0)
    for faults, expected in (
        ([{"fault": "hang"}], httpx.ReadTimeout),
        ([{"fault": "reset"}], httpx.ReadError),
    ):
        name = f"test-{uuid.uuid4().hex[:8]}"
        register_dependency(name, FAST)
        chaos(monkeypatch, name, faults)
        async with client_for(name, base_url=server.url, timeout=quick) as http:
            with pytest.raises(expected):
                await http.get("/")
    name = f"test-{uuid.uuid4().hex[:8]}"
    chaos(monkeypatch, name, [{"fault": "latency", "seconds": 0.3}])
    async with client_for(name, base_url=server.url, timeout=quick) as http:
        started = time.monotonic()
        assert (await http.get("/")).status_code == 200
        assert time.monotonic() - started >= 0.3


async def test_chaos_truncate_and_malformed(monkeypatch, servers) -> None:
    doc = json.dumps({"results": [{"id": i} for i in range(20)]}).encode()
    server = serve(servers, [Reply(200, body=doc)])
    for fault in ("truncate", "malformed"):
        name = f"test-{uuid.uuid4().hex[:8]}"
        chaos(monkeypatch, name, [{"fault": fault}])
        async with client_for(name, base_url=server.url, timeout=TIMEOUT) as http:
            response = await http.get("/")
        assert response.status_code == 200
        assert response.content != doc
        if fault == "truncate":
            assert response.content == doc[: len(doc) // 2]
        with pytest.raises(json.JSONDecodeError):
            json.loads(response.content)
    assert len(server.requests) == 2  # both went to the server for the real body


async def test_chaos_is_ignored_without_secflow_chaos(monkeypatch, dep: str, servers) -> None:
    chaos(monkeypatch, dep, [{"fault": "status", "status": 503}])
    monkeypatch.delenv("SECFLOW_CHAOS")
    server = serve(servers, [Reply(200)])
    async with client_for(dep, base_url=server.url, timeout=TIMEOUT) as http:
        assert (await http.get("/")).status_code == 200
    assert len(server.requests) == 1


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"osv": [{"fault": "status", "status": 999}]}, "osv[0].status"),
        ({"osv": [{"fault": "latency"}]}, "osv[0].seconds"),
        ({"osv": [{"fault": "status", "status": 503, "probability": 2}]}, "osv[0].probability"),
        ({"osv": [{"fault": "explode"}]}, "osv[0]"),
        ({"osv": [{"fault": "reset", "first_n": 1, "typo": 1}]}, "osv[0].typo"),
        ({"osv": {"fault": "reset"}}, "osv"),
    ],
)
def test_bad_chaos_config_names_the_field(monkeypatch, config: dict, field: str) -> None:
    monkeypatch.setenv("SECFLOW_CHAOS", "1")
    monkeypatch.setenv("SECFLOW_CHAOS_CONFIG", json.dumps(config))
    with pytest.raises(ValueError) as err:
        client_for("osv", base_url="http://127.0.0.1:9")
    assert "SECFLOW_CHAOS_CONFIG" in str(err.value) and field in str(err.value), str(err.value)


def test_chaos_config_that_is_not_json(monkeypatch) -> None:
    monkeypatch.setenv("SECFLOW_CHAOS", "1")
    monkeypatch.setenv("SECFLOW_CHAOS_CONFIG", "{osv: nope")
    with pytest.raises(ValueError, match="SECFLOW_CHAOS_CONFIG is not valid JSON"):
        client_for("osv", base_url="http://127.0.0.1:9")
