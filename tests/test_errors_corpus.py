"""secflow.errors: the labelled corpus, Retry-After, the Temporal mapping, reachability."""

from __future__ import annotations

import socket
from collections import Counter
from datetime import datetime, timedelta, timezone

import httpx
import pytest
from temporalio.api.failure.v1 import Failure
from temporalio.converter import DataConverter
from temporalio.exceptions import ApplicationError

from secflow.errors import (
    NON_RETRYABLE,
    Category,
    Classification,
    ExternalToolError,
    PermanentError,
    ScopeViolation,
    TransientError,
    classify,
    parse_retry_after,
    to_application_error,
)
from tests.corpus.cases import HOLDOUT_FILE, TUNE_FILE, HarvestedCase, in_holdout, load
from tests.error_corpus import Case, build_corpus, evaluate, live_count


@pytest.fixture(scope="module")
def corpus() -> list[Case]:
    return build_corpus()


# --------------------------------------------------------------------------------------
# the corpus
# --------------------------------------------------------------------------------------
def test_corpus_is_big_and_partly_live(corpus: list[Case]) -> None:
    assert len(corpus) >= 200
    assert live_count(corpus) >= 25
    for case in corpus:
        assert isinstance(case.expected, Category) and case.note


def test_corpus_accuracy(corpus: list[Case]) -> None:
    accuracy, mismatches = evaluate(corpus)
    print(f"\nclassifier accuracy on {len(corpus)} cases ({live_count(corpus)} live): {accuracy:.4f}")
    for m in mismatches:
        print(f"  MISMATCH {m}")
    assert accuracy > 0.95


def test_every_category_is_labelled_and_reached(corpus: list[Case]) -> None:
    assert {case.expected for case in corpus} == set(Category)
    reached = {classify(case.error, **case.kwargs).category for case in corpus}
    assert reached == set(Category)


def test_every_category_reachable_from_plain_inputs() -> None:
    examples = {
        Category.TRANSIENT: classify("connection reset by peer"),
        Category.RESOURCE: classify("", exit_code=137),
        Category.VALIDATION: classify("", http_status=422),
        Category.PERMANENT: classify("", http_status=401),
        Category.EXTERNAL_TOOL: classify("Segmentation fault (core dumped)", tool="nmap"),
        Category.INTERNAL: classify(KeyError("x")),
        Category.SECURITY: classify("target 203.0.113.9 is out of scope"),
        Category.USER_ABORT: classify("cancelled by operator"),
    }
    for expected, got in examples.items():
        assert got.category is expected, (expected, got)


def test_retryable_follows_the_category(corpus: list[Case]) -> None:
    assert NON_RETRYABLE == {
        Category.VALIDATION, Category.PERMANENT, Category.INTERNAL, Category.SECURITY, Category.USER_ABORT,
    }
    for case in corpus:
        got = classify(case.error, **case.kwargs)
        assert got.retryable is (got.category not in NON_RETRYABLE)
        assert got.reason


# --------------------------------------------------------------------------------------
# precedence
# --------------------------------------------------------------------------------------
def test_scope_beats_everything_but_our_own_types() -> None:
    assert classify(ValueError("redirect target 10.9.9.9 is out of scope")).category is Category.SECURITY
    assert classify("host not in scope", http_status=503).category is Category.SECURITY
    assert classify(ScopeViolation("x")).category is Category.SECURITY
    # An explicit SecFlow type is the author's decision and wins over text.
    assert classify(TransientError("out of scope? no: a proxy timeout")).category is Category.TRANSIENT


def test_unknown_exception_is_internal_unknown_tool_message_is_external() -> None:
    class WeirdThing(Exception):
        pass

    got = classify(WeirdThing("the frobnicator jammed"))
    assert got.category is Category.INTERNAL and not got.retryable
    assert classify("the frobnicator jammed", tool="zap").category is Category.EXTERNAL_TOOL


def test_most_specific_cause_decides() -> None:
    inner = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    outer = RuntimeError("enrichment failed")
    outer.__cause__ = inner
    assert classify(outer).category is Category.PERMANENT
    wrapped = httpx.ConnectError("[Errno -2] Name or service not known", request=httpx.Request("GET", "http://nvd.invalid/"))
    assert classify(wrapped).category is Category.PERMANENT
    assert classify(httpx.ConnectError("[Errno 111] Connection refused")).category is Category.TRANSIENT


def test_missing_binary_reason() -> None:
    got = classify(FileNotFoundError(2, "No such file or directory", "nuclei"))
    assert got.category is Category.PERMANENT and "missing binary" in got.reason


def test_exit_code_reasons() -> None:
    assert classify("", exit_code=139).reason == "exit 139 (SIGSEGV)"
    assert classify("", exit_code=-9).category is Category.RESOURCE
    assert classify(ExternalToolError("x", exit_code=137)).category is Category.EXTERNAL_TOOL  # explicit wins
    assert classify(ValueError("bad"), exit_code=0).category is Category.VALIDATION  # 0: the exception decides


