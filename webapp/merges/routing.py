"""Websocket routes of this app."""

from django.urls import URLPattern, path

from webapp.merges.consumers import MergeJobConsumer

websocket_urlpatterns: list[URLPattern] = [
    path("ws/merge-jobs/<int:job_id>/", MergeJobConsumer.as_asgi()),
]
