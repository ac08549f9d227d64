"""JSON API of cameras, models, queries, workload analyses and demo seeds.

Reads are open to every signed-in user; writes need an operator (viewers get 403). Service refusals come
back as 400 with {"detail": "..."}.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any, Literal

from django.http import HttpRequest
from django.shortcuts import get_object_or_404
from ninja import File, Form, Router, Schema, Status
from ninja.decorators import decorate_view
from ninja.errors import HttpError
from ninja.files import UploadedFile
from pydantic import Field

from webapp.accounts.permissions import api_require_operator
from webapp.api_types import MAX_IDS, DbId, Detail
from webapp.workloads import selectors, services
from webapp.workloads.engine import camera_classes, camera_labels, query_chance_shortfall
from webapp.workloads.models import Camera, DemoSeed, ModelEntry, Query, Site, TrainingRun, WorkloadAnalysis
from webapp.workloads.uploads import refuse_oversized_upload

router = Router(tags=["workloads"])


class SiteIn(Schema):
    name: str = Field(..., max_length=100)


class SiteOut(Schema):
    id: int
    name: str
    created_at: datetime


class CameraIn(Schema):
    name: str
    site: DbId | None = Field(None, description="the camera's site (default: the default site)")
    source: str
    fps: float = 10.0
    width: int = 64
    height: int = 64


class CameraPatch(Schema):
    name: str | None = None
    site: DbId | None = Field(None, description="move the camera to this site (only while no query watches it)")
    source: str | None = None
    fps: float | None = None
    width: int | None = None
    height: int | None = None


class CameraOut(Schema):
    id: int
    name: str
    site: int
    source: str
    fps: float
    width: int
    height: int
    sampling: dict[str, Any]
    thumbnail_url: str | None
    labels: str = Field(description="yolo, coco (uploaded annotations), ground_truth (a synthetic scene) or "
                        "teacher (the camera's teacher detector, else each query's own model)")
    teacher: int | None = Field(None, description="the model whose detections label the camera, if any")
    classes: list[str] = Field(description="the class names a query on this camera may look for")
    created_at: datetime


class ModelPatch(Schema):
    name: str


class ModelOut(Schema):
    id: int
    name: str
    arch: str
    builder_args: dict[str, Any]
    weights_sha256: str
    weights_size: int
    param_bytes: int
    created_at: datetime


class QueryIn(Schema):
    name: str
    camera: int
    model: int
    task: dict[str, Any]
    target_fraction: float = 0.95
    slo_ms: float = 500.0


FrameSize = Annotated[list[Annotated[int, Field(ge=16, le=2048)]], Field(min_length=2, max_length=2)]


class TeacherIn(Schema):
    model: DbId = Field(..., description="a registered detector (typically larger than the queries' models)")
    labels: Annotated[list[Annotated[str, Field(max_length=100)]], Field(max_length=1000)] | Literal["coco"] = Field(
        ..., description="the class of each of its label ids from 1 on (\"\" for an id that names none), or "
        "\"coco\" for torchvision's COCO detectors")
    score_threshold: float = Field(0.5, ge=0.0, le=1.0, allow_inf_nan=False,
                                   description="the score a detection needs to be a label")
    frame_size: FrameSize | None = Field(
        None, description="[width, height] the teacher sees (default: the camera's own frame size)")


class TrainingIn(Schema):
    name: str = Field(..., max_length=100, description="names the new model and its query")
    camera: DbId
    arch: str = Field(..., max_length=64)
    task: dict[str, Any]
    steps: int | None = Field(None, ge=1, description="optimizer steps (default: the architecture's recipe)")
    target_fraction: float = 0.95
    slo_ms: float = 500.0


class TrainingOut(Schema):
    id: int
    name: str
    camera: str
    arch: str
    task: dict[str, Any]
    status: str
    steps: int
    steps_done: int
    detail: str
    query: int | None
    created_at: datetime


class QueryPatch(Schema):
    name: str | None = None
    task: dict[str, Any] | None = None
    target_fraction: float | None = None
    slo_ms: float | None = None


class QueryOut(Schema):
    id: int
    name: str
    camera: int
    model: int
    task: dict[str, Any]
    target_fraction: float
    slo_ms: float
    status: str
    status_detail: str
    unmerged_accuracy: float | None
    chance_accuracy: float | None
    # Held-out test frames: {"accuracy", "interval": [low, high], "frames"} of the unmerged model and of always
    # answering the commonest class (None for detection or before measuring).
    unmerged_test: dict[str, Any] | None
    chance_test: dict[str, Any] | None
    # The unmerged model's lead over that baseline on the same frames, with its paired 95% interval.
    chance_lead: dict[str, Any] | None
    # Why the unmerged model is not clearly better than chance on test frames; None when it is.
    chance_shortfall: str | None


class AnalysisIn(Schema):
    queries: Annotated[list[DbId], Field(max_length=MAX_IDS)] | None = None
    mode: str = "shape"


class AnalysisOut(Schema):
    id: int
    mode: str
    created_at: datetime
    queries: list[int]
    result: dict[str, Any]


class DemoSeedIn(Schema):
    scale: str = "tiny"


class DemoSeedOut(Schema):
    scale: str
    status: str
    detail: str
    queries_registered: int
    queries_total: int
    celery_task_id: str
    updated_at: datetime


def _camera_out(camera: Camera) -> dict[str, Any]:
    from django.urls import reverse

    return {
        "id": camera.pk, "name": camera.name, "site": camera.site_id, "source": camera.source, "fps": camera.fps,
        "width": camera.width, "height": camera.height, "sampling": camera.sampling or {},
        "created_at": camera.created_at,
        "thumbnail_url": reverse("camera_thumbnail", args=[camera.pk]) if camera.thumbnail else None,
        "labels": camera_labels(camera), "classes": list(camera_classes(camera)), "teacher": camera.teacher_id,
    }


def _query_out(query: Query) -> dict[str, Any]:
    return {
        "id": query.pk, "name": query.name, "camera": query.camera_id, "model": query.model_id, "task": query.task,
        "target_fraction": query.target_fraction, "slo_ms": query.slo_ms, "status": query.status,
        "status_detail": query.status_detail, "unmerged_accuracy": query.unmerged_accuracy,
        "chance_accuracy": query.chance_accuracy, "unmerged_test": query.unmerged_test,
        "chance_test": query.chance_test, "chance_lead": query.chance_lead,
        "chance_shortfall": query_chance_shortfall(query),
    }


def _analysis_out(analysis: WorkloadAnalysis) -> dict[str, Any]:
    return {
        "id": analysis.pk, "mode": analysis.mode, "created_at": analysis.created_at, "result": analysis.result,
        "queries": sorted(query.pk for query in analysis.queries.all()),
    }


# --- sites ---------------------------------------------------------------------------------------------


@router.get("/sites", response=list[SiteOut])
def list_sites(request: HttpRequest) -> list[Site]:
    """List the sites."""
    return list(selectors.site_list())


@router.post("/sites", response={201: SiteOut, 400: Detail, 403: Detail})
def create_site(request: HttpRequest, payload: SiteIn) -> Status:
    """Add a site."""
    api_require_operator(request)
    return Status(201, services.site_create(name=payload.name))


# --- cameras -------------------------------------------------------------------------------------------


@router.get("/cameras", response=list[CameraOut])
def list_cameras(request: HttpRequest) -> list[dict[str, Any]]:
    """List the cameras."""
    return [_camera_out(camera) for camera in selectors.camera_list()]


@router.get("/cameras/{camera_id}", response={200: CameraOut, 404: Detail})
def get_camera(request: HttpRequest, camera_id: int) -> dict[str, Any]:
    """Return one camera."""
    return _camera_out(get_object_or_404(Camera, pk=camera_id))


@router.post("/cameras", response={201: CameraOut, 400: Detail, 403: Detail})
def create_camera(request: HttpRequest, payload: CameraIn) -> Status:
    """Register a camera (its source is checked and its first frame decoded)."""
    api_require_operator(request)
    fields = payload.dict()
    fields["site"] = selectors.site_by_id(fields["site"])
    return Status(201, _camera_out(services.camera_register(**fields)))


@router.patch("/cameras/{camera_id}", response={200: CameraOut, 400: Detail, 403: Detail, 404: Detail})
def update_camera(request: HttpRequest, camera_id: int, payload: CameraPatch) -> dict[str, Any]:
    """Change a camera."""
    api_require_operator(request)
    camera = get_object_or_404(Camera, pk=camera_id)
    fields = payload.dict(exclude_unset=True)
    if "site" in fields:
        fields["site"] = selectors.site_by_id(fields["site"])
    return _camera_out(services.camera_update(camera=camera, **fields))


@router.delete("/cameras/{camera_id}", response={204: None, 400: Detail, 403: Detail, 404: Detail})
def delete_camera(request: HttpRequest, camera_id: int) -> Status:
    """Delete a camera no query uses."""
    api_require_operator(request)
    camera = get_object_or_404(Camera, pk=camera_id)
    services.camera_delete(camera=camera)
    return Status(204, None)


# --- models --------------------------------------------------------------------------------------------


@router.get("/models", response=list[ModelOut])
def list_models(request: HttpRequest) -> list[ModelEntry]:
    """List the models."""
    return list(selectors.model_list())


@router.get("/models/{model_id}", response={200: ModelOut, 404: Detail})
def get_model(request: HttpRequest, model_id: int) -> ModelEntry:
    """Return one model."""
    return get_object_or_404(ModelEntry, pk=model_id)


@router.post("/models", response={201: ModelOut, 400: Detail, 403: Detail, 413: Detail})
@decorate_view(refuse_oversized_upload)
def create_model(
    request: HttpRequest, name: Form[str], arch: Form[str], weights: File[UploadedFile],
    builder_args: Form[str] = "{}",
) -> Status:
    """Upload a model as multipart: name, arch, builder_args (a JSON object) and the weights file."""
    api_require_operator(request)
    try:
        args = json.loads(builder_args)
    except json.JSONDecodeError as exc:
        raise HttpError(400, f"builder_args is not valid JSON: {exc}") from None
    entry = services.model_register(name=name, arch=arch, weights=weights, builder_args=args)
    return Status(201, entry)


@router.patch("/models/{model_id}", response={200: ModelOut, 400: Detail, 403: Detail, 404: Detail})
def update_model(request: HttpRequest, model_id: int, payload: ModelPatch) -> ModelEntry:
    """Rename a model."""
    api_require_operator(request)
    model = get_object_or_404(ModelEntry, pk=model_id)
    return services.model_update(model=model, name=payload.name)


@router.delete("/models/{model_id}", response={204: None, 400: Detail, 403: Detail, 404: Detail})
def delete_model(request: HttpRequest, model_id: int) -> Status:
    """Delete a model no query uses."""
    api_require_operator(request)
    model = get_object_or_404(ModelEntry, pk=model_id)
    services.model_delete(model=model)
    return Status(204, None)


# --- queries -------------------------------------------------------------------------------------------


@router.get("/queries", response=list[QueryOut])
def list_queries(request: HttpRequest) -> list[dict[str, Any]]:
    """List the queries with their status and measured accuracies."""
    return [_query_out(query) for query in selectors.query_list()]


@router.get("/queries/{query_id}", response={200: QueryOut, 404: Detail})
def get_query(request: HttpRequest, query_id: int) -> dict[str, Any]:
    """Return one query."""
    return _query_out(get_object_or_404(Query, pk=query_id))


def _training_out(run: TrainingRun) -> dict[str, Any]:
    return {
        "id": run.pk, "name": run.name, "camera": run.camera.name, "arch": run.arch, "task": run.task,
        "status": run.status, "steps": run.steps, "steps_done": run.steps_done, "detail": run.detail,
        "query": run.query_id, "created_at": run.created_at,
    }


@router.post("/cameras/{camera_id}/annotations", response={200: CameraOut, 400: Detail, 403: Detail, 404: Detail})
def upload_annotations(request: HttpRequest, camera_id: int, file: File[UploadedFile]) -> dict[str, Any]:
    """Label an image-folder or video-file camera with a zip of YOLO label files or a COCO json (multipart
    ``file``); they are read against every frame first, and the camera's queries are measured again."""
    api_require_operator(request)
    camera = get_object_or_404(Camera, pk=camera_id)
    return _camera_out(services.camera_annotations_upload(camera=camera, file=file))


