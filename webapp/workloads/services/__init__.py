"""Writes of the workloads app, one module per sub-domain: cameras, registered models, queries (and measuring
them), workload export and analysis, and the demo seed. Callers import from here."""

from webapp.workloads.services.analysis import workload_analyze
from webapp.workloads.services.cameras import (
    camera_annotations_upload,
    camera_delete,
    camera_register,
    camera_teacher_set,
    camera_update,
)
from webapp.workloads.services.demo import demo_seed, demo_seed_start
from webapp.workloads.services.export import workload_export
from webapp.workloads.services.model_entries import model_delete, model_register, model_register_file, model_update
from webapp.workloads.services.queries import (
    MEASURE_STALE,
    query_create,
    query_delete,
    query_measure,
    query_measure_pending,
    query_update,
)
from webapp.workloads.services.sites import site_create, site_default, site_or_default
from webapp.workloads.services.training import training_run, training_start

__all__ = [
    "MEASURE_STALE",
    "camera_annotations_upload",
    "camera_delete",
    "camera_register",
    "camera_teacher_set",
    "camera_update",
    "demo_seed",
    "demo_seed_start",
    "model_delete",
    "model_register",
    "model_register_file",
    "model_update",
    "query_create",
    "query_delete",
    "query_measure",
    "query_measure_pending",
    "query_update",
    "site_create",
    "site_default",
    "site_or_default",
    "training_run",
    "training_start",
    "workload_analyze",
    "workload_export",
]
