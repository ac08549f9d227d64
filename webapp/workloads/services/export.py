"""Exporting registered queries as an engine workload folder."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from django.core.exceptions import ValidationError

from gemel_engine.errors import GemelError
from gemel_engine.workload import Workload
from webapp.workloads.engine import (
    camera_spec,
    query_entry,
    weights_file,
)
from webapp.workloads.models import Query


def _link_or_copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        target.unlink()
    try:
        os.link(source, target)
    except OSError:  # another file system, or links not allowed: copy instead
        shutil.copy2(source, target)


def workload_export(*, queries: Iterable[Query], out_dir: Path, name: str = "dashboard") -> Path:
    """Write the engine workload of ``queries`` as ``out_dir/workload.json``, weights beside it.

    Each query's weights are hard-linked (or copied) to ``out_dir/weights/<query>.<suffix>`` so the folder
    is self-contained; ``gemel_engine.workload.Workload.load`` accepts the file.

    Returns:
        The path of the written workload.json.

    Raises:
        ValidationError: no queries, a query that is not ready (unmeasured), whose weights file is missing,
            or that the engine refuses.
    """
    chosen = list(queries)
    if not chosen:
        raise ValidationError("choose at least one query")
    not_ready = [query.name for query in chosen if query.status != Query.Status.READY]
    if not_ready:
        raise ValidationError(f"queries not ready (unmerged accuracy not measured): {', '.join(not_ready)}")
    out_dir = Path(out_dir)
    cameras = {}
    entries = []
    for query in chosen:
        source = weights_file(query.model)
        if not query.model.weights or not source.is_file():
            raise ValidationError(f"query {query.name!r}: the weights of model {query.model.name!r} are missing")
        relative = Path("weights") / f"{query.name}{source.suffix}"
        _link_or_copy(source, out_dir / relative)
        cameras.setdefault(query.camera_id, query.camera)
        try:
            entries.append(query_entry(query, weights=relative.as_posix()))
        except GemelError as exc:
            raise ValidationError(f"query {query.name!r}: {exc}") from None
    try:
        workload = Workload(
            name=name,
            cameras=tuple(camera_spec(camera) for camera in cameras.values()),
            queries=tuple(entries),
            root=out_dir.resolve(),
        )
    except GemelError as exc:
        raise ValidationError(str(exc)) from None
    return workload.save(out_dir / "workload.json")