@router.post("/cameras/{camera_id}/teacher", response={200: CameraOut, 400: Detail, 403: Detail, 404: Detail})
def set_teacher(request: HttpRequest, camera_id: int, payload: TeacherIn) -> dict[str, Any]:
    """Label a camera with a teacher detector: its detections become the boxes every query on the camera is
    labelled from (replacing uploaded annotations); its weights are loaded against the labels first, and the
    camera's queries are measured again."""
    api_require_operator(request)
    camera = get_object_or_404(Camera, pk=camera_id)
    model = get_object_or_404(ModelEntry, pk=payload.model)
    return _camera_out(services.camera_teacher_set(
        camera=camera, model=model, labels=payload.labels, score_threshold=payload.score_threshold,
        frame_size=payload.frame_size,
    ))


@router.get("/training-runs", response=list[TrainingOut])
def list_training_runs(request: HttpRequest) -> list[dict[str, Any]]:
    """List the latest training runs, newest first."""
    return [_training_out(run) for run in selectors.training_run_list()]


@router.post("/training-runs", response={201: TrainingOut, 400: Detail, 403: Detail, 404: Detail})
def start_training(request: HttpRequest, payload: TrainingIn) -> Status:
    """Train a new unmerged model from a labelled camera's frames on a worker; it becomes a model and a query."""
    api_require_operator(request)
    camera = get_object_or_404(Camera, pk=payload.camera)
    run = services.training_start(
        name=payload.name, camera=camera, arch=payload.arch, task=payload.task, steps=payload.steps,
        target_fraction=payload.target_fraction, slo_ms=payload.slo_ms,
    )
    return Status(201, _training_out(run))


