"""Writes of the merges app: start, claim, run, cancel and resume merge jobs, and record their progress.

A job's folder (MEDIA_ROOT/merge-jobs/<id>/) holds the exported workload and the engine's checkpoint and
bundles, so a job that a dead worker left behind resumes where its last finished round ended. Every write
a worker makes is fenced by the job's attempt number: a worker presumed dead that wakes up again changes
nothing and stops at its next safe point.
"""

from __future__ import annotations

import logging
import math
import shutil
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterable
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.core.exceptions import ValidationError
from django.db import DatabaseError, connection, transaction
from django.db.models import F, Max, Q
from django.db.models.functions import Coalesce
from django.utils import timezone

from gemel_engine.accuracy import check_accept_confidence
from gemel_engine.bundle import inspect_bundle
from gemel_engine.errors import GemelError
from gemel_engine.events import PATH_FIELDS, CancelToken, Event
from gemel_engine.runtime.protocol import bundle_file_digests
from gemel_engine.search import RetrainBudget, SearchConfig, bundle_evaluation, run_search, saved_configs
from gemel_engine.workload import Workload
from webapp.errors import Conflict
from webapp.live import group_send_on_commit
from webapp.merges.models import MergeBundle, MergeEvent, MergeJob
from webapp.merges.selectors import (
    merge_bundle_data,
    merge_event_data,
    merge_job_data,
    merge_job_group,
    merge_job_workdir,
    merge_strategies,
)
from webapp.workloads.models import Query, Site
from webapp.workloads.services import workload_export

logger = logging.getLogger(__name__)

JOBS_DIR = "merge-jobs"
WORKLOAD_NAME = "workload.json"
# The cancel flag is read from the database at most this often (the engine asks between training steps).
CANCEL_POLL_S = 2.0
Status = MergeJob.Status


# -- starting and cancelling ----------------------------------------------------------------------------


def _check_budget(budget_minutes: float | None) -> None:
    longest = settings.MERGE_SOFT_TIME_LIMIT / 60  # a worker stops any job after this anyway
    if budget_minutes is not None and (not math.isfinite(budget_minutes) or not 0 < budget_minutes <= longest):
        raise ValidationError(
            f"the budget must be a positive number of minutes up to the workers' limit of {longest:g}, "
            f"got {budget_minutes!r}"
        )


def _one_site(queries: list[Query]) -> Site:
    """Return the one site whose cameras ``queries`` watch.

    Raises:
        ValidationError: the queries watch cameras of several sites (each site is named with its queries).
    """
    by_site: dict[Site, list[str]] = {}
    for query in queries:
        by_site.setdefault(query.camera.site, []).append(query.name)
    if len(by_site) > 1:
        listed = "; ".join(f"{site.name}: {', '.join(sorted(names))}" for site, names in sorted(
            by_site.items(), key=lambda item: item[0].name))
        raise ValidationError(f"a merge job is over the queries of one site (its bundles serve that site's boxes); "
                              f"these are of {len(by_site)} sites ({listed})")
    return next(iter(by_site))


def merge_job_start(
    *, queries: Iterable[Query], strategy: str, budget_minutes: float | None, user: AbstractBaseUser | AnonymousUser,
    accept_confidence: float | None = None,
) -> MergeJob:
    """Create a merge job over ``queries``, export its workload into its folder and queue it on commit.

    Returns:
        The queued job.

    Raises:
        ValidationError: unknown strategy, a budget that is not a positive number, an acceptance confidence
            outside [0.5, 1), no queries, queries of more than one site (a bundle serves one site's boxes),
            or queries that are not ready (their unmerged accuracy is not measured) or cannot be exported.
    """
    chosen = list(queries)
    if strategy not in merge_strategies():
        raise ValidationError(f"unknown strategy {strategy!r}; choose one of {', '.join(merge_strategies())}")
    _check_budget(budget_minutes)
    try:
        check_accept_confidence(accept_confidence)
    except GemelError as exc:
        raise ValidationError({"accept_confidence": f"acceptance confidence: {exc}"}) from None
    if not chosen:
        raise ValidationError("choose at least one query")
    site = _one_site(chosen)
    not_ready = sorted(query.name for query in chosen if query.status != Query.Status.READY)
    if not_ready:
        raise ValidationError(f"queries not ready (unmerged accuracy not measured): {', '.join(not_ready)}")
    from webapp.merges.tasks import run_merge_job  # the task module imports this one

    folder: Path | None = None
    try:
        with transaction.atomic():
            job = MergeJob.objects.create(
                site=site, strategy=strategy, budget_minutes=budget_minutes, accept_confidence=accept_confidence,
                created_by=user if user.is_authenticated else None, celery_task_id=str(uuid.uuid4()),
                query_names={str(query.pk): query.name for query in chosen},
            )
            job.queries.set(chosen)
            relative = Path(JOBS_DIR) / str(job.pk)
            folder = Path(settings.MEDIA_ROOT) / relative
            workload_export(queries=chosen, out_dir=folder, name=f"merge-job-{job.pk}")
            job.workdir = relative.as_posix()
            job.save(update_fields=["workdir"])
            run_merge_job.apply_async_on_commit((job.pk,), task_id=job.celery_task_id)
    except ValidationError:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    return job


