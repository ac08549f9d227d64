"""Reads of the merges app: jobs, their events and bundles, what a bundle holds and whether it may be deployed."""

from __future__ import annotations

import math
import statistics
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db.models import QuerySet
from django.urls import reverse
from django.utils import timezone

from gemel_engine.runtime.protocol import BUNDLE_FILE_NAMES
from gemel_engine.search import RetrainBudget, describe_strategies, estimate_round_seconds, list_strategies
from webapp.merges.models import MergeBundle, MergeEvent, MergeJob
from webapp.workloads.engine import query_required_test_accuracy
from webapp.workloads.models import Query

# Files of a bundle, in the order an agent should fetch them.
FINISHED = (MergeJob.Status.SUCCEEDED, MergeJob.Status.FAILED, MergeJob.Status.CANCELLED)


def merge_strategies() -> list[str]:
    """Return the names of the engine's registered merge strategies."""
    return list_strategies()


def merge_strategy_descriptions() -> dict[str, str]:
    """Return each engine merge strategy's one-sentence description, by name."""
    return describe_strategies()


def merge_budget_hint(*, recent: int = 20) -> str | None:
    """Return what this machine says about budgets: the median minutes until a job first saved memory, over the
    newest ``recent`` jobs that saved any; before any has, the engine's estimate of one full round over the ready
    queries at the training pace the demo build measured (``first_merge_budget_hint``); None without either."""
    firsts = []
    for result in MergeJob.objects.filter(status=MergeJob.Status.SUCCEEDED).order_by("-id").values_list(
        "result", flat=True
    )[:recent]:
        timeline = (result or {}).get("timeline") if isinstance(result, dict) else None
        saved_at = next((float(t) for t, saved in (timeline or []) if float(saved) > 0), None)
        if saved_at is not None:
            firsts.append(saved_at)
    if not firsts:
        return first_merge_budget_hint()
    median = statistics.median(firsts)
    return (f"On this machine, earlier jobs first saved memory after a median of {median / 60:.1f} min "
            f"({len(firsts)} job(s)); a budget shorter than that will likely end with nothing saved.")


def first_merge_budget_hint() -> str | None:
    """Return a budget suggestion for a first job, from the seconds per training frame the demo build measured
    for the ready queries' models (``Query.train_frame_seconds``) and the engine's round budget: about how long
    one round of joint retraining of all of them runs when it takes all its steps. None when no ready query
    has a measured pace."""
    timed = Query.objects.filter(status=Query.Status.READY, train_frame_seconds__isnull=False)
    paces = {q.name: q.train_frame_seconds for q in timed}
    if not paces:
        return None
    detection = {q.name for q in timed if (q.task or {}).get("kind") == "detection"}
    budget = RetrainBudget()
    minutes = estimate_round_seconds(paces, detection, budget) / 60
    untimed = Query.objects.filter(status=Query.Status.READY, train_frame_seconds__isnull=True).count()
    others = f" ({untimed} other ready quer{'y' if untimed == 1 else 'ies'} not timed)" if untimed else ""
    return (f"No job has saved memory here yet. At the training pace the demo build measured on this machine, "
            f"one round retraining all {len(paces)} timed queries together{others} runs up to {budget.max_steps} "
            f"steps in about {minutes:.1f} min, and loading the models comes first: give it more than "
            f"{math.ceil(minutes)} min, or round 1 will likely be cut with nothing saved. gemel+ sizes each trial to "
            f"the time left (it leaves out the models it could not retrain in time), so a shorter budget still "
            f"saves what it can afford.")


def merge_job_group(job_id: int) -> str:
    """Return the channel-layer group that receives a job's ``merge.progress`` messages."""
    return f"merge-job-{job_id}"


def merge_job_list() -> QuerySet[MergeJob]:
    """Return the merge jobs, newest first, with their queries and creator loaded."""
    return MergeJob.objects.select_related("created_by").prefetch_related("queries").order_by("-created_at", "-pk")


def merge_job_get(job_id: int) -> MergeJob:
    """Return the job ``job_id`` with its queries loaded.

    Raises:
        MergeJob.DoesNotExist: there is none.
    """
    return merge_job_list().get(pk=job_id)


def merge_job_exists(job_id: int) -> bool:
    """Return whether the job ``job_id`` exists."""
    return MergeJob.objects.filter(pk=job_id).exists()


def merge_job_is_live(job_id: int) -> bool:
    """Return whether the job is running on a worker that showed a sign of life recently (not stale)."""
    fresh = timezone.now() - timedelta(seconds=settings.MERGE_STALE_AFTER_S)
    return MergeJob.objects.filter(pk=job_id, status=MergeJob.Status.RUNNING, heartbeat_at__gte=fresh).exists()


