"""All websocket routes of the dashboard."""

from webapp.edge.routing import websocket_urlpatterns as edge_routes
from webapp.merges.routing import websocket_urlpatterns as merge_routes

websocket_urlpatterns = [*merge_routes, *edge_routes]
