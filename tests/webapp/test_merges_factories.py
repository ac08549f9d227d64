"""Small factories for the merges tests (rows through the ORM and a tiny workload; no tests here).

The queries use untrained torchvision models of three architectures with a target every model meets, so a
merge job's rounds are all accepted and a job is deterministic: the tests check the job machinery (claim,
progress, bundles, resume), not the quality of merging, which the engine's own tests cover.
"""

from __future__ import annotations

from collections.abc import Sequence

from tests.webapp.test_workloads_factories import make_camera, make_model, make_query, measured, synthetic_source
from webapp.merges.models import MergeBundle, MergeJob
from webapp.workloads.models import Query, Site

# Three small architectures whose layers match in several groups: the `gemel` search runs a handful of rounds.
FIVE_ROUNDS = ("mobilenet_v3_small", "mobilenet_v2", "mobilenet_v3_large")
# Two of the same and one other: three short rounds.
THREE_ROUNDS = ("mobilenet_v3_small", "mobilenet_v3_small", "mobilenet_v2")
# An unmerged accuracy so low that any merged model keeps 0.95x of it.
EASY_UNMERGED_ACCURACY = 1e-6


def make_ready_queries(
    archs: Sequence[str] = THREE_ROUNDS, *, names: Sequence[str] | None = None, camera: str = "north",
    site: Site | None = None,
) -> list[Query]:
    """Return ready queries on one short synthetic camera (of ``site``; the default site when None), one model of
    each of ``archs`` (seeded weights)."""
    fields = {} if site is None else {"site": site}
    watched = make_camera(
        camera, source=synthetic_source(camera, frames=200),
        sampling={"every": 2, "val_fraction": 0.3, "gap_seconds": 1.0}, **fields,
    )
    names = list(names or [f"{'' if camera == 'north' else camera + '_'}q{i}_{arch}" for i, arch in enumerate(archs)])
    return [
        make_query(
            name, camera=watched, model=make_model(f"{'' if camera == 'north' else camera + '-'}model-{i}", arch=arch),
            unmerged_accuracy=EASY_UNMERGED_ACCURACY, chance_accuracy=0.5,
        )
        for i, (name, arch) in enumerate(zip(names, archs, strict=True))
    ]


def make_job(*, status: str = MergeJob.Status.QUEUED, queries: Sequence[Query] = (), **fields) -> MergeJob:
    """Return a saved job row (no folder, nothing queued) for tests of claim, cancel and the pages."""
    job = MergeJob.objects.create(status=status, **fields)
    job.queries.set(queries)
    return job


def make_bundle(
    job: MergeJob, *, index: int = 1, accuracies: dict, required: dict, test_accuracies: dict | None = None, **fields
) -> MergeBundle:
    """Return a saved bundle row with the given per-query validation accuracies and targets (no files on disk);
    its held-out test accuracies are ``test_accuracies`` (by default the validation ones)."""
    fields.setdefault("path", f"merge-jobs/{job.pk}/bundles/config-{index:03d}")
    tested = accuracies if test_accuracies is None else test_accuracies
    evaluation = {name: {"val": measured(accuracies[name]), "test": measured(tested[name])} for name in tested}
    meets = all(tested.get(name, -1) >= value for name, value in required.items())
    return MergeBundle.objects.create(
        job=job, index=index, accuracies=accuracies, required=required, evaluation=evaluation, meets_targets=meets,
        **fields,
    )
