"""Reads of cameras, models, queries, analyses and demo seeds."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.core.exceptions import ValidationError
from django.db.models import Count, QuerySet

from webapp.workloads.engine import query_chance_shortfall
from webapp.workloads.models import Camera, DemoSeed, ModelEntry, Query, Site, TrainingRun, WorkloadAnalysis


def camera_list() -> QuerySet[Camera]:
    """Return every camera with ``query_count`` annotated and its site, by name."""
    return Camera.objects.select_related("site", "teacher").annotate(query_count=Count("queries")).order_by("name")


def site_list() -> QuerySet[Site]:
    """Return every site by name."""
    return Site.objects.order_by("name")


def site_by_id(site_id: int | None) -> Site | None:
    """Return the site ``site_id`` names (None for None).

    Raises:
        ValidationError: no site has that id.
    """
    if site_id is None:
        return None
    site = Site.objects.filter(pk=site_id).first()
    if site is None:
        raise ValidationError({"site": f"no site with id {site_id}"})
    return site


def training_run_list(limit: int = 20) -> QuerySet[TrainingRun]:
    """Return the latest training runs (newest first) with their cameras."""
    return TrainingRun.objects.select_related("camera", "query").order_by("-created_at")[:limit]


def model_list() -> QuerySet[ModelEntry]:
    """Return every model with ``query_count`` annotated, by name."""
    return ModelEntry.objects.annotate(query_count=Count("queries")).order_by("name")


def query_list() -> QuerySet[Query]:
    """Return every query with its camera and model, by name."""
    return Query.objects.select_related("camera", "model").order_by("name")


def query_list_with_chance_verdicts() -> list[Query]:
    """Return ``query_list()``, each query with ``chance_shortfall`` set: why its unmerged model is not clearly
    better than one that learned nothing on held-out test frames, or None when it is or is not measured yet."""
    queries = list(query_list())
    for query in queries:
        query.chance_shortfall = query_chance_shortfall(query)
    return queries


def queries_no_better_than_chance(queries: Iterable[Query]) -> list[tuple[Query, str]]:
    """Return each of ``queries`` whose unmerged model is not clearly better than chance on held-out test frames,
    with why (a merge over it proves nothing: its targets are relative to a useless model)."""
    verdicts = ((query, query_chance_shortfall(query)) for query in queries)
    return [(query, shortfall) for query, shortfall in verdicts if shortfall is not None]


def queries_ready() -> QuerySet[Query]:
    """Return the queries whose unmerged accuracy is measured (status ready), by name."""
    return query_list().filter(status=Query.Status.READY)


def queries_by_ids(ids: Iterable[int]) -> list[Query]:
    """Return the queries with these primary keys, by name.

    Raises:
        ValidationError: an id names no query (every unknown id is listed).
    """
    wanted = set(ids)
    found = list(query_list().filter(pk__in=wanted))
    unknown = sorted(wanted - {query.pk for query in found})
    if unknown:
        shown = ", ".join(map(str, unknown[:20])) + (f" and {len(unknown) - 20} more" if len(unknown) > 20 else "")
        raise ValidationError(f"unknown query ids: {shown}")
    return found


def analysis_latest() -> WorkloadAnalysis | None:
    """Return the most recent workload analysis, or None."""
    return WorkloadAnalysis.objects.prefetch_related("queries").order_by("-created_at", "-pk").first()


def analysis_list() -> QuerySet[WorkloadAnalysis]:
    """Return the analyses, newest first."""
    return WorkloadAnalysis.objects.prefetch_related("queries").order_by("-created_at", "-pk")


def demo_seed_list() -> QuerySet[DemoSeed]:
    """Return the demo seeds, most recently updated first."""
    return DemoSeed.objects.order_by("-updated_at")


def demo_seeds_building() -> QuerySet[DemoSeed]:
    """Return the demo seeds queued or being built, most recently updated first."""
    return demo_seed_list().filter(status__in=(DemoSeed.Status.QUEUED, DemoSeed.Status.BUILDING))


# Signatures shown in the analysis chart, largest savings first.
TOP_SIGNATURES = 15


def analysis_chart_data(analysis: WorkloadAnalysis) -> dict[str, Any]:
    """Return what the analysis page draws: per model, its bytes alone and after the structural optimum, and the
    signatures that save the most with the models that share them.

    A shared layer's one copy is charged to the first model of its group; the others drop it.
    """
    result = analysis.result or {}
    instances = result.get("instances", [])
    dropped: dict[str, int] = {}
    signatures: dict[str, dict[str, Any]] = {}
    for instance in instances:
        members = [member["model"] for member in instance["members"]]
        for model in members[1:]:
            dropped[model] = dropped.get(model, 0) + int(instance["bytes"])
        row = signatures.setdefault(instance["signature"], {"savings_bytes": 0, "instances": 0, "models": set()})
        row["savings_bytes"] += int(instance["savings_bytes"])
        row["instances"] += 1
        row["models"].update(members)
    models = result.get("models", [])
    top = sorted(signatures.items(), key=lambda item: -item[1]["savings_bytes"])[:TOP_SIGNATURES]
    return {
        "mode": result.get("mode"),
        "models": [m["name"] for m in models],
        "archs": [m.get("arch") or "" for m in models],
        "unmerged_bytes": [m["param_bytes"] for m in models],
        "merged_bytes": [m["param_bytes"] - dropped.get(m["name"], 0) for m in models],
        "shareable_bytes": [m["shareable_param_bytes"] for m in models],
        "total_bytes": result.get("total_param_bytes", 0),
        "max_savings_bytes": result.get("max_savings_bytes", 0),
        "max_savings_fraction": result.get("max_savings_fraction", 0.0),
        "instance_count": len(instances),
        "signatures": [
            {"signature": key, "savings_bytes": row["savings_bytes"], "instances": row["instances"],
             "models": sorted(row["models"])}
            for key, row in top
        ],
    }


def sharing_pairs(analysis: WorkloadAnalysis) -> list[dict[str, Any]]:
    """Return, per pair of models that can share layers, how many layers and bytes they could share."""
    pairs: dict[tuple[str, str], dict[str, int]] = {}
    for instance in (analysis.result or {}).get("instances", []):
        members = sorted({member["model"] for member in instance["members"]})
        for i, first in enumerate(members):
            for second in members[i + 1 :]:
                row = pairs.setdefault((first, second), {"layers": 0, "bytes": 0})
                row["layers"] += 1
                row["bytes"] += int(instance["bytes"])
    return [{"models": list(key), **row} for key, row in sorted(pairs.items(), key=lambda item: -item[1]["bytes"])]
