"""Merge jobs, their progress events and the configurations (bundles) they accepted."""

from __future__ import annotations

from django.conf import settings
from django.db import models

from webapp.workloads.models import Query, Site, default_site_id


class MergeJob(models.Model):
    """One run of the merge search over some queries, executed by a Celery worker on the merge queue."""

    class Status(models.TextChoices):
        QUEUED = "queued", "queued"
        RUNNING = "running", "running"
        SUCCEEDED = "succeeded", "succeeded"
        FAILED = "failed", "failed"
        CANCELLED = "cancelled", "cancelled"

    strategy = models.CharField(max_length=16, default="gemel+")
    # Wall-clock budget of the search in minutes (null: until the queue is empty).
    budget_minutes = models.FloatField(null=True, blank=True)
    # A round is accepted when validation frames show every target met at this one-sided confidence (null: when
    # the point figures meet them; gemel_engine.accuracy.TargetTest).
    accept_confidence = models.FloatField(null=True, blank=True)
    queries = models.ManyToManyField(Query, related_name="merge_jobs")
    # The site whose queries it merges (all of them are on its cameras); its bundles deploy to this site's boxes.
    site = models.ForeignKey(Site, on_delete=models.PROTECT, default=default_site_id, related_name="merge_jobs")
    # {query id: its name when the job started}: the names the job's bundles address their models by, so a
    # query renamed afterwards still finds its model (empty for jobs made before this was recorded).
    query_names = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED, db_index=True)
    cancel_requested = models.BooleanField(default=False)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # Last sign of life from the worker running it (a stale one means the worker died).
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    # How many times a worker claimed it (a resume after a dead worker adds one).
    attempts = models.PositiveIntegerField(default=0)
    celery_task_id = models.CharField(max_length=64, blank=True)
    # Celery hostname of the worker that claimed it last.
    worker = models.CharField(max_length=200, blank=True)
    # Job folder under MEDIA_ROOT: workload.json, the engine's state.json/result.json and bundles/.
    workdir = models.CharField(max_length=500, blank=True)
    unmerged_param_bytes = models.BigIntegerField(null=True, blank=True)
    merged_param_bytes = models.BigIntegerField(null=True, blank=True)
    # The engine's SearchResult.to_json() once finished.
    result = models.JSONField(null=True, blank=True)
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"merge job {self.pk} ({self.strategy}, {self.status})"


class MergeEvent(models.Model):
    """A progress event of the engine (gemel_engine.events), in the order it was emitted."""

    job = models.ForeignKey(MergeJob, on_delete=models.CASCADE, related_name="events")
    seq = models.PositiveIntegerField()
    type = models.CharField(max_length=32)
    at = models.DateTimeField(auto_now_add=True)
    payload = models.JSONField(default=dict)

    class Meta:
        ordering = ["job", "seq"]
        constraints = [models.UniqueConstraint(fields=["job", "seq"], name="merge_event_job_seq")]


class MergeBundle(models.Model):
    """A configuration the search accepted, saved as a bundle (usable before the search ends)."""

    job = models.ForeignKey(MergeJob, on_delete=models.CASCADE, related_name="bundles")
    index = models.PositiveIntegerField()
    round = models.PositiveIntegerField(default=0)
    path = models.CharField(max_length=500)
    saved_param_bytes = models.BigIntegerField(default=0)
    # Seconds into the search when it was accepted.
    elapsed = models.FloatField(default=0.0)
    # {query name: validation accuracy} and {query name: required validation accuracy}: what the search decided on.
    accuracies = models.JSONField(default=dict)
    required = models.JSONField(default=dict)
    # {query name: {"val": measurement, "test": measurement}} (gemel_engine.accuracy.Measurement JSON): the
    # held-out test figures with their 95% intervals, what reports and the deploy gate read. Empty for bundles
    # saved before test frames existed (never deployable).
    evaluation = models.JSONField(default=dict)
    # Whether every query met its target on test frames when the bundle was saved.
    meets_targets = models.BooleanField(default=False)
    # sha256 and size of each bundle file: {"manifest.json": {"sha256": ..., "size_bytes": ...}, ...}.
    files = models.JSONField(default=dict)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["job", "index"]
        constraints = [models.UniqueConstraint(fields=["job", "index"], name="merge_bundle_job_index")]

    def __str__(self) -> str:
        return f"job {self.job_id} config {self.index}"