def _locked(job_id: int) -> MergeJob:
    return MergeJob.objects.select_for_update().get(pk=job_id)


def _event_append(job: MergeJob, event_type: str, payload: dict[str, Any]) -> MergeEvent:
    """Append an event to ``job`` (locked by the caller's transaction) with the next sequence number."""
    last = job.events.aggregate(last=Max("seq"))["last"] or 0
    return MergeEvent.objects.create(job=job, seq=last + 1, type=event_type, payload=payload)


def _announce(job: MergeJob, event: MergeEvent | None = None, bundles: Iterable[MergeBundle] = ()) -> None:
    """Tell the job's page what changed, once the transaction commits."""
    job.refresh_from_db()
    group_send_on_commit(merge_job_group(job.pk), "merge.progress", {
        "event": merge_event_data(event) if event is not None else None,
        "bundles": [merge_bundle_data(bundle) for bundle in bundles],
        "job": merge_job_data(job),
    })


@transaction.atomic
def merge_job_cancel(*, job: MergeJob, user: AbstractBaseUser | AnonymousUser) -> MergeJob:
    """Cancel ``job``: a queued one at once; a running one at the search's next safe point.

    Returns:
        The job as it is now.

    Raises:
        Conflict (a ValidationError): the job has already finished.
    """
    now = timezone.now()
    locked = _locked(job.pk)
    by = user.get_username() if user.is_authenticated else ""
    if locked.status == Status.QUEUED:
        MergeJob.objects.filter(pk=job.pk, status=Status.QUEUED).update(
            status=Status.CANCELLED, cancel_requested=True, finished_at=now
        )
        event = _event_append(locked, "job.cancelled", {"by": by, "while": "queued"})
    elif locked.status == Status.RUNNING:
        MergeJob.objects.filter(pk=job.pk, status=Status.RUNNING).update(cancel_requested=True)
        event = _event_append(locked, "job.cancel_requested", {"by": by})
    else:
        raise Conflict(f"merge job {job.pk} has already finished ({locked.status})")
    _announce(locked, event)
    return locked


# -- claiming and resuming --------------------------------------------------------------------------


def _stale_before() -> Any:
    return timezone.now() - timedelta(seconds=settings.MERGE_STALE_AFTER_S)


def merge_job_claim(*, job_id: int, worker: str) -> bool:
    """Claim ``job_id`` for ``worker`` once: a queued job, or a running one whose worker's heartbeat is stale.

    One conditional update decides, so of several workers (or one task delivered twice) exactly one wins.
    The winner's attempt number is the job's ``attempts`` after the claim.

    Returns:
        Whether this call claimed the job.
    """
    now = timezone.now()
    stale = _stale_before()
    claimable = Q(status=Status.QUEUED, cancel_requested=False) | Q(status=Status.RUNNING, heartbeat_at__lt=stale)
    with transaction.atomic():
        claimed = MergeJob.objects.filter(claimable, pk=job_id).update(
            status=Status.RUNNING, attempts=F("attempts") + 1, heartbeat_at=now, worker=worker[:200],
            started_at=Coalesce(F("started_at"), now),
        )
        if claimed:
            job = _locked(job_id)
            event = _event_append(job, "job.claimed", {"worker": worker, "attempt": job.attempts})
            _announce(job, event)
    return bool(claimed)


