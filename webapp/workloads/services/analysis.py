"""Analysing which layers a set of queries could share."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from torch import nn

from gemel_engine.errors import GemelError
from gemel_engine.layers import analyze_models
from gemel_engine.plan import check_match_mode
from webapp.workloads.models import Query, WorkloadAnalysis
from webapp.workloads.services.model_entries import build_meta


def workload_analyze(
    *, queries: Iterable[Query] | None, mode: str = "shape", user: Any = None
) -> WorkloadAnalysis:
    """Analyse which layers the queries' models could share, on models built on the meta device; ``queries``
    None: every ready query (measured), as the analysis page and the API do when none is chosen.

    Returns:
        The saved analysis; ``result`` is the engine's ``LayerAnalysis.to_dict()`` (models named by query).

    Raises:
        ValidationError: no queries (none chosen, or none ready when none was chosen), or an unknown match mode.
    """
    if queries is None:
        chosen = list(Query.objects.filter(status=Query.Status.READY).select_related("model").order_by("name"))
        if not chosen:
            pending = Query.objects.exclude(status=Query.Status.READY).count()
            raise ValidationError(
                f"no query is ready yet ({pending} still being measured or failed): wait for their measurement, "
                "or tick the ones to analyse" if pending else
                "no query yet: register cameras, models and queries on the Cameras page (or build the demo) first")
    else:
        chosen = list(queries)
    if not chosen:
        raise ValidationError("choose at least one query to analyse")
    try:
        check_match_mode(mode)
    except GemelError as exc:
        raise ValidationError(str(exc)) from None
    models: dict[str, nn.Module] = {}
    for query in chosen:
        models[query.name] = build_meta(query.model.arch, dict(query.model.builder_args or {}))
    result = analyze_models(models, mode=mode, archs={q.name: q.model.arch for q in chosen}).to_dict()  # type: ignore[arg-type]
    with transaction.atomic():  # the models are built before: the write lock is held only to save
        analysis = WorkloadAnalysis.objects.create(
            mode=mode, result=result, created_by=user if getattr(user, "is_authenticated", False) else None
        )
        analysis.queries.set(chosen)
    return analysis
