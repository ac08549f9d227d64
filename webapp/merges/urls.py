"""Pages of this app."""

from django.urls import URLPattern, path

from webapp.merges import views

urlpatterns: list[URLPattern] = [
    path("merges/", views.merge_jobs, name="merge_jobs"),
    path("merges/<int:job_id>/", views.merge_job_detail, name="merge_job_detail"),
    path("merges/<int:job_id>/cancel/", views.merge_job_cancel, name="merge_job_cancel"),
]