def merge_job_events(job: MergeJob, *, after: int = 0) -> QuerySet[MergeEvent]:
    """Return the job's events with a sequence number above ``after``, in order."""
    return job.events.filter(seq__gt=after).order_by("seq")


def merge_job_bundles(job: MergeJob) -> QuerySet[MergeBundle]:
    """Return the configurations the job saved, in order (index 0: the unmerged start)."""
    return job.bundles.order_by("index")


def media_path(stored: str) -> Path:
    """Return the absolute path of a path stored relative to MEDIA_ROOT (absolute ones are kept)."""
    path = Path(stored)
    return path if path.is_absolute() else Path(settings.MEDIA_ROOT) / path


def merge_job_workdir(job: MergeJob) -> Path:
    """Return the absolute path of the job's folder (workload, checkpoint, bundles)."""
    return media_path(job.workdir)


def merge_bundle_dir(bundle: MergeBundle) -> Path:
    """Return the absolute path of the bundle's folder."""
    return media_path(bundle.path)


def merge_bundle_files(bundle: MergeBundle) -> list[dict[str, Any]]:
    """Return the bundle's files as ``{"name", "path", "sha256", "size_bytes"}`` (path absolute), manifest first."""
    folder = merge_bundle_dir(bundle)
    return [
        {
            "name": name,
            "path": str(folder / name),
            "sha256": bundle.files.get(name, {}).get("sha256", ""),
            "size_bytes": int(bundle.files.get(name, {}).get("size_bytes", 0)),
        }
        for name in BUNDLE_FILE_NAMES
    ]


def merge_job_built_name(job: MergeJob, query: Any) -> str:
    """Return the name ``query`` had when ``job`` started: the name its bundles give the query's model and
    key its accuracies by (the current name for jobs that did not record it)."""
    return str((job.query_names or {}).get(str(query.pk), query.name))


def merge_bundle_required_now(bundle: MergeBundle) -> dict[str, float | None]:
    """Return, per query of the bundle's job (by the name the bundle knows it by), the accuracy it must reach
    today on held-out test frames: the query's current target over its unmerged model's current test accuracy,
    not the target recorded when the job ran (None: not measured on test frames)."""
    return {
        merge_job_built_name(bundle.job, query): query_required_test_accuracy(query)
        for query in bundle.job.queries.all()
    }


def merge_bundle_test_accuracies(bundle: MergeBundle) -> dict[str, dict[str, Any]]:
    """Return, per query, the bundle's accuracy on held-out test frames: ``{"accuracy", "interval", "frames"}``
    (empty for bundles saved before test frames existed)."""
    return {name: figures["test"] for name, figures in (bundle.evaluation or {}).items() if "test" in figures}


def merge_bundle_test_rows(
    bundle: MergeBundle, required_now: dict[str, float | None] | None = None
) -> list[dict[str, Any]]:
    """Return, per query, its held-out test accuracy, 95% interval, frames and current target (what the
    Deployments page shows next to each bundle); ``required_now`` as for ``merge_bundle_shortfalls``."""
    if required_now is None:
        required_now = merge_bundle_required_now(bundle)
    tested = merge_bundle_test_accuracies(bundle)
    return [{"name": name, "target": required, **tested[name]} for name, required in required_now.items()
            if name in tested]


def merge_bundle_shortfalls(bundle: MergeBundle, required_now: dict[str, float | None] | None = None) -> list[str]:
    """Return one line per query whose bundle accuracy on held-out test frames misses its current target (empty:
    all met); ``required_now`` is ``merge_bundle_required_now(bundle)`` when the caller has it already."""
    if required_now is None:
        required_now = merge_bundle_required_now(bundle)
    if not required_now:
        return ["the bundle's merge job has no queries left"]
    tested = merge_bundle_test_accuracies(bundle)
    reasons = []
    for name, required in required_now.items():
        figures = tested.get(name)
        if figures is None:
            reasons.append(f"{name}: not measured on held-out test frames (saved before they existed; merge again)")
        elif required is None:
            reasons.append(f"{name}: its unmerged model is not measured on held-out test frames yet")
        elif figures["accuracy"] < required:
            low, high = figures["interval"]
            reasons.append(
                f"{name}: test accuracy {figures['accuracy']:.3f} (95% interval {low:.3f}–{high:.3f}, "
                f"{figures['frames']} test frames) below its target {required:.3f} "
                f"(short by {required - figures['accuracy']:.3f})"
            )
    return reasons


