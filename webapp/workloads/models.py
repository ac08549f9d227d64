"""Cameras, models (architecture + weights) and the queries that join them, plus workload analyses."""

from __future__ import annotations

from django.conf import settings
from django.db import models

DEFAULT_SITE = "default"


class Site(models.Model):
    """A place with its own cameras and the edge boxes that watch them (a junction, a store): a merge job is over
    one site's queries, and its bundles deploy only to that site's boxes."""

    name = models.CharField(max_length=100, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


def default_site_id() -> int:
    """Return the id of the default site, creating it the first time (the default of every site field: a row made
    without naming a site belongs to it)."""
    return Site.objects.get_or_create(name=DEFAULT_SITE)[0].pk


class Camera(models.Model):
    """A video source the edge boxes of its site watch."""

    # Operator-chosen name; any text (rendered escaped everywhere).
    name = models.CharField(max_length=100, unique=True)
    site = models.ForeignKey(Site, on_delete=models.PROTECT, default=default_site_id, related_name="cameras")
    # Source URI: synthetic://..., rtsp://..., http(s)://..., file:// or a path inside an allowed root.
    source = models.CharField(max_length=500)
    fps = models.FloatField(default=10.0)
    width = models.PositiveIntegerField(default=64)
    height = models.PositiveIntegerField(default=64)
    # Engine CameraSpec options beyond the frame size: every/count/max_frames, val_fraction, gap_seconds.
    sampling = models.JSONField(default=dict, blank=True)
    # Source index of the camera's first held-out test frame, found when a query on it is measured (None before):
    # deployments serve from there, so the monitor's effective accuracy is measured on unseen frames.
    test_start_frame = models.PositiveIntegerField(null=True, blank=True)
    class Labels(models.TextChoices):
        AUTO = "", "automatic (ground truth of a synthetic camera, else each query's own model)"
        YOLO = "yolo", "YOLO label files"
        COCO = "coco", "COCO json"
        TEACHER = "teacher", "a teacher model's detections"

    # Where the frames' labels come from; uploaded annotations (image-folder and video-file cameras) replace the
    # automatic choice.
    labels = models.CharField(max_length=8, choices=Labels.choices, default=Labels.AUTO, blank=True)
    # The uploaded annotations inside MEDIA_ROOT: a folder of YOLO files or a COCO json ("" without).
    annotations = models.CharField(max_length=300, blank=True)
    # The class names the annotations use, in id order, and where they were read ([] and "" without).
    vocabulary = models.JSONField(default=list, blank=True)
    vocabulary_source = models.CharField(max_length=300, blank=True)
    # A registered detector whose detections label every query on the camera (labels "teacher"), the class each
    # of its label ids names from 1 on ("" for none), the score a box needs, and the frame size it sees
    # ([width, height]; None: the camera's own size).
    teacher = models.ForeignKey("ModelEntry", on_delete=models.PROTECT, null=True, blank=True,
                                related_name="taught_cameras")
    teacher_labels = models.JSONField(default=list, blank=True)
    teacher_score_threshold = models.FloatField(default=0.5)
    teacher_frame_size = models.JSONField(null=True, blank=True)
    # A frame grabbed when the camera was registered (proves it decodes).
    thumbnail = models.ImageField(upload_to="thumbnails/", blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class ModelEntry(models.Model):
    """A DNN the operator uploaded: a zoo architecture and its weights (safetensors or weights-only .pt)."""

    name = models.CharField(max_length=100, unique=True)
    # Registered gemel_engine.zoo architecture.
    arch = models.CharField(max_length=64)
    # Zoo builder arguments (num_classes, a detector's min_size...).
    builder_args = models.JSONField(default=dict, blank=True)
    weights = models.FileField(upload_to="weights/", blank=True)
    weights_sha256 = models.CharField(max_length=64, blank=True)
    weights_size = models.BigIntegerField(default=0)
    # Parameter bytes of the model (unique storages).
    param_bytes = models.BigIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        verbose_name = "model"

    def __str__(self) -> str:
        return self.name


class Query(models.Model):
    """One camera + one model + a task + an accuracy target."""

    class Status(models.TextChoices):
        PENDING = "pending", "pending"
        MEASURING = "measuring", "measuring unmerged accuracy"
        READY = "ready", "ready"
        FAILED = "failed", "failed"

    name = models.CharField(max_length=100, unique=True)
    camera = models.ForeignKey(Camera, on_delete=models.PROTECT, related_name="queries")
    model = models.ForeignKey(ModelEntry, on_delete=models.PROTECT, related_name="queries")
    # gemel_engine.queries.Task JSON: {"kind": "presence"|"count"|"detection", "classes": [...], ...}.
    task = models.JSONField()
    # Fraction of the unmerged accuracy a merged model must keep.
    target_fraction = models.FloatField(default=0.95)
    # Latency bound of the query on the edge, in milliseconds.
    slo_ms = models.FloatField(default=500.0)
    # The unmerged model on validation frames (the search's reference) and the commonest class there.
    unmerged_accuracy = models.FloatField(null=True, blank=True)
    chance_accuracy = models.FloatField(null=True, blank=True)
    # The unmerged model on held-out test frames: gemel_engine.accuracy.Measurement JSON (accuracy, 95% interval,
    # frames); the reference of the deploy gate.
    unmerged_test = models.JSONField(null=True, blank=True)
    # Always answering the commonest class of the training frames, on the same test frames (Measurement JSON;
    # None for detection): what the unmerged model must clearly beat to be worth merging.
    chance_test = models.JSONField(null=True, blank=True)
    # The unmerged model's lead over that baseline on the same frames, with its paired 95% interval (Measurement
    # JSON whose accuracy is the lead): a lead not clearly above 0 flags the query as not clearly better than chance.
    chance_lead = models.JSONField(null=True, blank=True)
    # Seconds one training frame of its unmerged model took on this machine (forward and backward), as the demo
    # build measured while training it; None for a model trained elsewhere. A first job's budget hint reads it.
    train_frame_seconds = models.FloatField(null=True, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    status_detail = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        verbose_name_plural = "queries"

    def __str__(self) -> str:
        return self.name


class DemoSeed(models.Model):
    """Progress of building and registering one engine demo workload (``manage.py demo_seed``)."""

    class Status(models.TextChoices):
        QUEUED = "queued", "queued"
        BUILDING = "building", "building"
        READY = "ready", "ready"
        FAILED = "failed", "failed"

    # Demo scale of gemel_engine.demo (tiny, mix, small...).
    scale = models.CharField(max_length=16, unique=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    # Last progress line (which query is training, what failed).
    detail = models.TextField(blank=True)
    queries_registered = models.PositiveIntegerField(default=0)
    queries_total = models.PositiveIntegerField(default=0)
    celery_task_id = models.CharField(max_length=64, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"demo {self.scale} ({self.status})"


class TrainingRun(models.Model):
    """Training an unmerged model from scratch on a labelled camera's frames; it becomes a model and a query."""

    class Status(models.TextChoices):
        QUEUED = "queued", "queued"
        TRAINING = "training", "training"
        SUCCEEDED = "succeeded", "succeeded"
        FAILED = "failed", "failed"

    # The name of the model and of the query it becomes.
    name = models.CharField(max_length=64)
    camera = models.ForeignKey(Camera, on_delete=models.CASCADE, related_name="training_runs")
    arch = models.CharField(max_length=64)
    # Task JSON of the query (as Query.task).
    task = models.JSONField()
    target_fraction = models.FloatField(default=0.95)
    slo_ms = models.FloatField(default=500.0)
    steps = models.PositiveIntegerField()
    steps_done = models.PositiveIntegerField(default=0)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    detail = models.TextField(blank=True)
    # The query it became (None until it succeeds).
    query = models.ForeignKey(Query, null=True, blank=True, on_delete=models.SET_NULL, related_name="training_runs")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"training {self.name} ({self.status})"


class WorkloadAnalysis(models.Model):
    """Sharing potential of a set of queries' models (gemel_engine.layers.analyze_models)."""

    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    # "exact" or "shape" signatures.
    mode = models.CharField(max_length=8, default="shape")
    queries = models.ManyToManyField(Query, related_name="analyses")
    # WorkloadAnalysis.to_dict() of the engine.
    result = models.JSONField(default=dict)

    class Meta:
        ordering = ["-created_at"]
        verbose_name_plural = "workload analyses"
