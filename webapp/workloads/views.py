"""Pages of the workloads app: cameras, models and queries, the workload analysis, camera thumbnails.

Views parse forms and call services; every write is operator-only (viewers get 403).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django import forms
from django.contrib import messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from webapp.accounts.permissions import operator_required
from webapp.accounts.selectors import user_is_operator
from webapp.field_errors import add_service_error
from webapp.workloads import selectors, services
from webapp.workloads.forms import (
    AnalysisForm,
    CameraAnnotationsForm,
    CameraForm,
    CameraTeacherForm,
    DemoSeedForm,
    ModelRenameForm,
    ModelUploadForm,
    QueryForm,
    SiteForm,
    TrainingForm,
)
from webapp.workloads.models import Camera, ModelEntry, Query
from webapp.workloads.uploads import upload_too_large_message


@require_GET
def cameras(request: HttpRequest) -> HttpResponse:
    """List cameras (with thumbnails), models and queries, and the demo workload's progress."""
    building = selectors.demo_seeds_building().exists()
    demo_form = DemoSeedForm()
    if building:  # one build at a time: the scale cannot be changed while one runs (the script enables it after)
        demo_form.fields["scale"].widget.attrs.update({"disabled": True, "title": "a demo build is running"})
    return render(request, "workloads/cameras.html", {
        "cameras": selectors.camera_list(),
        "models": selectors.model_list(),
        "queries": selectors.query_list_with_chance_verdicts(),
        "demo_seeds": selectors.demo_seed_list(),
        "training_runs": selectors.training_run_list(),
        "demo_building": building,
        "demo_form": demo_form,
    })


@require_GET
def camera_thumbnail(request: HttpRequest, pk: int) -> FileResponse:
    """Serve a camera's thumbnail to signed-in users (media is not public)."""
    camera = get_object_or_404(Camera, pk=pk)
    if not camera.thumbnail:
        raise Http404("no thumbnail")
    try:
        handle = camera.thumbnail.open("rb")
    except FileNotFoundError:
        raise Http404("no thumbnail") from None
    return FileResponse(handle, content_type="image/png")


def _form_page(
    request: HttpRequest, form: forms.Form, save: Callable[[], Any], *, title: str, submit: str, done: str,
    multipart: bool = False, then: str = "cameras",
) -> HttpResponse:
    """Run ``save`` for a valid POSTed form and go to the page ``then`` names (a service's refusal goes back into
    the form, under the field it is about) or render the form: 400 for a POST that was refused, with what is
    wrong under each field."""
    if request.method == "POST" and form.is_valid():
        try:
            save()
        except ValidationError as exc:
            add_service_error(form, exc)
        else:
            messages.success(request, done)
            return redirect(then)
    return render(request, "workloads/form.html", {
        "form": form, "title": title, "submit": submit, "multipart": multipart,
    }, status=400 if request.method == "POST" else 200)


def _confirm_delete(
    request: HttpRequest, obj: Camera | ModelEntry | Query, kind: str, delete: Callable[[], None]
) -> HttpResponse:
    error = None
    if request.method == "POST":
        try:
            delete()
        except ValidationError as exc:
            error = "; ".join(exc.messages)
        else:
            messages.success(request, f"Deleted {kind} {obj.name}.")
            return redirect("cameras")
    return render(request, "workloads/confirm_delete.html", {"object": obj, "kind": kind, "error": error})


@operator_required
@require_http_methods(["GET", "POST"])
def site_create(request: HttpRequest) -> HttpResponse:
    """Add a site (its boxes register with agent tokens made for it; its cameras are registered into it)."""
    form = SiteForm(request.POST or None)
    return _form_page(request, form, lambda: services.site_create(**form.cleaned_data), title="Add a site",
                      submit="Add site", done="Site added.", then="overview")


@operator_required
@require_http_methods(["GET", "POST"])
def camera_create(request: HttpRequest) -> HttpResponse:
    """Register a camera."""
    form = CameraForm(request.POST or None)
    return _form_page(request, form, lambda: services.camera_register(**form.cleaned_data),
                      title="Register a camera", submit="Register camera", done="Camera registered.")