@router.post("/queries", response={201: QueryOut, 400: Detail, 403: Detail, 404: Detail})
def create_query(request: HttpRequest, payload: QueryIn) -> Status:
    """Create a query; its unmerged accuracy is measured by a worker (status pending → measuring → ready)."""
    api_require_operator(request)
    camera = get_object_or_404(Camera, pk=payload.camera)
    model = get_object_or_404(ModelEntry, pk=payload.model)
    query = services.query_create(
        name=payload.name, camera=camera, model=model, task=payload.task, target_fraction=payload.target_fraction,
        slo_ms=payload.slo_ms,
    )
    return Status(201, _query_out(query))


@router.patch("/queries/{query_id}", response={200: QueryOut, 400: Detail, 403: Detail, 404: Detail})
def update_query(request: HttpRequest, query_id: int, payload: QueryPatch) -> dict[str, Any]:
    """Change a query's name, task, target or latency bound."""
    api_require_operator(request)
    query = get_object_or_404(Query, pk=query_id)
    return _query_out(services.query_update(query=query, **payload.dict(exclude_unset=True)))


@router.delete("/queries/{query_id}", response={204: None, 400: Detail, 403: Detail, 404: Detail})
def delete_query(request: HttpRequest, query_id: int) -> Status:
    """Delete a query."""
    api_require_operator(request)
    query = get_object_or_404(Query, pk=query_id)
    services.query_delete(query=query)
    return Status(204, None)