# --------------------------------------------------------------------------------------
# Retry-After
# --------------------------------------------------------------------------------------
NOW = datetime(2015, 10, 21, 7, 27, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("120", 120.0),
        (" 5 ", 5.0),
        ("0", 0.0),
        ("1.5", 1.5),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 60.0),
        ("Wednesday, 21-Oct-15 07:28:30 GMT", 90.0),  # RFC 850 form
        ("Wed Oct 21 07:29:00 2015", 120.0),  # asctime form
        ("Wed, 21 Oct 2015 07:00:00 GMT", 0.0),  # in the past: now, never negative
        ("-5", None),
        ("soon", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, now=NOW) == expected


def test_parse_retry_after_naive_now_is_utc() -> None:
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=NOW.replace(tzinfo=None)) == 60.0


def test_http_status_error_carries_retry_after() -> None:
    request = httpx.Request("GET", "https://services.nvd.nist.gov/rest/json/cves/2.0")
    seconds = httpx.HTTPStatusError("503", request=request, response=httpx.Response(503, headers={"Retry-After": "30"}, request=request))
    assert classify(seconds) == Classification(Category.TRANSIENT, True, "HTTP 503", 30.0)
    future = (datetime.now(timezone.utc) + timedelta(minutes=2)).strftime("%a, %d %b %Y %H:%M:%S GMT")
    dated = httpx.HTTPStatusError("429", request=request, response=httpx.Response(429, headers={"Retry-After": future}, request=request))
    got = classify(dated)
    assert got.category is Category.TRANSIENT and got.retry_after is not None and 100 < got.retry_after <= 120
    reset = str(int(datetime.now(timezone.utc).timestamp()) + 40)
    limited = httpx.HTTPStatusError(
        "403", request=request,
        response=httpx.Response(403, headers={"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": reset}, text="{}", request=request),
    )
    got = classify(limited)
    assert got.category is Category.TRANSIENT and got.retry_after is not None and 30 < got.retry_after <= 41


def test_retry_after_from_our_errors_and_temporal() -> None:
    assert classify(TransientError("x", retry_after=12.5)).retry_after == 12.5
    app = ApplicationError("x", type="transient", next_retry_delay=timedelta(seconds=3))
    assert classify(app).retry_after == 3.0
    assert classify("429 Too Many Requests: retry after 20 seconds").retry_after == 20.0


# --------------------------------------------------------------------------------------
# to_application_error
# --------------------------------------------------------------------------------------
def test_to_application_error_types_and_retry() -> None:
    err = to_application_error(httpx.ReadTimeout("timed out"), next_retry_delay=timedelta(seconds=7), details=[{"attempt": 2}])
    assert isinstance(err, ApplicationError)
    assert err.type == "transient" and err.non_retryable is False
    assert err.next_retry_delay == timedelta(seconds=7)
    assert err.details == ({"attempt": 2},)
    assert err.message == "ReadTimeout: timed out"

    bad = to_application_error(PermanentError("Jira project SEC does not exist"))
    assert bad.type == "permanent" and bad.non_retryable is True

    forced = to_application_error("scanner said no", Classification(Category.EXTERNAL_TOOL, True, "test"))
    assert forced.type == "external_tool" and forced.non_retryable is False and forced.message == "scanner said no"


@pytest.mark.parametrize("category", list(Category))
def test_to_application_error_non_retryable_matches_category(category: Category) -> None:
    verdict = Classification(category, category not in NON_RETRYABLE, "test")
    err = to_application_error(RuntimeError("x"), verdict)
    assert err.type == category.value
    assert err.non_retryable is (category in NON_RETRYABLE)


def test_to_application_error_redacts_the_message() -> None:
    request = httpx.Request("GET", "https://admin:hunter2@127.0.0.1:8443/api?api_key=k_live_42424242")
    response = httpx.Response(401, request=request)
    try:
        response.raise_for_status()
    except httpx.HTTPStatusError as exc:
        err = to_application_error(exc)
    assert err.type == "permanent" and err.non_retryable
    assert "hunter2" not in err.message and "k_live_42424242" not in err.message
    assert err.message.startswith("HTTPStatusError: Client error '401 Unauthorized'")
    assert to_application_error("Authorization: Bearer abcdef0123456789").message == "Authorization: Bearer [REDACTED]"


def _to_failure(exc: BaseException) -> Failure:
    dc = DataConverter.default
    failure = Failure()
    dc.failure_converter.to_failure(exc, dc.payload_converter, failure)
    return failure


def test_implicit_context_stays_out_of_history() -> None:
    """Raised inside `except`, the raw exception is the implicit context; it must not serialise."""
    try:
        try:
            raise ConnectionError("POST https://hooks.slack.com/services/T1/B2/leakyleaky failed")
        except ConnectionError as exc:
            raise to_application_error(exc)
    except ApplicationError as app:
        failure = _to_failure(app)
    assert "leakyleaky" not in str(failure)
    assert not failure.HasField("cause")
    assert failure.application_failure_info.type == "transient"


