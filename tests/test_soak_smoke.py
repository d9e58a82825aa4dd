"""The fault soak's smoke mode, for real: `python -m bench.soak --scenarios 10 --kills 2` (its
own dev server with SQLite, worker processes SIGKILLed and restarted, the dev server
restarted, loopback stand-ins), then the report's structure, and proof that its checks
can fail: a duplicate finding, a lost finding, a wrong outcome, a ledger rung:outcome that
never happened and a recovery validation that never ran, planted after the run, are each
caught when the run is judged again.

The full soak (100+ scenarios, 50 kills) is a bench, not a test: README, "Fault soak".
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("soak")
    env = {k: v for k, v in os.environ.items() if k not in ("SECFLOW_DATA_DIR", "TEMPORAL_ADDRESS")}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.soak",
            "--scenarios",
            "10",
            "--kills",
            "2",
            "--workers",
            "2",
            "--seed",
            "3",
            # a kill during a bookkeeping activity can hold a run for its 10 min timeout
            # (README, "Fault soak"): such a scenario is given up and reported, not waited for
            "--timeout",
            "200",
            "--out",
            str(out),
            "--plots",
            str(out / "plots"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    # 0: every goal met; 1: some check failed (the report says which); anything else is a crash
    assert proc.returncode in (0, 1), proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def _report(out: Path) -> dict[str, Any]:
    return json.loads((out / "soak.json").read_text())


def test_the_smoke_run_reports_every_figure(smoke: Path) -> None:
    r = _report(smoke)
    assert r["scenarios"] == 10 and len(r["results"]) == 10
    # kills stop when the scenarios are done; the long port scan keeps the run going for both
    assert 1 <= r["crash"]["kills"] <= 2, "workers were SIGKILLed"
    assert r["server_restart"] is not None and r["server_restart"]["seconds"] > 0, "the dev server restarted once"
    assert set(r["goals"]) == {
        "scenarios_as_expected",
        "no_findings_lost",
        "no_findings_duplicated",
        "detection_p99_under_5s",
        "recovery_actions_logged",
        "kills_done",
    }
    assert set(r["recovery_by_probability"]) == {"0.1", "0.2", "0.3", "0.4", "0.5"}
    for key in ("detection_seconds", "detection_p50", "detection_p99", "lost_attempts", "lost_work_per_tool"):
        assert key in r["crash"]
    assert r["findings_expected"] > 0 and r["wall_seconds"] > 0
    assert 0 <= r["as_expected"] <= r["scenarios"]
    assert set(r["validations"]) >= {"validated", "unverified", "stages_unverified"}
    # every error event is counted under the rung that handled it last (its ledger pair)
    assert sum(r["ledger_rungs"].values()) == r["ledger_events"]
    for j in r["results"]:
        assert j["outcome"] in ("completed", "completed_with_errors", "failed", "cancelled"), j
        assert j["as_expected"] == (not j["problems"])
    # the long scans the kills are for are always in the mix
    assert {"ports_slow", "bandit_slow"} <= {j["kind"] for j in r["results"]}
    md = (smoke / "soak.md").read_text()
    assert "scenarios ending as expected" in md and "crash detection" in md and "recovery validations" in md
    for png in ("soak-recovery-rate.png", "soak-detection-time.png"):
        assert (smoke / "plots" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    logs = sorted((smoke / "workers").glob("worker-*.log"))
    assert len(logs) == 2 + r["crash"]["kills"], "two workers plus one replacement per kill"


def test_planted_faults_in_the_results_are_caught(smoke: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bench import soak_report
    from secflow.findings import Finding, Severity

    before = _report(smoke)
    run = json.loads((smoke / "scenarios.json").read_text())
    rows = {row["sid"]: row for row in run["scenarios"]}
    victim = next(j for j in before["results"] if j["expected_findings"] and not j["duplicated"] and not j["lost"])
    row = rows[victim["sid"]]
    rule, location = row["truth"][0]

    # a duplicate: the same rule and place stored twice (another fingerprint: its target differs)
    store = soak_report.store_for(smoke)
    twin = Finding.new(
        tool="planted", rule_id=rule, title="planted duplicate", severity=Severity.LOW, target="planted-twin", location=location
    )
    store.upsert_findings(row["workflow_id"], "scan", [twin])
    # a lost finding: the ground truth says one more should be there
    row["truth"].append(["planted-rule", "nowhere:1"])
    # a wrong end: another scenario was expected to end otherwise
    other = next(r for r in run["scenarios"] if r["sid"] != victim["sid"] and r["status"])
    other["expect"]["outcomes"] = ["cancelled"]
    # a rung the ledger never shows, and a validation that never ran, on a third scenario
    third = next(
        r
        for r in run["scenarios"]
        if r["sid"] not in (victim["sid"], other["sid"])
        and not judged_before(before, r)["validated"]
        and not judged_before(before, r)["unverified"]
    )
    third["expect"]["ledger_required"] = ["fail:failed"]
    third["expect"]["validated"] = True
    (smoke / "scenarios.json").write_text(json.dumps(run))

    after = soak_report.judge_run(smoke)
    judged = {j["sid"]: j for j in after["results"]}
    assert judged[victim["sid"]]["duplicated"] == [f"{rule} @ {location} x2"]
    assert judged[victim["sid"]]["lost"] == ["planted-rule @ nowhere:1"]
    assert not judged[victim["sid"]]["as_expected"]
    assert after["findings_duplicated"] == before["findings_duplicated"] + 1
    assert after["findings_lost"] == before["findings_lost"] + 1
    assert not judged[other["sid"]]["as_expected"]
    assert any("expected cancelled" in p for p in judged[other["sid"]]["problems"])
    assert not after["goals"]["no_findings_duplicated"] and not after["goals"]["no_findings_lost"]
    assert not after["goals"]["scenarios_as_expected"] and not after["goals_met"]
    assert not judged[third["sid"]]["as_expected"]
    assert any("ledger rung:outcome missing: ['fail:failed']" in p for p in judged[third["sid"]]["problems"])
    assert "no recovery validation" in judged[third["sid"]]["problems"]


def judged_before(report: dict[str, Any], row: dict[str, Any]) -> dict[str, Any]:
    return next(j for j in report["results"] if j["sid"] == row["sid"])