# --- analyses and demo seeds ---------------------------------------------------------------------------


@router.get("/analyses", response=list[AnalysisOut])
def list_analyses(request: HttpRequest) -> list[dict[str, Any]]:
    """List the workload analyses, newest first."""
    return [_analysis_out(analysis) for analysis in selectors.analysis_list()]


@router.get("/analyses/{analysis_id}", response={200: AnalysisOut, 404: Detail})
def get_analysis(request: HttpRequest, analysis_id: int) -> dict[str, Any]:
    """Return one analysis."""
    return _analysis_out(get_object_or_404(WorkloadAnalysis, pk=analysis_id))


@router.post("/analyses", response={201: AnalysisOut, 400: Detail, 403: Detail})
def create_analysis(request: HttpRequest, payload: AnalysisIn) -> Status:
    """Analyse the sharing potential of the given queries (every ready one when none is given)."""
    api_require_operator(request)
    chosen = None if payload.queries is None else selectors.queries_by_ids(payload.queries)
    analysis = services.workload_analyze(queries=chosen, mode=payload.mode, user=request.user)
    return Status(201, _analysis_out(analysis))


@router.get("/demo-seeds", response=list[DemoSeedOut])
def list_demo_seeds(request: HttpRequest) -> list[DemoSeed]:
    """List the demo workloads being built or built."""
    return list(selectors.demo_seed_list())


@router.post("/demo-seeds", response={202: DemoSeedOut, 400: Detail, 403: Detail})
def start_demo_seed(request: HttpRequest, payload: DemoSeedIn) -> Status:
    """Start building a demo workload on a worker."""
    api_require_operator(request)
    services.demo_seed_start(scale=payload.scale)
    return Status(202, DemoSeed.objects.get(scale=payload.scale))
