"""A stage's fan-out over its targets: bounded, batched, and out of workflow state.

`TargetRunner` runs one round of a stage: it reads the targets batch by batch from the
stored spec (a cursor, never the list), keeps at most `concurrency` tool activities in
flight, and writes every target's outcome to the store once its batch is done. What it
keeps is `ShardProgress`: counts, the findings total and the last few failures.

`StageTargetsWorkflow` is that runner as a child workflow of the assessment, one per
stage round: it continues as new before its history passes its event budget (carrying
the cursor and the progress), pauses and resumes on the assessment's signals, and on
`stop` (abort, a security violation elsewhere) or cancellation records what it did and
returns what it has.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from temporalio import workflow
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from secflow.errors import Category
    from secflow.models import (
        RECENT_FAILURES,
        WHOLE_STAGE,
        ErrorInfo,
        ShardProgress,
        ShardReport,
        StageShardInput,
        StageTaskInput,
        StageTaskResult,
        TargetBatchRequest,
        TargetFailure,
        TargetRef,
        TargetResult,
        TargetResults,
    )
    from secflow.redaction import redact
    from secflow.retries import RetryPlan
    from workflows.assessment import calls
    from workflows.failures import error_from_activity

# Outcomes per store write: a batch's results in a few small payloads, not one big one.
RESULTS_PER_WRITE = 250
MESSAGE_CHARS = 400


class TargetRunner:
    """One round of a stage over its targets (see the module docstring)."""

    def __init__(
        self,
        inp: StageShardInput,
        *,
        paused: Callable[[], bool],
        on_progress: Callable[[], None] = lambda: None,
    ) -> None:
        self.inp = inp
        self.cursor = inp.cursor
        self.progress = inp.progress.model_copy(deep=True)
        self._paused = paused
        self._on_progress = on_progress
        # an adaptive stage's round brings the plan its assessment chose (in history)
        self._plan: RetryPlan = inp.retry_plan or inp.stage.retry_plan(inp.tool)
        self._options = inp.stage.tool_options(inp.tool)
        self.exhausted = False

    async def run(
        self,
        *,
        should_hand_over: Callable[[], bool] = lambda: False,
        after_batch: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Run batches until the targets are exhausted, a security violation stops the
        round, or `should_hand_over()` says to continue as new (checked between batches)."""
        while not self.exhausted and self.progress.security_error is None:
            batch = await calls.target_batch(
                TargetBatchRequest(
                    spec_ref=self.inp.spec_ref,
                    assessment_id=self.inp.assessment_id,
                    stage_id=self.inp.stage.id,
                    tool=self.inp.tool,
                    cursor=self.cursor,
                    limit=self.inp.batch_size,
                    only_failed=self.inp.only_failed,
                )
            )
            await self._run_batch(batch.targets)
            self.cursor = batch.next_cursor
            self.exhausted = batch.exhausted
            self._on_progress()
            if after_batch is not None:
                await after_batch()
            if not self.exhausted and should_hand_over():
                return

    async def run_known(self, targets: list[TargetRef]) -> None:
        """A round whose few targets came with the spec's summary: one batch, nothing to load."""
        await self._run_batch(targets)
        self.exhausted = True
        self._on_progress()

    async def run_single(self) -> None:
        """A tool without targets (enrich, report): one activity, its outcome stored like a target's."""
        await self._run_batch([TargetRef(value=WHOLE_STAGE, kind="")])
        self.exhausted = True
        self._on_progress()

    async def _run_batch(self, targets: list[TargetRef]) -> None:
        results: dict[str, TargetResult] = {}
        running: set[asyncio.Task[None]] = set()
        try:
            for target in targets:
                await workflow.wait_condition(lambda: len(running) < self.inp.concurrency and not self._paused())
                if self.progress.security_error is not None:
                    break  # scope is law: nothing new starts after a violation
                task = asyncio.create_task(self._run_target(target, results))
                running.add(task)
                task.add_done_callback(running.discard)
            if running:
                await asyncio.gather(*running)
        except asyncio.CancelledError:
            # Stopped (abort, cancel): in-flight activities are cancelled with us; targets
            # not started count as cancelled, and everything is recorded before we go.
            for task in list(running):
                task.cancel()
            self._not_started(targets, results, "cancelled")
            if running:
                await asyncio.gather(*running, return_exceptions=True)  # let cancellations land
            await self._record(list(results.values()))
            raise
        if self.progress.security_error is not None:
            self._not_started(targets, results, "not started: security violation in this stage")
        await self._record(list(results.values()))

    def _not_started(self, targets: list[TargetRef], results: dict[str, TargetResult], why: str) -> None:
        """Targets of the batch without an outcome yet count as cancelled, with why."""
        for target in targets:
            if target.value not in results:
                self._count(
                    results,
                    TargetResult(
                        target=target.value,
                        tool=self.inp.tool,
                        state="cancelled",
                        category=Category.USER_ABORT.value,
                        message=why,
                    ),
                )

    async def _run_target(self, target: TargetRef, results: dict[str, TargetResult]) -> None:
        task = StageTaskInput(
            assessment_id=self.inp.assessment_id,
            stage_id=self.inp.stage.id,
            kind=self.inp.stage.kind,
            tool=self.inp.tool,
            target="" if target.value == WHOLE_STAGE else target.value,
            target_kind=target.kind,
            options=self._options,
            workspace=self.inp.workspace,
            retry=self._plan,
            snapshot=self.inp.snapshot,
            spec_ref=self.inp.spec_ref,
            rung=self.inp.rung,
        )
        try:
            result: StageTaskResult = await calls.run_tool_activity(
                self.inp.tool, task, self._plan, self.inp.stage.effective_timeout, summary=self._summary(target)
            )
        except ActivityError as err:
            error = error_from_activity(err, self._plan)
            aborted = error.category == Category.USER_ABORT.value
            self._count(
                results,
                TargetResult(
                    target=target.value,
                    tool=self.inp.tool,
                    state="cancelled" if aborted else "failed",
                    attempts=error.attempts,
                    category=error.category,
                    message=error.message[:MESSAGE_CHARS],
                ),
            )
            return
        if result.outputs:
            self.progress.outputs.update(result.outputs)
        if result.degraded_reason:
            self.progress.degraded_reason = result.degraded_reason
        if result.resumed:
            self.progress.resumed += 1
        self._count(
            results,
            TargetResult(
                target=target.value, tool=self.inp.tool, state="succeeded", attempts=result.attempt, findings=result.findings
            ),
        )

    def _summary(self, target: TargetRef) -> str:
        """The activity's one line in the Web UI: tool and target (redacted: a URL may carry
        credentials), e.g. "portscan 10.0.0.5"; a tool without targets runs for the stage."""
        if target.value == WHOLE_STAGE:
            return f"{self.inp.tool} (stage {self.inp.stage.id})"
        text = redact(target.value)
        return f"{self.inp.tool} {text if len(text) <= 160 else text[:157] + '...'}"

    def _count(self, results: dict[str, TargetResult], r: TargetResult) -> None:
        results[r.target] = r
        p = self.progress
        p.counts[r.state] = p.counts.get(r.state, 0) + 1
        p.processed += 1
        p.findings += r.findings
        p.attempts = max(p.attempts, r.attempts)
        p.retries += max(r.attempts - 1, 0)
        if r.state in ("failed", "cancelled") and r.category != Category.USER_ABORT.value:
            error = ErrorInfo(category=r.category, message=r.message, attempts=r.attempts)
            if p.first_error is None:
                p.first_error = error
            if r.category == Category.SECURITY.value and p.security_error is None:
                p.security_error = error
            p.recent_failures = (
                p.recent_failures
                + [TargetFailure(target=r.target, tool=r.tool, category=r.category, message=r.message, attempts=r.attempts)]
            )[-RECENT_FAILURES:]
        self._on_progress()

    async def _record(self, results: list[TargetResult]) -> None:
        """Write the batch's outcomes, a few small payloads at once (keyed: a retry rewrites)."""
        await asyncio.gather(
            *(
                calls.record_results(
                    TargetResults(
                        assessment_id=self.inp.assessment_id,
                        stage_id=self.inp.stage.id,
                        results=results[i : i + RESULTS_PER_WRITE],
                    )
                )
                for i in range(0, len(results), RESULTS_PER_WRITE)
            )
        )