@operator_required
@require_http_methods(["GET", "POST"])
def camera_edit(request: HttpRequest, pk: int) -> HttpResponse:
    """Edit a camera."""
    camera = get_object_or_404(Camera, pk=pk)
    initial = {"name": camera.name, "site": camera.site_id, "source": camera.source, "fps": camera.fps,
               "width": camera.width, "height": camera.height}
    form = CameraForm(request.POST or None, initial=initial)
    return _form_page(request, form, lambda: services.camera_update(camera=camera, **form.cleaned_data),
                      title=f"Edit camera {camera.name}", submit="Save camera", done="Camera saved.")


@operator_required
@require_http_methods(["GET", "POST"])
def camera_annotations(request: HttpRequest, pk: int) -> HttpResponse:
    """Upload YOLO or COCO annotations for an image-folder or video-file camera."""
    camera = get_object_or_404(Camera, pk=pk)
    form = CameraAnnotationsForm(request.POST or None, request.FILES or None)
    return _form_page(
        request, form, lambda: services.camera_annotations_upload(camera=camera, file=form.cleaned_data["file"]),
        title=f"Annotations of camera {camera.name}", submit="Upload annotations",
        done=f"Annotations of {camera.name} saved; its queries are measured again.", multipart=True,
    )


@operator_required
@require_http_methods(["GET", "POST"])
def camera_teacher(request: HttpRequest, pk: int) -> HttpResponse:
    """Name a teacher detector whose detections label every query on a camera."""
    camera = get_object_or_404(Camera, pk=pk)
    initial = {"model": camera.teacher_id, "labels": ", ".join(camera.teacher_labels),
               "score_threshold": camera.teacher_score_threshold} if camera.teacher_id else {}
    form = CameraTeacherForm(request.POST or None, initial=initial)

    def save() -> None:
        services.camera_teacher_set(camera=camera, model=form.cleaned_data["model"], labels=form.teacher_labels(),
                                    score_threshold=form.cleaned_data["score_threshold"],
                                    frame_size=form.frame_size())

    return _form_page(request, form, save, title=f"Teacher of camera {camera.name}", submit="Label with this teacher",
                      done=f"{camera.name} is labelled by its teacher; its queries are measured again.")


@operator_required
@require_http_methods(["GET", "POST"])
def training_create(request: HttpRequest) -> HttpResponse:
    """Train a new unmerged model (and its query) on a labelled camera's frames, on a worker."""
    form = TrainingForm(request.POST or None)

    def start() -> None:
        data = form.cleaned_data
        services.training_start(name=data["name"], camera=data["camera"], arch=data["arch"], task=form.task(),
                                steps=data.get("steps"), target_fraction=data["target_fraction"],
                                slo_ms=data["slo_ms"])

    return _form_page(request, form, start, title="Train a model", submit="Start training",
                      done="Training queued; its progress is on this page.")


@operator_required
@require_http_methods(["GET", "POST"])
def camera_delete(request: HttpRequest, pk: int) -> HttpResponse:
    """Confirm, then delete a camera."""
    camera = get_object_or_404(Camera, pk=pk)
    return _confirm_delete(request, camera, "camera", lambda: services.camera_delete(camera=camera))


@operator_required
@require_http_methods(["GET", "POST"])
def model_create(request: HttpRequest) -> HttpResponse:
    """Upload a model (a body over the size limit is refused before it is read)."""
    too_large = upload_too_large_message(request) if request.method == "POST" else None
    if too_large is not None:
        return render(request, "workloads/form.html", {
            "form": ModelUploadForm(), "error": too_large, "title": "Upload a model", "submit": "Upload model",
            "multipart": True,
        }, status=413)
    form = ModelUploadForm(request.POST or None, request.FILES or None)
    return _form_page(request, form, lambda: services.model_register(**form.cleaned_data),
                      title="Upload a model", submit="Upload model", done="Model registered.", multipart=True)


