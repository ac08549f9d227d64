"""Merge-job services: start, claim once, stale requeue, cancel, and a whole run in this process."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings
from django.core.exceptions import ValidationError
from django.utils import timezone

from gemel_engine.train import torch_threads
from gemel_engine.workload import Workload
from tests.webapp.test_merges_factories import make_job, make_ready_queries
from webapp.merges.models import MergeJob
from webapp.merges.selectors import merge_bundle_deployable, merge_bundle_files, merge_job_is_live
from webapp.merges.services import (
    merge_job_cancel,
    merge_job_claim,
    merge_job_requeue_stale,
    merge_job_run,
    merge_job_start,
)
from webapp.merges.tasks import run_merge_job
from webapp.workloads.models import Query

Status = MergeJob.Status


@pytest.fixture
def tiny_search(settings):
    """The smallest retraining the engine allows, on one CPU thread (the test machine is shared), with a
    one-second heartbeat."""
    settings.MERGE_ROUND_MAX_STEPS = 1
    settings.MERGE_ROUND_BATCH_SIZE = 8
    settings.MERGE_DEVICE = "cpu"
    settings.MERGE_HEARTBEAT_S = 1
    with torch_threads(1):
        yield


def test_it_starts_a_job_with_its_workload_exported_into_its_folder(operator, django_capture_on_commit_callbacks):
    queries = make_ready_queries()
    with django_capture_on_commit_callbacks() as queued:
        job = merge_job_start(queries=queries, strategy="gemel", budget_minutes=5, user=operator)
    assert job.status == Status.QUEUED and job.created_by == operator and job.celery_task_id
    assert job.workdir == f"merge-jobs/{job.pk}"
    workload = Workload.load(Path(settings.MEDIA_ROOT) / job.workdir / "workload.json")
    assert sorted(e.name for e in workload.queries) == sorted(q.name for q in queries)
    assert set(job.queries.all()) == set(queries)
    assert job.query_names == {str(q.pk): q.name for q in queries}  # the names its bundles will use
    assert len(queued) == 1  # the task is sent only once the transaction commits


@pytest.mark.parametrize(
    ("strategy", "budget", "message"),
    [("magic", None, "unknown strategy"), ("gemel", 0.0, "positive number"), ("gemel", float("nan"), "positive")],
)
def test_it_refuses_a_bad_strategy_or_budget(operator, strategy, budget, message):
    queries = make_ready_queries()
    with pytest.raises(ValidationError, match=message):
        merge_job_start(queries=queries, strategy=strategy, budget_minutes=budget, user=operator)
    assert not MergeJob.objects.exists()


@pytest.mark.parametrize("confidence", [1.0, 0.4, float("nan"), True])
def test_it_refuses_an_acceptance_confidence_outside_half_to_one(operator, confidence):
    with pytest.raises(ValidationError, match=r"acceptance confidence: expected 'point' or a confidence in \[0.5, 1\)"):
        merge_job_start(queries=make_ready_queries(), strategy="gemel", budget_minutes=None, user=operator,
                        accept_confidence=confidence)
    assert not MergeJob.objects.exists()


def test_the_acceptance_rule_a_job_was_started_with_is_the_one_its_search_uses(operator):
    from webapp.merges.services import _search_config

    queries = make_ready_queries()
    job = merge_job_start(queries=queries, strategy="gemel", budget_minutes=None, user=operator, accept_confidence=0.9)
    job.refresh_from_db()
    assert job.accept_confidence == 0.9 and _search_config(job).accept_confidence == 0.9
    point = merge_job_start(queries=queries, strategy="gemel", budget_minutes=None, user=operator)
    assert _search_config(point).accept_confidence is None


def test_it_refuses_queries_that_are_not_ready_and_leaves_no_folder(operator):
    queries = make_ready_queries()
    Query.objects.filter(pk=queries[0].pk).update(status=Query.Status.MEASURING)
    queries[0].refresh_from_db()
    with pytest.raises(ValidationError, match="not ready"):
        merge_job_start(queries=queries, strategy="gemel", budget_minutes=None, user=operator)
    assert not MergeJob.objects.exists()
    jobs_dir = Path(settings.MEDIA_ROOT) / "merge-jobs"
    assert not jobs_dir.exists() or not any(jobs_dir.iterdir())


def test_it_claims_a_job_once_when_its_task_is_delivered_twice(db):
    job = make_job()
    assert merge_job_claim(job_id=job.pk, worker="w1@host") is True
    assert merge_job_claim(job_id=job.pk, worker="w2@host") is False
    job.refresh_from_db()
    assert (job.status, job.attempts, job.worker) == (Status.RUNNING, 1, "w1@host")
    assert job.started_at is not None and job.heartbeat_at is not None
    assert list(job.events.values_list("type", flat=True)) == ["job.claimed"]


def test_it_reclaims_a_running_job_only_when_its_heartbeat_is_stale(db, settings):
    settings.MERGE_STALE_AFTER_S = 30
    live = make_job(status=Status.RUNNING, attempts=1, heartbeat_at=timezone.now())
    dead = make_job(status=Status.RUNNING, attempts=1, heartbeat_at=timezone.now() - timedelta(seconds=31))
    assert merge_job_claim(job_id=live.pk, worker="w2") is False
    assert merge_job_claim(job_id=dead.pk, worker="w2") is True
    dead.refresh_from_db()
    assert (dead.attempts, dead.worker) == (2, "w2")


def test_it_never_claims_a_finished_or_cancelled_job(db):
    for status in (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED):
        assert merge_job_claim(job_id=make_job(status=status).pk, worker="w") is False


def test_it_cancels_a_queued_job_at_once(operator):
    job = merge_job_cancel(job=make_job(), user=operator)
    assert (job.status, job.cancel_requested) == (Status.CANCELLED, True) and job.finished_at is not None
    assert merge_job_claim(job_id=job.pk, worker="w") is False


def test_it_asks_a_running_job_to_stop_and_refuses_to_cancel_a_finished_one(operator):
    job = merge_job_cancel(job=make_job(status=Status.RUNNING, heartbeat_at=timezone.now()), user=operator)
    assert (job.status, job.cancel_requested) == (Status.RUNNING, True)
    assert job.events.last().payload == {"by": operator.username}
    with pytest.raises(ValidationError, match="already finished"):
        merge_job_cancel(job=make_job(status=Status.SUCCEEDED), user=operator)


def test_it_requeues_running_jobs_whose_worker_died_and_leaves_live_ones(db, django_capture_on_commit_callbacks):
    old = timezone.now() - timedelta(seconds=60)
    dead = make_job(status=Status.RUNNING, attempts=1, heartbeat_at=old)
    dead_cancelling = make_job(status=Status.RUNNING, attempts=1, heartbeat_at=old, cancel_requested=True)
    live = make_job(status=Status.RUNNING, attempts=1, heartbeat_at=timezone.now())
    with django_capture_on_commit_callbacks() as sent:
        handled = merge_job_requeue_stale(older_than_s=30)
    assert sorted(handled) == sorted([dead.pk, dead_cancelling.pk])
    for job in (dead, dead_cancelling, live):
        job.refresh_from_db()
    assert (dead.status, dead.attempts) == (Status.QUEUED, 1)
    assert dead_cancelling.status == Status.CANCELLED
    assert live.status == Status.RUNNING
    assert dead.events.last().type == "job.requeued"
    assert merge_job_claim(job_id=dead.pk, worker="w2") is True
    tasks_sent = [c for c in sent if getattr(getattr(c, "func", None), "__name__", "") == "apply_async"]
    assert len(tasks_sent) == 1  # the requeued job's task, sent on commit


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.django_db(transaction=True)  # the heartbeat writes on its own connection
def test_it_runs_a_job_recording_every_event_and_saved_configuration(operator, tiny_search):
    queries = make_ready_queries()
    job = merge_job_start(queries=queries, strategy="gemel", budget_minutes=None, user=operator)
    assert merge_job_claim(job_id=job.pk, worker="here")
    job = merge_job_run(job=MergeJob.objects.get(pk=job.pk))
    assert job.status == Status.SUCCEEDED, job.error
    types = list(job.events.values_list("type", flat=True))
    assert types[0] == "job.claimed" and types[-1] == "search.finished"
    started = types.index("search.started")  # the set-up before it is reported stage by stage, not silent
    assert started > 1 and set(types[1:started]) == {"search.preparing"}
    assert list(job.events.values_list("seq", flat=True)) == list(range(1, len(types) + 1))
    bundles = list(job.bundles.order_by("index"))
    assert len(bundles) == types.count("config.accepted") + 1  # the unmerged start, then each accepted one
    assert [b.index for b in bundles] == list(range(len(bundles)))
    assert bundles[-1].saved_param_bytes > 0 and bundles[0].saved_param_bytes == 0
    assert all(b.meets_targets and b.accuracies.keys() == {q.name for q in queries} for b in bundles)
    assert job.result["rounds"] == bundles[-1].round
    assert 0 < job.merged_param_bytes < job.unmerged_param_bytes
    for file in merge_bundle_files(bundles[-1]):
        assert _sha256(Path(file["path"])) == file["sha256"]
        assert Path(file["path"]).stat().st_size == file["size_bytes"]
    assert merge_bundle_deployable(bundles[-1]) == (True, "")


@pytest.mark.django_db(transaction=True)  # the heartbeat writes on its own connection
def test_it_ends_a_running_job_as_cancelled_when_cancel_was_asked(operator, tiny_search):
    job = merge_job_start(queries=make_ready_queries(), strategy="gemel", budget_minutes=None, user=operator)
    assert merge_job_claim(job_id=job.pk, worker="here")
    merge_job_cancel(job=job, user=operator)
    job = merge_job_run(job=MergeJob.objects.get(pk=job.pk))
    assert job.status == Status.CANCELLED and job.finished_at is not None
    assert job.events.last().type == "search.cancelled"
    assert job.bundles.count() == 1  # only the unmerged start


@pytest.mark.django_db(transaction=True)  # the heartbeat writes on its own connection
def test_it_records_a_failure_with_its_traceback(operator, tiny_search):
    job = merge_job_start(queries=make_ready_queries(), strategy="gemel", budget_minutes=None, user=operator)
    (Path(settings.MEDIA_ROOT) / job.workdir / "workload.json").write_text("{not json")
    assert merge_job_claim(job_id=job.pk, worker="here")
    job = merge_job_run(job=MergeJob.objects.get(pk=job.pk))
    assert job.status == Status.FAILED and "Traceback" in job.error and "workload" in job.error


@pytest.mark.django_db(transaction=True)  # the heartbeat writes on its own connection
def test_a_worker_that_lost_its_job_writes_nothing_more(operator, tiny_search):
    job = merge_job_start(queries=make_ready_queries(), strategy="gemel", budget_minutes=None, user=operator)
    assert merge_job_claim(job_id=job.pk, worker="old")
    stale = MergeJob.objects.get(pk=job.pk)
    MergeJob.objects.filter(pk=job.pk).update(attempts=2, worker="new")  # another worker took it over
    merge_job_run(job=stale)
    job.refresh_from_db()
    assert (job.status, job.worker, job.finished_at) == (Status.RUNNING, "new", None)
    assert list(job.events.values_list("type", flat=True)) == ["job.claimed"]


def test_the_task_skips_a_job_that_is_finished_or_unknown(db):
    finished = make_job(status=Status.SUCCEEDED)
    assert run_merge_job.apply(args=(finished.pk,)).get() == "skipped"
    assert run_merge_job.apply(args=(987654,)).get() == "skipped"
    finished.refresh_from_db()
    assert finished.attempts == 0 and not finished.events.exists()


def test_a_job_is_live_only_while_its_heartbeat_is_fresh(db, settings):
    settings.MERGE_STALE_AFTER_S = 30
    assert merge_job_is_live(make_job(status=Status.RUNNING, heartbeat_at=timezone.now()).pk)
    old = timezone.now() - timedelta(seconds=31)
    assert not merge_job_is_live(make_job(status=Status.RUNNING, heartbeat_at=old).pk)
    assert not merge_job_is_live(make_job(status=Status.QUEUED).pk)
