"""URL routes of the dashboard."""

from django.urls import path

from webapp import views

urlpatterns = [
    path("healthz", views.healthz, name="healthz"),
]
