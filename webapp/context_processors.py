"""Template context shared by every page."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest
from django.urls import NoReverseMatch, reverse

from webapp.accounts.selectors import user_is_operator, user_role

# (URL name, label) of the dashboard's main pages, then its API docs, in menu order.
NAVIGATION = (
    ("overview", "Overview"),
    ("cameras", "Cameras & models"),
    ("analysis", "Analysis"),
    ("merge_jobs", "Merge jobs"),
    ("deployments", "Deployments"),
    ("monitor", "Live monitor"),
    ("api:openapi-view", "API docs"),
)


def dashboard(request: HttpRequest) -> dict[str, Any]:
    """Return the menu (pages that exist), the current page's name, and the user's ``role``/``is_operator``."""
    menu = []
    for name, label in NAVIGATION:
        try:
            menu.append({"name": name, "label": label, "url": reverse(name)})
        except NoReverseMatch:
            continue
    current = request.resolver_match.url_name if request.resolver_match else None
    return {
        "menu": menu, "current_page": current,
        "role": user_role(request.user), "is_operator": user_is_operator(request.user),
    }
