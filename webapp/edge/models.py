"""Edge nodes (registered by the agent), agent tokens, deployments and metric samples."""

from __future__ import annotations

from django.conf import settings
from django.db import models

from webapp.merges.models import MergeBundle
from webapp.workloads.models import Site, default_site_id


class AgentToken(models.Model):
    """A bearer token an edge agent presents; only its sha256 is stored. The node it registers serves its site."""

    name = models.CharField(max_length=100)
    site = models.ForeignKey(Site, on_delete=models.PROTECT, default=default_site_id, related_name="agent_tokens")
    token_hash = models.CharField(max_length=64, unique=True)
    # First characters of the token, to tell tokens apart in the UI.
    prefix = models.CharField(max_length=12)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"


class EdgeNode(models.Model):
    """An edge box running the agent, serving the cameras of its site (its agent token's)."""

    class Status(models.TextChoices):
        IDLE = "idle", "idle"
        SERVING = "serving", "serving"
        DEPLOYING = "deploying", "deploying"
        DEGRADED = "degraded", "degraded"

    name = models.CharField(max_length=100, unique=True)
    site = models.ForeignKey(Site, on_delete=models.PROTECT, default=default_site_id, related_name="nodes")
    token = models.ForeignKey(AgentToken, null=True, blank=True, on_delete=models.SET_NULL, related_name="nodes")
    device_kind = models.CharField(max_length=8, default="cpu")
    device_name = models.CharField(max_length=200, blank=True)
    memory_total_bytes = models.BigIntegerField(default=0)
    budget_bytes = models.BigIntegerField(null=True, blank=True)
    agent_version = models.CharField(max_length=32, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.IDLE)
    status_detail = models.TextField(blank=True)
    registered_at = models.DateTimeField(auto_now_add=True)
    last_seen_at = models.DateTimeField(null=True, blank=True)
    # The deployment the agent last reported serving.
    active_deployment = models.ForeignKey(
        "Deployment", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # Its newest metrics report (the fleet overview reads every node's in one query) and when the fleet channel
    # last had a summary of it (services.fleet_summary_send).
    latest_sample = models.ForeignKey(
        "MetricSample", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    summary_sent_at = models.DateTimeField(null=True, blank=True)
    # How many metrics samples the node keeps now, and their payload bytes: a report checks these instead of
    # counting its samples, and expires old ones only when they pass the retention limits.
    retained_samples = models.PositiveIntegerField(default=0)
    retained_bytes = models.BigIntegerField(default=0)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Deployment(models.Model):
    """A merged bundle assigned to a node; the newest non-rolled-back one is the node's desired state."""

    class Status(models.TextChoices):
        PENDING = "pending", "pending"
        DOWNLOADING = "downloading", "downloading"
        LOADING = "loading", "loading"
        WARMING = "warming", "warming up"
        ACTIVE = "active", "active"
        FAILED = "failed", "failed"
        SUPERSEDED = "superseded", "superseded"
        ROLLED_BACK = "rolled_back", "rolled back"

    node = models.ForeignKey(EdgeNode, on_delete=models.CASCADE, related_name="deployments")
    bundle = models.ForeignKey(MergeBundle, on_delete=models.PROTECT, related_name="deployments")
    scheduler = models.CharField(max_length=16, default="merged")
    budget_bytes = models.BigIntegerField(null=True, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING, db_index=True)
    detail = models.TextField(blank=True)
    # The deployment this one replaced (where a rollback returns to).
    previous = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"deployment {self.pk} → {self.node_id} ({self.status})"


class DeploymentStatusChange(models.Model):
    """History of a deployment's status as the agent reported it."""

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="history")
    status = models.CharField(max_length=16)
    detail = models.TextField(blank=True)
    at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["deployment", "at", "id"]


class MetricSample(models.Model):
    """One metrics report of an agent (docs/agent-protocol.md §5); per node, the newest samples stay, at most
    METRICS_RETENTION of them and METRICS_RETENTION_BYTES of payload (past either, the oldest go until a tenth of
    each is free)."""

    node = models.ForeignKey(EdgeNode, on_delete=models.CASCADE, related_name="samples")
    deployment = models.ForeignKey(Deployment, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    at = models.DateTimeField(db_index=True)
    resident_bytes = models.BigIntegerField(default=0)
    shared_bytes = models.BigIntegerField(default=0)
    gpu_used_bytes = models.BigIntegerField(null=True, blank=True)
    simulated = models.BooleanField(default=False)
    payload = models.JSONField(default=dict)
    # Size of the payload as JSON, in bytes (retention counts bytes as well as samples).
    payload_bytes = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["node", "at"]
        indexes = [models.Index(fields=["node", "at"], name="metric_node_at")]
