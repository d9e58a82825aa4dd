"""The NVD / EPSS / KEV stand-ins over real HTTP on 127.0.0.1: formats, paging, NVD's
rolling rate limit (with an injected clock) and scripted faults."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from secflow.enrichment import parse_epss, parse_kev, parse_nvd
from tests.enrich_standins import EpssStandin, Fault, KevStandin, NvdStandin


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(trust_env=False, timeout=5.0) as client:
        yield client


def nvd_get(http: httpx.Client, nvd: NvdStandin, cve: str | None, **headers: str) -> httpx.Response:
    params = {"cveId": cve} if cve is not None else {}
    return http.get(nvd.url + NvdStandin.PATH, params=params, headers=headers)


# --- NVD ------------------------------------------------------------------------------
def test_nvd_format_and_unknown(http: httpx.Client) -> None:
    nvd = NvdStandin(limit_public=100)
    try:
        r = nvd_get(http, nvd, "CVE-2021-44228")
        assert r.status_code == 200
        doc = r.json()
        assert doc["format"] == "NVD_CVE" and doc["version"] == "2.0" and doc["totalResults"] == 1
        record = parse_nvd(doc)
        assert record is not None and record.cvss3_score == 10.0
        unknown = nvd_get(http, nvd, "CVE-1999-99999").json()
        assert unknown["totalResults"] == 0 and unknown["vulnerabilities"] == []
        assert parse_nvd(unknown) is None
        for bad in (nvd_get(http, nvd, None), nvd_get(http, nvd, "log4shell"), http.get(nvd.url + NvdStandin.PATH + "?cveId=CVE-2021-44228&x=1")):
            assert bad.status_code == 404 and bad.content == b"" and bad.headers["message"]
        assert nvd.requests[0].query == {"cveId": ["CVE-2021-44228"]}
        assert nvd.requests[0].path == NvdStandin.PATH
        assert not nvd.throttled
    finally:
        nvd.close()


def test_nvd_rolling_window_without_key(http: httpx.Client) -> None:
    clock = FakeClock()
    nvd = NvdStandin(clock=clock)
    try:
        for i in range(5):
            clock.now += 1
            assert nvd_get(http, nvd, "CVE-2014-0160").status_code == 200, i
        assert not nvd.throttled
        clock.now += 1  # 6th request, 6 s after the 1st: over 5 per rolling 30 s
        assert nvd_get(http, nvd, "CVE-2014-0160").status_code == 403
        assert len(nvd.throttled) == 1
        clock.now = 1000 + 1 + 30  # the 1st has left the window: one slot free
        assert nvd_get(http, nvd, "CVE-2014-0160").status_code == 200
        assert nvd_get(http, nvd, "CVE-2014-0160").status_code == 403
        clock.now += 60
        assert nvd_get(http, nvd, "CVE-2014-0160").status_code == 200
        assert len(nvd.throttled) == 2
    finally:
        nvd.close()


def test_nvd_api_key(http: httpx.Client) -> None:
    clock = FakeClock()
    nvd = NvdStandin(clock=clock, api_key="k-123")
    try:
        for _ in range(50):
            assert nvd_get(http, nvd, "CVE-2017-5638", apiKey="k-123").status_code == 200
        assert nvd_get(http, nvd, "CVE-2017-5638", apiKey="k-123").status_code == 403
        wrong = nvd_get(http, nvd, "CVE-2017-5638", apiKey="nope")
        assert wrong.status_code == 404  # what real NVD answers for an invalid key
        assert nvd.requests[0].headers.get("apiKey") == "k-123" or nvd.requests[0].headers.get("apikey") == "k-123"
    finally:
        nvd.close()
    strict = NvdStandin(api_key="k-123", invalid_key_status=401)
    try:
        assert nvd_get(http, strict, "CVE-2017-5638", apiKey="nope").status_code == 401
    finally:
        strict.close()


def test_nvd_scripted_faults(http: httpx.Client) -> None:
    nvd = NvdStandin(
        faults=[Fault(503), Fault(503), Fault(429, retry_after="2"), Fault(401), Fault.passthrough(), Fault.truncated()],
        limit_public=100,
    )
    try:
        statuses = [nvd_get(http, nvd, "CVE-2023-4863") for _ in range(7)]
        assert [r.status_code for r in statuses] == [503, 503, 429, 401, 200, 200, 200]
        assert statuses[2].headers["Retry-After"] == "2"
        assert statuses[4].json()["totalResults"] == 1
        with pytest.raises(ValueError):
            statuses[5].json()  # truncated body
        assert statuses[6].json()["totalResults"] == 1
        assert len(nvd.requests) == 7
    finally:
        nvd.close()


def test_nvd_raw_and_wrong_shape_bodies(http: httpx.Client) -> None:
    nvd = NvdStandin(faults=[Fault.raw(b"<html>Bad gateway</html>"), Fault(200, body={"unexpected": "shape"})])
    try:
        raw, shape, ok = (nvd_get(http, nvd, "CVE-2023-4863") for _ in range(3))
        assert raw.status_code == 200 and raw.content == b"<html>Bad gateway</html>"
        assert shape.status_code == 200 and shape.json() == {"unexpected": "shape"}
        assert ok.json()["totalResults"] == 1
    finally:
        nvd.close()


def test_outage_starts_at_the_next_request_and_ends_on_the_clock(http: httpx.Client) -> None:
    clock = FakeClock()
    nvd = NvdStandin(clock=clock, limit_public=100)
    try:
        assert nvd_get(http, nvd, "CVE-2023-4863").status_code == 200
        nvd.outage(Fault(503), seconds=10)
        clock.now += 100  # the outage has not started yet: it starts at the next request
        assert [nvd_get(http, nvd, "CVE-2023-4863").status_code for _ in range(2)] == [503, 503]
        clock.now += 9.9
        assert nvd_get(http, nvd, "CVE-2023-4863").status_code == 503
        clock.now += 0.1
        assert nvd_get(http, nvd, "CVE-2023-4863").status_code == 200
        assert len(nvd.outage_requests) == 3 and len(nvd.requests) == 5
    finally:
        nvd.close()


def test_nvd_hang(http: httpx.Client) -> None:
    nvd = NvdStandin(faults=[Fault.hang(30)], limit_public=100)
    try:
        started = time.monotonic()
        with httpx.Client(trust_env=False, timeout=0.5) as quick, pytest.raises(httpx.ReadTimeout):
            nvd_get(quick, nvd, "CVE-2023-4863")
        assert time.monotonic() - started < 5
        assert nvd_get(http, nvd, "CVE-2023-4863").status_code == 200
    finally:
        nvd.close()


def test_nvd_throttle_comes_before_faults(http: httpx.Client) -> None:
    clock = FakeClock()
    nvd = NvdStandin(clock=clock, limit_public=1, faults=[Fault(503)])
    try:
        assert nvd_get(http, nvd, "CVE-2023-4863").status_code == 503
        assert nvd_get(http, nvd, "CVE-2023-4863").status_code == 403
        assert nvd.faults == []
    finally:
        nvd.close()


# --- EPSS -----------------------------------------------------------------------------
def test_epss_batch_and_paging(http: httpx.Client) -> None:
    epss = EpssStandin()
    try:
        wanted = ["CVE-2021-44228", "CVE-2014-0160", "CVE-1999-99999", "CVE-2020-1747"]
        r = http.get(epss.url + EpssStandin.PATH, params={"cve": ",".join(wanted)})
        doc = r.json()
        assert r.status_code == 200 and doc["status"] == "OK" and doc["total"] == 3
        assert set(parse_epss(doc)) == {"CVE-2021-44228", "CVE-2014-0160", "CVE-2020-1747"}
        assert epss.batches()[0] == wanted

        seen: list[str] = []
        offset = 0
        while True:
            page = http.get(epss.url + EpssStandin.PATH, params={"offset": offset, "limit": 10}).json()
            assert page["offset"] == offset and page["limit"] == 10 and len(page["data"]) <= 10
            seen += [row["cve"] for row in page["data"]]
            offset += 10
            if offset >= page["total"]:
                break
        assert len(seen) == len(set(seen)) == len(epss.rows) >= 30
        assert http.get(epss.url + EpssStandin.PATH, params={"limit": "x"}).status_code == 400
    finally:
        epss.close()


def test_epss_faults(http: httpx.Client) -> None:
    epss = EpssStandin(faults=[Fault(503), Fault.truncated()])
    try:
        url = epss.url + EpssStandin.PATH + "?cve=CVE-2021-44228"
        assert http.get(url).status_code == 503
        with pytest.raises(ValueError):
            http.get(url).json()
        assert parse_epss(http.get(url).json())["CVE-2021-44228"].probability > 0.5
    finally:
        epss.close()


# --- KEV ------------------------------------------------------------------------------
def test_kev_feed(http: httpx.Client) -> None:
    kev = KevStandin(faults=[Fault(503)])
    try:
        assert http.get(kev.feed_url).status_code == 503
        catalog = parse_kev(http.get(kev.feed_url).json())
        assert "CVE-2021-44228" in catalog and "CVE-2024-3094" not in catalog
        assert http.get(kev.url + "/other.json").status_code == 404
    finally:
        kev.close()
    custom = KevStandin(path="/kev.json")
    try:
        assert http.get(custom.url + "/kev.json").json()["count"] == len(custom.catalog["vulnerabilities"])
        assert custom.requests[0].path == "/kev.json"
    finally:
        custom.close()