def merge_job_requeue_stale(*, older_than_s: float) -> list[int]:
    """Requeue running jobs whose heartbeat is older than ``older_than_s`` seconds (their worker died).

    A requeued job resumes from its checkpoint on the next worker that claims it; one whose cancellation was
    asked for is marked cancelled instead.

    Returns:
        The ids of the jobs requeued or cancelled.
    """
    from webapp.merges.tasks import run_merge_job  # the task module imports this one

    cutoff = timezone.now() - timedelta(seconds=older_than_s)
    stale = Q(status=Status.RUNNING) & (Q(heartbeat_at__lt=cutoff) | Q(heartbeat_at__isnull=True))
    handled = []
    for job_id in MergeJob.objects.filter(stale).values_list("pk", flat=True):
        with transaction.atomic():
            job = _locked(job_id)
            rows = MergeJob.objects.filter(stale, pk=job_id)
            if job.cancel_requested:
                changed = rows.update(status=Status.CANCELLED, finished_at=timezone.now(), error="worker lost")
                event_type = "job.cancelled"
            else:
                changed = rows.update(status=Status.QUEUED, celery_task_id=str(uuid.uuid4()))
                event_type = "job.requeued"
            if not changed:
                continue
            job.refresh_from_db()
            event = _event_append(job, event_type, {"reason": "worker heartbeat stale", "attempts": job.attempts})
            _announce(job, event)
            if job.status == Status.QUEUED:
                run_merge_job.apply_async_on_commit((job.pk,), task_id=job.celery_task_id)
            handled.append(job_id)
    return handled


# -- running ----------------------------------------------------------------------------------------------


def _search_config(job: MergeJob) -> SearchConfig:
    defaults = RetrainBudget()
    steps = settings.MERGE_ROUND_MAX_STEPS or defaults.max_steps
    budget = RetrainBudget(
        max_steps=steps,
        batch_size=settings.MERGE_ROUND_BATCH_SIZE or defaults.batch_size,
        eval_every=min(defaults.eval_every, steps),
        eval_every_near=min(defaults.eval_every_near, steps),
    )
    return SearchConfig(
        strategy=job.strategy, budget_minutes=job.budget_minutes, round_budget=budget, device=settings.MERGE_DEVICE,
        accept_confidence=job.accept_confidence,
    )


def _media_relative(path: str | Path) -> str:
    path = Path(path)
    try:
        return path.resolve().relative_to(Path(settings.MEDIA_ROOT).resolve()).as_posix()
    except ValueError:
        return str(path)


def _portable(event: Event) -> dict[str, Any]:
    """Return the event with server paths made relative to MEDIA_ROOT."""
    data = dict(event)
    for key in PATH_FIELDS:
        if isinstance(data.get(key), str):
            data[key] = _media_relative(data[key])
    if isinstance(data.get("result"), dict) and isinstance(data["result"].get("bundle"), str):
        data["result"] = {**data["result"], "bundle": _media_relative(data["result"]["bundle"])}
    return data


def _bundles_sync(job: MergeJob) -> list[MergeBundle]:
    """Record the configurations the engine checkpointed that the job has no row for yet; return the new rows.

    A configuration's accuracies carry over those of the previous one for queries its round did not retrain.
    ``meets_targets`` says whether every query met its target on held-out test frames.
    """
    workdir = merge_job_workdir(job)
    existing = {bundle.index: bundle for bundle in job.bundles.all()}
    created = []
    accuracies: dict[str, float] = {}
    evaluation: dict[str, Any] = {}
    for index, record in enumerate(saved_configs(workdir)):
        if index in existing:
            accuracies, evaluation = dict(existing[index].accuracies), dict(existing[index].evaluation)
            continue
        folder = Path(record["path"])
        info = inspect_bundle(folder)
        metadata = dict(info.metadata)
        accuracies = {**accuracies, **{k: float(v) for k, v in (metadata.get("accuracies") or {}).items()}}
        evaluation = {**evaluation, **bundle_evaluation(metadata)}
        required = {k: float(v) for k, v in (metadata.get("required") or {}).items() if v is not None}
        required_test = {k: float(v) for k, v in (metadata.get("required_test") or {}).items() if v is not None}
        bundle = MergeBundle.objects.create(
            job=job, index=index, round=int(record.get("round", 0)), path=_media_relative(folder),
            saved_param_bytes=int(record.get("saved_param_bytes", 0)), elapsed=float(record.get("elapsed", 0.0)),
            accuracies=accuracies, required=required, evaluation=evaluation,
            meets_targets=bool(required_test) and all(
                n in evaluation and evaluation[n]["test"]["accuracy"] >= r for n, r in required_test.items()
            ),
            files=bundle_file_digests(folder),
        )
        MergeJob.objects.filter(pk=job.pk).update(
            unmerged_param_bytes=info.unmerged_param_bytes, merged_param_bytes=info.unique_param_bytes
        )
        created.append(bundle)
    return created


