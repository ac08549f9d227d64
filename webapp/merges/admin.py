from django.contrib import admin

from webapp.merges.models import MergeBundle, MergeEvent, MergeJob


class MergeBundleInline(admin.TabularInline):
    model = MergeBundle
    extra = 0
    readonly_fields = ("index", "round", "saved_param_bytes", "elapsed", "meets_targets", "path")


@admin.register(MergeJob)
class MergeJobAdmin(admin.ModelAdmin):
    list_display = ("id", "strategy", "status", "attempts", "created_at", "finished_at", "merged_param_bytes")
    list_filter = ("status", "strategy")
    inlines = [MergeBundleInline]


@admin.register(MergeEvent)
class MergeEventAdmin(admin.ModelAdmin):
    list_display = ("job", "seq", "type", "at")
    list_filter = ("type",)


@admin.register(MergeBundle)
class MergeBundleAdmin(admin.ModelAdmin):
    list_display = ("job", "index", "round", "saved_param_bytes", "meets_targets", "created_at")
