"""Pages of this app."""

from django.urls import URLPattern, path

from webapp.edge import views

urlpatterns: list[URLPattern] = [
    path("deployments/", views.deployments, name="deployments"),
    path("monitor/", views.monitor, name="monitor"),
    path("monitor/<int:node_id>/attention", views.monitor_attention, name="monitor_attention"),
]