@operator_required
@require_http_methods(["GET", "POST"])
def model_edit(request: HttpRequest, pk: int) -> HttpResponse:
    """Rename a model."""
    model = get_object_or_404(ModelEntry, pk=pk)
    form = ModelRenameForm(request.POST or None, initial={"name": model.name})
    return _form_page(request, form, lambda: services.model_update(model=model, name=form.cleaned_data["name"]),
                      title=f"Rename model {model.name}", submit="Save model", done="Model saved.")


@operator_required
@require_http_methods(["GET", "POST"])
def model_delete(request: HttpRequest, pk: int) -> HttpResponse:
    """Confirm, then delete a model."""
    model = get_object_or_404(ModelEntry, pk=pk)
    return _confirm_delete(request, model, "model", lambda: services.model_delete(model=model))


@operator_required
@require_http_methods(["GET", "POST"])
def query_create(request: HttpRequest) -> HttpResponse:
    """Create a query (its unmerged accuracy is then measured by a worker)."""
    form = QueryForm(request.POST or None)

    def save() -> Query:
        data = form.cleaned_data
        return services.query_create(name=data["name"], camera=data["camera"], model=data["model"], task=form.task(),
                                     target_fraction=data["target_fraction"], slo_ms=data["slo_ms"])

    return _form_page(request, form, save, title="New query", submit="Create query",
                      done="Query created; its unmerged accuracy is being measured.")


@operator_required
@require_http_methods(["GET", "POST"])
def query_edit(request: HttpRequest, pk: int) -> HttpResponse:
    """Edit a query's name, task, target or latency bound."""
    query = get_object_or_404(Query.objects.select_related("camera", "model"), pk=pk)
    form = QueryForm(request.POST or None, query=query, initial=QueryForm.initial_for(query))

    def save() -> Query:
        data = form.cleaned_data
        return services.query_update(query=query, name=data["name"], task=form.task(),
                                     target_fraction=data["target_fraction"], slo_ms=data["slo_ms"])

    return _form_page(request, form, save, title=f"Edit query {query.name}", submit="Save query", done="Query saved.")


@operator_required
@require_http_methods(["GET", "POST"])
def query_delete(request: HttpRequest, pk: int) -> HttpResponse:
    """Confirm, then delete a query."""
    query = get_object_or_404(Query, pk=pk)
    return _confirm_delete(request, query, "query", lambda: services.query_delete(query=query))


@operator_required
@require_POST
def demo_seed(request: HttpRequest) -> HttpResponse:
    """Start building the demo workload on a worker."""
    form = DemoSeedForm(request.POST)
    if form.is_valid():
        try:
            services.demo_seed_start(scale=form.cleaned_data["scale"])
        except ValidationError as exc:
            messages.error(request, "; ".join(exc.messages))
        else:
            messages.success(request, "Building the demo workload; its queries appear here as they are trained.")
    return redirect("cameras")


@require_http_methods(["GET", "POST"])
def analysis(request: HttpRequest) -> HttpResponse:
    """Show the latest workload analysis; operators run a new one over the chosen queries (all by default)."""
    form = AnalysisForm(request.POST or None)
    if request.method == "POST":
        if not user_is_operator(request.user):
            raise PermissionDenied("operators only")
        if form.is_valid():
            chosen = form.cleaned_data["queries"] or None
            try:
                services.workload_analyze(queries=chosen, mode=form.cleaned_data["mode"], user=request.user)
            except ValidationError as exc:
                add_service_error(form, exc)
            else:
                return redirect("analysis")
    latest = selectors.analysis_latest()
    return render(request, "workloads/analysis.html", {
        "form": form,
        "analysis": latest,
        "chart": selectors.analysis_chart_data(latest) if latest else None,
        "pairs": selectors.sharing_pairs(latest) if latest else [],
    }, status=400 if request.method == "POST" else 200)