@workflow.defn(name="StageTargets")
class StageTargetsWorkflow:
    """One round of one stage over its targets, as a child of the assessment."""

    def __init__(self) -> None:
        self._paused = False
        self._stop_requested = False
        self._runner: TargetRunner | None = None
        self._work: asyncio.Task[None] | None = None

    @workflow.run
    async def run(self, inp: StageShardInput) -> ShardProgress:
        self._paused = inp.paused
        runner = self._runner = TargetRunner(inp, paused=lambda: self._paused)
        task = self._work = asyncio.create_task(
            runner.run(should_hand_over=self._history_is_full, after_batch=lambda: self._report(inp, runner))
        )
        if self._stop_requested:
            task.cancel()  # stopped before we began
        try:
            await task
        except asyncio.CancelledError:
            if not self._stop_requested:
                raise  # cancelled through Temporal: the outcomes are recorded; say so
        if not runner.exhausted and runner.progress.security_error is None and not self._stop_requested:
            progress = runner.progress.model_copy(update={"runs": runner.progress.runs + 1})
            workflow.continue_as_new(
                inp.model_copy(update={"cursor": runner.cursor, "progress": progress, "paused": self._paused})
            )
        return runner.progress

    async def _report(self, inp: StageShardInput, runner: TargetRunner) -> None:
        parent = workflow.info().parent
        if parent is None:
            return
        report = ShardReport(stage_id=inp.stage.id, round=inp.round, only_failed=inp.only_failed, progress=runner.progress)
        try:
            await workflow.get_external_workflow_handle(parent.workflow_id).signal("shard_progress", report)
        except Exception as err:  # progress is only for display; the result carries the truth
            workflow.logger.info("progress not signalled", extra={"error": str(err)})

    def _history_is_full(self) -> bool:
        info = workflow.info()
        return info.is_continue_as_new_suggested() or info.get_current_history_length() >= self._budget()

    def _budget(self) -> int:
        assert self._runner is not None
        return self._runner.inp.event_budget

    @workflow.signal(name="pause")
    def pause(self) -> None:
        self._paused = True

    @workflow.signal(name="resume")
    def resume(self) -> None:
        self._paused = False

    @workflow.signal(name="stop")
    def stop(self) -> None:
        """The assessment is stopping: cancel what runs, record it, return the progress."""
        if not self._stop_requested:
            self._stop_requested = True
            if self._work is not None:
                self._work.cancel()

    @workflow.query(name="progress")
    def progress_query(self) -> ShardProgress:
        assert self._runner is not None
        return self._runner.progress
