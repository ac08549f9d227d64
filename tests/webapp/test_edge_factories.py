"""Small factories for the edge tests (rows straight through the ORM; no tests here)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from django.conf import settings

from tests.webapp.test_workloads_factories import measured
from webapp.edge.models import EdgeNode
from webapp.edge.services import agent_token_create
from webapp.merges.models import MergeBundle, MergeJob
from webapp.workloads.models import Camera, ModelEntry, Query, Site

PRESENCE = {"kind": "presence", "classes": ["car", "bus", "truck"]}


def make_query(name: str = "north_cars", *, camera: str = "north", seed: int = 1) -> Query:
    """Return the ready query ``name`` on a short synthetic camera (both created on first use)."""
    cam, _ = Camera.objects.get_or_create(
        name=camera,
        defaults={"source": f"synthetic://cam{seed}?seed={seed}&width=64&height=48&frames=200", "fps": 5.0,
                  "width": 32, "height": 32},
    )
    model, _ = ModelEntry.objects.get_or_create(
        name=f"model_{name}", defaults={"arch": "mobilenet_v3_small", "builder_args": {"num_classes": 2}},
    )
    query, _ = Query.objects.get_or_create(
        name=name, defaults={"camera": cam, "model": model, "task": PRESENCE, "status": Query.Status.READY,
                             "unmerged_accuracy": 0.9, "unmerged_test": measured(0.9), "slo_ms": 400.0},
    )
    return query


def file_record(folder: Path) -> dict[str, dict[str, Any]]:
    """Return the sha256 and size of each file of a bundle folder, as MergeBundle.files holds them."""
    return {
        path.name: {"sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "size_bytes": path.stat().st_size}
        for path in sorted(folder.iterdir()) if path.is_file()
    }


def fake_bundle_folder(name: str = "config-000") -> Path:
    """Write a bundle-shaped folder (manifest.json, tensors.safetensors) under MEDIA_ROOT and return it."""
    folder = Path(settings.MEDIA_ROOT) / "merge-jobs" / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").write_text('{"format": "gemel-bundle", "models": [{"name": "north_cars"}]}\n')
    (folder / "tensors.safetensors").write_bytes(bytes(range(256)) * 8)
    return folder


def make_bundle(
    *, folder: Path | None = None, queries: list[Query] | None = None, meets: bool = True, job: MergeJob | None = None,
) -> MergeBundle:
    """Return a bundle of a succeeded merge job over ``queries`` (one ready query by default)."""
    if job is None:
        queries = queries if queries is not None else [make_query()]
        job = MergeJob.objects.create(status=MergeJob.Status.SUCCEEDED, site=queries[0].camera.site)
        job.queries.set(queries)
    folder = folder or fake_bundle_folder(f"job-{job.pk}-{job.bundles.count()}")
    names = list(job.queries.values_list("name", flat=True))
    accuracy = 0.9 if meets else 0.5
    return MergeBundle.objects.create(
        job=job, index=job.bundles.count(), path=str(folder), saved_param_bytes=1 << 20,
        accuracies=dict.fromkeys(names, accuracy), required=dict.fromkeys(names, 0.85),
        evaluation={name: {"val": measured(accuracy), "test": measured(accuracy)} for name in names},
        meets_targets=meets, files=file_record(folder),
    )


def make_node(
    name: str = "edge-1", *, token_name: str = "edge-1", site: Site | None = None,  # noqa: S107
) -> tuple[EdgeNode, str]:
    """Return a registered-looking node of ``site`` (the default site when None) and the plain token its agent
    holds."""
    token, plain = agent_token_create(name=token_name, site=site)
    return EdgeNode.objects.create(name=name, token=token, site=token.site, budget_bytes=256 << 20), plain
