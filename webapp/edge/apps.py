from django.apps import AppConfig


class EdgeConfig(AppConfig):
    name = "webapp.edge"
    label = "edge"
