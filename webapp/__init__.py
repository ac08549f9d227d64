"""Gemel's operator dashboard: a Django project over ``gemel_engine``."""