class ProgressRecorder:
    """The engine's progress callback for one attempt of a job: each event becomes a MergeEvent row (and a
    MergeBundle row per saved configuration), bumps the heartbeat and is announced to the job's page.

    It observes and never steers: a database error is logged, and the next event catches up on bundles.
    """

    def __init__(self, job_id: int, attempt: int) -> None:
        self.job_id = job_id
        self.attempt = attempt

    def __call__(self, event: Event) -> None:
        try:
            self._record(event)
        except DatabaseError:
            logger.exception("merge job %s: could not record %s", self.job_id, event.get("type"))

    @transaction.atomic
    def _record(self, event: Event) -> None:
        job = MergeJob.objects.select_for_update().filter(pk=self.job_id, attempts=self.attempt).first()
        if job is None:  # another worker took the job over
            return
        row = _event_append(job, str(event.get("type", "")), _portable(event))
        bundles = _bundles_sync(job) if event.get("type") in ("search.started", "config.accepted") else []
        MergeJob.objects.filter(pk=job.pk, attempts=self.attempt).update(heartbeat_at=timezone.now())
        _announce(job, row, bundles)


class _Heartbeat:
    """A thread that records the job's heartbeat while the search runs; it cancels the search when the job
    stops being this attempt's (another worker claimed it, or it was requeued)."""

    def __init__(self, job_id: int, attempt: int, token: CancelToken) -> None:
        self.job_id, self.attempt, self.token = job_id, attempt, token
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"merge-job-{job_id}-heartbeat", daemon=True)

    def _beat(self) -> None:
        try:
            while not self._stop.wait(settings.MERGE_HEARTBEAT_S):
                try:
                    mine = MergeJob.objects.filter(pk=self.job_id, attempts=self.attempt, status=Status.RUNNING)
                    if not mine.update(heartbeat_at=timezone.now()):
                        self.token.cancel()
                        return
                except DatabaseError:
                    logger.warning("merge job %s: heartbeat not recorded", self.job_id, exc_info=True)
        finally:
            connection.close()

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _cancel_check(job_id: int, attempt: int) -> Callable[[], bool]:
    """Return the search's cancel check: the job's cancel flag (or losing the job), read at most every 2 s."""
    last_read = -math.inf
    cancelled = False

    def check() -> bool:
        nonlocal last_read, cancelled
        if not cancelled and time.monotonic() - last_read >= CANCEL_POLL_S:
            last_read = time.monotonic()
            row = MergeJob.objects.filter(pk=job_id).values("cancel_requested", "attempts").first()
            cancelled = row is None or row["cancel_requested"] or row["attempts"] != attempt
        return cancelled

    return check


def _finish(job: MergeJob, attempt: int, **fields: Any) -> None:
    with transaction.atomic():
        changed = MergeJob.objects.filter(pk=job.pk, attempts=attempt, status=Status.RUNNING).update(
            finished_at=timezone.now(), heartbeat_at=timezone.now(), **fields
        )
        if changed:
            _announce(job)


def merge_job_run(*, job: MergeJob) -> MergeJob:
    """Run (or resume, from the checkpoint in its folder) a job this worker has claimed, to its end.

    The search's events are recorded as they come; the job ends succeeded (its queue emptied or its budget
    spent), cancelled, or failed with the traceback in ``error``.

    Returns:
        The job as it is afterwards. Search failures are recorded on the job, never raised.
    """
    attempt = job.attempts
    token = CancelToken(check=_cancel_check(job.pk, attempt))
    try:
        with _Heartbeat(job.pk, attempt, token):
            workdir = merge_job_workdir(job)
            workload = Workload.load(workdir / WORKLOAD_NAME)
            result = run_search(
                workload, workdir, _search_config(job), progress=ProgressRecorder(job.pk, attempt), cancel=token
            )
    except Exception:  # recorded on the job: the worker goes on with its next task
        logger.exception("merge job %s failed", job.pk)
        _finish(job, attempt, status=Status.FAILED, error=traceback.format_exc())
    else:
        summary = result.to_json()
        summary["bundle"] = _media_relative(summary["bundle"])
        _finish(
            job, attempt, result=summary, unmerged_param_bytes=result.unmerged_param_bytes,
            merged_param_bytes=result.merged_param_bytes,
            status=Status.CANCELLED if result.status == "cancelled" else Status.SUCCEEDED,
        )
    job.refresh_from_db()
    return job
