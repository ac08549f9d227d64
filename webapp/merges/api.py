"""The merge-jobs API (session auth): list, start, inspect, follow and cancel merge jobs, and their bundles.

Reads are open to every signed-in user; writes need an operator (viewers get 403).
"""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest
from ninja import Field, Router, Schema
from ninja.errors import HttpError
from ninja.responses import Status

from webapp.accounts.permissions import api_require_operator
from webapp.api_types import MAX_IDS, DbId, Detail
from webapp.merges import selectors, services
from webapp.merges.models import MergeJob
from webapp.workloads.selectors import queries_by_ids

router = Router(tags=["merge jobs"])


class QueryRef(Schema):
    id: int
    name: str


class MergeJobIn(Schema):
    queries: list[DbId] = Field(..., max_length=MAX_IDS, description="ids of ready queries to merge")
    strategy: str = "gemel+"
    budget_minutes: float | None = Field(None, description="wall-clock budget of the search (none: no limit)")
    accept_confidence: float | None = Field(
        None, description="accept a round when validation frames show every target met at this one-sided "
        "confidence, in [0.5, 1) (none: when the point figures meet them)",
    )


class MergeJobOut(Schema):
    id: int
    strategy: str
    status: str
    budget_minutes: float | None
    accept_confidence: float | None
    queries: list[QueryRef]
    created_by: str | None
    created_at: str | None
    started_at: str | None
    finished_at: str | None
    heartbeat_at: str | None
    attempts: int
    worker: str
    cancel_requested: bool
    unmerged_param_bytes: int | None
    merged_param_bytes: int | None
    saved_param_bytes: int | None
    savings_fraction: float | None
    error: str
    # One sentence on how the search ended (what it saved; where the budget cut a round and what it needed).
    outcome: str | None = None
    finished: bool


class MergeEventOut(Schema):
    seq: int
    type: str
    at: str | None
    payload: dict[str, Any]


class BundleFileOut(Schema):
    name: str
    sha256: str
    size_bytes: int


class MergeBundleOut(Schema):
    id: int
    job: int
    index: int
    round: int
    saved_param_bytes: int
    elapsed: float
    accuracies: dict[str, float]
    required: dict[str, float]
    meets_targets: bool
    deployable: bool
    reason: str
    files: list[BundleFileOut]
    created_at: str | None


def _job(job_id: int) -> MergeJob:
    try:
        return selectors.merge_job_get(job_id)
    except MergeJob.DoesNotExist:
        raise HttpError(404, f"no merge job {job_id}") from None


@router.get("/merge-jobs", response=list[MergeJobOut])
def list_jobs(request: HttpRequest) -> list[dict[str, Any]]:
    """List the merge jobs, newest first."""
    return [selectors.merge_job_data(job) for job in selectors.merge_job_list()]


@router.post("/merge-jobs", response={201: MergeJobOut, 400: Detail, 403: Detail})
def start_job(request: HttpRequest, payload: MergeJobIn) -> Status[dict[str, Any]]:
    """Start a merge job over ready queries (operators only); it is queued on the merge workers."""
    api_require_operator(request)
    queries = queries_by_ids(payload.queries)
    job = services.merge_job_start(
        queries=queries, strategy=payload.strategy, budget_minutes=payload.budget_minutes, user=request.user,
        accept_confidence=payload.accept_confidence,
    )
    return Status(201, selectors.merge_job_data(selectors.merge_job_get(job.pk)))


@router.get("/merge-jobs/{job_id}", response={200: MergeJobOut, 404: Detail})
def get_job(request: HttpRequest, job_id: int) -> dict[str, Any]:
    """Return one merge job."""
    return selectors.merge_job_data(_job(job_id))


@router.get("/merge-jobs/{job_id}/events", response={200: list[MergeEventOut], 404: Detail})
def job_events(request: HttpRequest, job_id: int, after: int = 0) -> list[dict[str, Any]]:
    """Return the job's progress events with a sequence number above ``after``, in order (to catch up)."""
    return [selectors.merge_event_data(event) for event in selectors.merge_job_events(_job(job_id), after=after)]


@router.get("/merge-jobs/{job_id}/bundles", response={200: list[MergeBundleOut], 404: Detail})
def job_bundles(request: HttpRequest, job_id: int) -> list[dict[str, Any]]:
    """Return the configurations the job saved, with whether each may be deployed and why not."""
    return [selectors.merge_bundle_data(bundle) for bundle in selectors.merge_job_bundles(_job(job_id))]


@router.post("/merge-jobs/{job_id}/cancel", response={200: MergeJobOut, 403: Detail, 404: Detail, 409: Detail})
def cancel_job(request: HttpRequest, job_id: int) -> dict[str, Any]:
    """Cancel a queued or running job (operators only); 409 when it has already finished."""
    api_require_operator(request)
    job = services.merge_job_cancel(job=_job(job_id), user=request.user)
    return selectors.merge_job_data(job)
