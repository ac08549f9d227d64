"""Websocket routes of this app."""

from django.urls import URLPattern, path

from webapp.edge.consumers import NodeMetricsConsumer

websocket_urlpatterns: list[URLPattern] = [
    path("ws/nodes/", NodeMetricsConsumer.as_asgi()),
    path("ws/nodes/<int:node_id>/", NodeMetricsConsumer.as_asgi()),
]