def merge_bundle_deployable(
    bundle: MergeBundle, required_now: dict[str, float | None] | None = None
) -> tuple[bool, str]:
    """Return whether ``bundle`` may be deployed, and why not: every query must meet its current accuracy
    target and the bundle's files must be on disk with the recorded sizes. The reason is empty when it may;
    ``required_now`` as for ``merge_bundle_shortfalls``."""
    reasons = merge_bundle_shortfalls(bundle, required_now)
    if reasons:
        return False, "below target: " + "; ".join(reasons)
    for file in merge_bundle_files(bundle):
        path = Path(file["path"])
        if not file["sha256"] or not path.is_file() or path.stat().st_size != file["size_bytes"]:
            return False, f"bundle file {file['name']} is missing or changed on the server"
    return True, ""


def _iso(value: Any) -> str | None:
    return value.isoformat() if value else None


def merge_job_data(job: MergeJob) -> dict[str, Any]:
    """Return the job as JSON-ready data (API responses, websocket messages and the job page)."""
    unmerged, merged = job.unmerged_param_bytes, job.merged_param_bytes
    saved = unmerged - merged if unmerged is not None and merged is not None else None
    return {
        "id": job.pk,
        "strategy": job.strategy,
        "status": job.status,
        "budget_minutes": job.budget_minutes,
        "accept_confidence": job.accept_confidence,
        "queries": [{"id": query.pk, "name": query.name} for query in job.queries.all()],
        "created_by": job.created_by.get_username() if job.created_by else None,
        "created_at": _iso(job.created_at),
        "started_at": _iso(job.started_at),
        "finished_at": _iso(job.finished_at),
        "heartbeat_at": _iso(job.heartbeat_at),
        "attempts": job.attempts,
        "worker": job.worker,
        "cancel_requested": job.cancel_requested,
        "unmerged_param_bytes": unmerged,
        "merged_param_bytes": merged,
        "saved_param_bytes": saved,
        "savings_fraction": saved / unmerged if saved is not None and unmerged else None,
        "error": job.error,
        "outcome": (job.result or {}).get("outcome") if isinstance(job.result, dict) else None,
        "finished": job.status in FINISHED,
    }


def merge_event_data(event: MergeEvent) -> dict[str, Any]:
    """Return the event as JSON-ready data."""
    return {"seq": event.seq, "type": event.type, "at": _iso(event.at), "payload": event.payload}


def merge_bundle_data(bundle: MergeBundle) -> dict[str, Any]:
    """Return the bundle as JSON-ready data, with whether it may be deployed and why not."""
    required_now = merge_bundle_required_now(bundle)
    deployable, reason = merge_bundle_deployable(bundle, required_now)
    return {
        "id": bundle.pk,
        "job": bundle.job_id,
        "index": bundle.index,
        "round": bundle.round,
        "saved_param_bytes": bundle.saved_param_bytes,
        "elapsed": bundle.elapsed,
        "accuracies": bundle.accuracies,
        "validation_required": bundle.required,
        "test_accuracies": merge_bundle_test_accuracies(bundle),
        "required": required_now,
        "meets_targets": not merge_bundle_shortfalls(bundle, required_now),
        "deployable": deployable,
        "reason": reason,
        "files": [{k: v for k, v in f.items() if k != "path"} for f in merge_bundle_files(bundle)],
        "created_at": _iso(bundle.created_at),
    }


def merge_job_best_bundle(bundles: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Return the configuration (``merge_bundle_data``) to deploy from a job's: the one that saves the most among
    those that save memory and may be deployed (the newest on a tie), or None when there is none."""
    candidates = [b for b in bundles if b["deployable"] and b["saved_param_bytes"] > 0]
    return max(candidates, key=lambda b: (b["saved_param_bytes"], b["index"]), default=None)


def merge_job_page_data(job: MergeJob) -> dict[str, Any]:
    """Return what the job page's script starts from: the job, its queries' targets, events and bundles."""
    return {
        "job": merge_job_data(job),
        "events": [merge_event_data(event) for event in merge_job_events(job)],
        "bundles": [merge_bundle_data(bundle) for bundle in merge_job_bundles(job).select_related("job")],
        "queries": [
            {"name": q.name, "unmerged_accuracy": q.unmerged_accuracy, "target_fraction": q.target_fraction}
            for q in job.queries.all()
        ],
        "urls": {
            "job": f"/api/merge-jobs/{job.pk}",
            "events": f"/api/merge-jobs/{job.pk}/events",
            "bundles": f"/api/merge-jobs/{job.pk}/bundles",
            "cancel": f"/api/merge-jobs/{job.pk}/cancel",
            "live": f"/ws/merge-jobs/{job.pk}/",
            "deployments": reverse("deployments"),
        },
    }
