"""URL routes of the dashboard."""

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from webapp import views
from webapp.accounts.views import admin_sign_in, sign_in
from webapp.api import api

urlpatterns = [
    path("", views.overview, name="overview"),
    path("healthz", views.healthz, name="healthz"),
    path("favicon.ico", views.favicon, name="favicon"),
    path("login/", sign_in, name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    # Ahead of the admin's own routes: its sign-in is throttled like the dashboard's.
    path("admin/login/", admin_sign_in),
    path("admin/", admin.site.urls),
    path("api/", api.urls),
    path("", include("webapp.workloads.urls")),
    path("", include("webapp.merges.urls")),
    path("", include("webapp.edge.urls")),
]

# Input refused before any view runs (oversized body, too many fields or files) answers 413/400, in JSON on
# the API.
handler400 = "webapp.views.bad_request"
