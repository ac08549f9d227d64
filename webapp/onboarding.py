"""The Overview's guide: where a newcomer stands on the way from queries to a merged bundle watched live, and
the one next step, with a link to the page that takes it."""

from __future__ import annotations

from dataclasses import dataclass

from django.urls import reverse

from webapp.edge.models import Deployment, EdgeNode
from webapp.edge.selectors import IN_FLIGHT, bundle_deployable, node_is_online
from webapp.merges.models import MergeBundle, MergeJob
from webapp.units import mib
from webapp.workloads.models import DemoSeed, Query

# The stages, in order; a guide names the one it stands at.
STAGES = ("queries", "merge", "deploy", "watch")
STAGE_LABELS = {"queries": "ready queries", "merge": "a merge that saves memory", "deploy": "deploy it",
                "watch": "watch it live"}


@dataclass(frozen=True)
class Guide:
    """The next step: which stage it belongs to, what to do and why, and where (``link``, ``link_label``)."""

    stage: str
    text: str
    link: str
    link_label: str

    @property
    def stages(self) -> list[dict[str, object]]:
        """Return each stage with whether it is done, current, or still ahead."""
        at = STAGES.index(self.stage)
        return [{"name": name, "label": STAGE_LABELS[name], "done": i < at, "current": i == at}
                for i, name in enumerate(STAGES)]


def _best_undeployed_bundle() -> tuple[MergeBundle, EdgeNode | None] | None:
    """Return the bundle that saves the most among the deployable ones of succeeded jobs, with an online box of its
    site to deploy it to (None when none is online); None when no bundle saves memory and may be deployed."""
    bundles = (MergeBundle.objects.filter(job__status=MergeJob.Status.SUCCEEDED, saved_param_bytes__gt=0)
               .select_related("job__site").order_by("-saved_param_bytes", "-job_id", "-index")[:20])
    for bundle in bundles:
        if not bundle_deployable(bundle)[0]:
            continue
        boxes = EdgeNode.objects.filter(site=bundle.job.site_id).order_by("name")  # the boxes it may deploy to
        online = next((node for node in boxes if node_is_online(node)), None)
        return bundle, online
    return None


def next_step() -> Guide:
    """Return the newcomer's next step, read from what exists now: register or wait for queries, start a merge,
    wait for it, deploy its best configuration, then watch the box that serves it."""
    serving = (EdgeNode.objects.filter(active_deployment__status=Deployment.Status.ACTIVE)
               .select_related("active_deployment__bundle").order_by("name").first())
    if serving is not None:
        bundle = serving.active_deployment.bundle
        return Guide("watch", f"{serving.name} serves job {bundle.job_id} config {bundle.index}, which saves "
                     f"{mib(bundle.saved_param_bytes)}: watch its memory, frame rate, drops and accuracy live. The "
                     "Attention column below flags any query starved or below its target.",
                     f"{reverse('monitor')}?node={serving.pk}", f"Watch {serving.name} live")
    in_flight = Deployment.objects.filter(status__in=IN_FLIGHT).first()
    if in_flight is not None:
        return Guide("deploy", f"Deployment #{in_flight.pk} is {in_flight.get_status_display()} on its box; it "
                     "serves once loaded and warmed up.", reverse("deployments"), "Follow it on Deployments")
    best = _best_undeployed_bundle()
    if best is not None:
        bundle, node = best
        where = f"to {node.name}" if node else "to a box of its site once one reports (none is online now)"
        return Guide("deploy", f"Job {bundle.job_id} config {bundle.index} saves {mib(bundle.saved_param_bytes)} "
                     f"with every query meeting its target on held-out test frames: deploy it {where}.",
                     f"{reverse('deployments')}#bundle-{bundle.pk}", "Deploy it")
    running = MergeJob.objects.filter(status__in=(MergeJob.Status.QUEUED, MergeJob.Status.RUNNING)).first()
    if running is not None:
        return Guide("merge", f"Merge job {running.pk} is {running.status}: its chart grows as rounds are accepted; "
                     "each accepted configuration can be deployed as soon as it appears.",
                     reverse("merge_job_detail", args=[running.pk]), f"Watch job {running.pk}")
    ready = Query.objects.filter(status=Query.Status.READY).count()
    if ready >= 2:
        finished = MergeJob.objects.filter(status=MergeJob.Status.SUCCEEDED).exists()
        again = ("The last merge jobs saved nothing that may be deployed: start one with a longer budget (the form "
                 "suggests one). " if finished else "")
        return Guide("merge", f"{again}{ready} queries are ready. Start a merge job over them (every ready query, "
                     "gemel+, the suggested budget): it shares their identical layers and retrains them jointly. "
                     "Analysis shows first what can be shared.", reverse("merge_jobs"), "Start a merge job")
    building = DemoSeed.objects.filter(status__in=(DemoSeed.Status.QUEUED, DemoSeed.Status.BUILDING)).first()
    if building is not None:
        return Guide("queries", f"The {building.scale} demo is training its models ({building.queries_registered} of "
                     f"{building.queries_total} ready): its queries appear below as each finishes; then merge them.",
                     reverse("cameras"), "See its progress")
    return Guide("queries", "A merge needs at least two ready queries: register a camera and its models, or build a "
                 "demo workload, on the cameras page.", reverse("cameras"), "Cameras & models")
