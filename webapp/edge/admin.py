from django.contrib import admin

from webapp.edge.models import AgentToken, Deployment, DeploymentStatusChange, EdgeNode, MetricSample


@admin.register(AgentToken)
class AgentTokenAdmin(admin.ModelAdmin):
    list_display = ("name", "prefix", "created_at", "revoked_at")
    readonly_fields = ("token_hash", "prefix")


@admin.register(EdgeNode)
class EdgeNodeAdmin(admin.ModelAdmin):
    list_display = ("name", "status", "device_kind", "memory_total_bytes", "last_seen_at", "active_deployment")


class DeploymentStatusChangeInline(admin.TabularInline):
    model = DeploymentStatusChange
    extra = 0
    readonly_fields = ("status", "detail", "at")


@admin.register(Deployment)
class DeploymentAdmin(admin.ModelAdmin):
    list_display = ("id", "node", "bundle", "status", "created_at")
    list_filter = ("status",)
    inlines = [DeploymentStatusChangeInline]


@admin.register(MetricSample)
class MetricSampleAdmin(admin.ModelAdmin):
    list_display = ("node", "at", "resident_bytes", "shared_bytes", "simulated")
    list_filter = ("node",)
