"""Pages of this app."""

from django.urls import URLPattern, path

from webapp.workloads import views

urlpatterns: list[URLPattern] = [
    path("sites/new/", views.site_create, name="site_create"),
    path("cameras/", views.cameras, name="cameras"),
    path("cameras/new/", views.camera_create, name="camera_create"),
    path("cameras/<int:pk>/edit/", views.camera_edit, name="camera_edit"),
    path("cameras/<int:pk>/delete/", views.camera_delete, name="camera_delete"),
    path("cameras/<int:pk>/annotations/", views.camera_annotations, name="camera_annotations"),
    path("cameras/<int:pk>/teacher/", views.camera_teacher, name="camera_teacher"),
    path("training/new/", views.training_create, name="training_create"),
    path("cameras/<int:pk>/thumbnail.png", views.camera_thumbnail, name="camera_thumbnail"),
    path("models/new/", views.model_create, name="model_create"),
    path("models/<int:pk>/edit/", views.model_edit, name="model_edit"),
    path("models/<int:pk>/delete/", views.model_delete, name="model_delete"),
    path("queries/new/", views.query_create, name="query_create"),
    path("queries/<int:pk>/edit/", views.query_edit, name="query_edit"),
    path("queries/<int:pk>/delete/", views.query_delete, name="query_delete"),
    path("demo/seed/", views.demo_seed, name="demo_seed"),
    path("analysis/", views.analysis, name="analysis"),
]