def test_explicit_cause_chain_is_redacted_in_history() -> None:
    """`raise ... from err` is an easy mistake: the chain Temporal stores is redacted anyway.

    (Secrets come from variables, as in real code: stack traces quote source lines.)
    """
    token, password = "inner-secret-1", "outer-secret-2"
    try:
        try:
            try:
                raise OSError(f"reading token={token} from vault")
            except OSError as inner:
                raise ConnectionError(f"POST https://admin:{password}@127.0.0.1/x failed") from inner
        except ConnectionError as exc:
            raise to_application_error(exc) from exc
    except ApplicationError as app:
        failure = _to_failure(app)
        rendered = "".join(__import__("traceback").format_exception(app))
    text = str(failure)
    assert "inner-secret-1" not in text and "outer-secret-2" not in text
    assert "inner-secret-1" not in rendered and "outer-secret-2" not in rendered
    assert failure.application_failure_info.type == "transient"
    assert failure.cause.application_failure_info.type == "ConnectionError"
    assert failure.cause.message == "ConnectionError: POST https://admin:[REDACTED]@127.0.0.1/x failed"
    assert failure.cause.cause.application_failure_info.type == "OSError"


def test_to_application_error_caps_huge_messages() -> None:
    err = to_application_error(ExternalToolError("x" * 100_000))
    assert len(err.message) <= 4000


# --------------------------------------------------------------------------------------
# the harvested corpus (tests/corpus/): real failures produced on this machine
# --------------------------------------------------------------------------------------
# What the classifier reaches on the hold-out (tests/corpus/holdout.json, committed before
# any rule change and never tuned on): 39/45 at first sight, 40/45 after tuning on the
# tune part. The goal is 98 %; the floor is what is reached, so a regression fails.
HOLDOUT_FLOOR = 40 / 45
TUNE_FLOOR = 83 / 84
# Round 2 (new scenarios harvested after round 1's rule changes; holdout-2.json committed
# before round 2's): 12/16 at first sight, 13/16 after tuning on tune-2 (24/26).
HOLDOUT2_FILE, TUNE2_FILE = HOLDOUT_FILE.with_name("holdout-2.json"), TUNE_FILE.with_name("tune-2.json")
HOLDOUT2_FLOOR = 13 / 16
TUNE2_FLOOR = 24 / 26


def _per_category(cases: list[HarvestedCase]) -> tuple[float, dict[str, tuple[int, int]], list[str]]:
    total: Counter[str] = Counter()
    right: Counter[str] = Counter()
    misses = []
    for case in cases:
        got = case.classify()
        total[case.expected.value] += 1
        if got.category is case.expected:
            right[case.expected.value] += 1
        else:
            misses.append(f"{case.case_id}: expected {case.expected.value}, got {got.category.value} ({got.reason})")
    accuracy = sum(right.values()) / len(cases)
    return accuracy, {c: (right[c], total[c]) for c in sorted(total)}, misses


def _report(name: str, cases: list[HarvestedCase]) -> float:
    accuracy, by_category, misses = _per_category(cases)
    print(f"\n{name}: {accuracy:.4f} ({sum(r for r, _ in by_category.values())}/{len(cases)})")
    for category, (r, t) in by_category.items():
        print(f"  {category:<14} {r}/{t}  {r / t:.3f}")
    for miss in misses:
        print(f"  MISS {miss}")
    return accuracy


def test_harvested_files_are_split_by_hash_and_labelled_by_rule() -> None:
    holdout, tune = load(HOLDOUT_FILE) + load(HOLDOUT2_FILE), load(TUNE_FILE) + load(TUNE2_FILE)
    assert len(holdout) >= 60 and len(tune) >= 110
    assert all(in_holdout(c.case_id) for c in holdout)
    assert not any(in_holdout(c.case_id) for c in tune)
    assert not {c.case_id for c in holdout} & {c.case_id for c in tune}
    for case in holdout + tune:
        assert case.rule.split(":", 1)[0] and case.expected in Category
        assert case.extra.get("fidelity", True), case.case_id  # rebuilt like it was live
        assert case.error() is not None


def test_harvested_tune_accuracy() -> None:
    assert _report("harvested tune part", load(TUNE_FILE)) >= TUNE_FLOOR


def test_harvested_holdout_accuracy_per_category() -> None:
    assert _report("harvested HOLD-OUT (never tuned on)", load(HOLDOUT_FILE)) >= HOLDOUT_FLOOR


def test_harvested_round2_tune_accuracy() -> None:
    assert _report("harvested tune part, round 2", load(TUNE2_FILE)) >= TUNE2_FLOOR


def test_harvested_round2_holdout_accuracy_per_category() -> None:
    assert _report("harvested HOLD-OUT round 2 (never tuned on)", load(HOLDOUT2_FILE)) >= HOLDOUT2_FLOOR


def test_harvested_holdouts_together() -> None:
    both = load(HOLDOUT_FILE) + load(HOLDOUT2_FILE)
    assert _report("harvested HOLD-OUTS, rounds 1 and 2", both) >= (40 + 13) / (45 + 16)
