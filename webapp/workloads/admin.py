from django.contrib import admin

from webapp.workloads.models import Camera, ModelEntry, Query, WorkloadAnalysis


@admin.register(Camera)
class CameraAdmin(admin.ModelAdmin):
    list_display = ("name", "source", "fps", "width", "height", "created_at")
    search_fields = ("name", "source")


@admin.register(ModelEntry)
class ModelEntryAdmin(admin.ModelAdmin):
    list_display = ("name", "arch", "param_bytes", "weights_size", "created_at")
    search_fields = ("name", "arch")
    readonly_fields = ("weights_sha256", "weights_size", "param_bytes")


@admin.register(Query)
class QueryAdmin(admin.ModelAdmin):
    list_display = ("name", "camera", "model", "status", "unmerged_accuracy", "target_fraction")
    list_filter = ("status",)
    search_fields = ("name",)


@admin.register(WorkloadAnalysis)
class WorkloadAnalysisAdmin(admin.ModelAdmin):
    list_display = ("id", "mode", "created_at", "created_by")
