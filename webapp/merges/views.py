"""Pages of the merges app: the job list with its start form, and a job's live page."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from webapp.accounts.permissions import operator_required
from webapp.accounts.selectors import user_is_operator
from webapp.field_errors import add_service_error
from webapp.merges import selectors, services
from webapp.merges.forms import MergeJobStartForm
from webapp.merges.models import MergeJob
from webapp.workloads.selectors import queries_no_better_than_chance, queries_ready


def _job_or_404(job_id: int) -> MergeJob:
    try:
        return selectors.merge_job_get(job_id)
    except MergeJob.DoesNotExist:
        raise Http404(f"no merge job {job_id}") from None


@require_http_methods(["GET", "POST"])
def merge_jobs(request: HttpRequest) -> HttpResponse:
    """List the merge jobs; operators start one with the form (POST)."""
    if request.method == "POST":
        return _start(request)
    form = MergeJobStartForm() if user_is_operator(request.user) else None
    return render(request, "merges/job_list.html", _list_context(form))


def _list_context(form: MergeJobStartForm | None) -> dict[str, Any]:
    return {"jobs": selectors.merge_job_list(), "form": form, "budget_hint": selectors.merge_budget_hint(),
            "chance_warnings": queries_no_better_than_chance(queries_ready())}


@operator_required
def _start(request: HttpRequest) -> HttpResponse:
    form = MergeJobStartForm(request.POST)
    if form.is_valid():
        try:
            job = services.merge_job_start(
                queries=form.cleaned_data["queries"], strategy=form.cleaned_data["strategy"],
                budget_minutes=form.cleaned_data["budget_minutes"], user=request.user,
                accept_confidence=form.cleaned_data["accept_confidence"],
            )
        except ValidationError as exc:
            add_service_error(form, exc)
        else:
            return redirect("merge_job_detail", job_id=job.pk)
    return render(request, "merges/job_list.html", _list_context(form), status=400)


@require_GET
def merge_job_detail(request: HttpRequest, job_id: int) -> HttpResponse:
    """Show a job live: savings over time, accuracy per query against its target, bundles and events."""
    job = _job_or_404(job_id)
    page_data = selectors.merge_job_page_data(job)
    context = {
        "job": job, "page_data": page_data, "best_bundle": selectors.merge_job_best_bundle(page_data["bundles"]),
        "bundles": selectors.merge_job_bundles(job), "queries": job.queries.all(),
    }
    return render(request, "merges/job_detail.html", context)


@require_POST
@operator_required
def merge_job_cancel(request: HttpRequest, job_id: int) -> HttpResponse:
    """Cancel a job from its page (the page's script calls the API instead when it runs)."""
    job = _job_or_404(job_id)
    try:
        services.merge_job_cancel(job=job, user=request.user)
    except ValidationError as exc:
        messages.error(request, "; ".join(exc.messages))
    return redirect("merge_job_detail", job_id=job.pk)
