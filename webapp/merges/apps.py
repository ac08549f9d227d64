from django.apps import AppConfig


class MergesConfig(AppConfig):
    name = "webapp.merges"
    label = "merges"
