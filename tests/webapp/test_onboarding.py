"""The Overview's next-step guide follows a newcomer from no queries to a bundle watched live."""

from __future__ import annotations

import pytest
from django.urls import reverse
from django.utils import timezone

from tests.webapp.test_edge_factories import make_bundle, make_node, make_query
from webapp.edge.models import Deployment, EdgeNode
from webapp.edge.services import deployment_create, deployment_report_status
from webapp.merges.models import MergeJob
from webapp.onboarding import next_step
from webapp.workloads.models import DemoSeed

pytestmark = pytest.mark.django_db


def _guide(client) -> tuple[str, str]:
    page = client.get(reverse("overview")).content.decode()
    card = page[page.index('id="next-step"'):]
    return card[card.index('data-stage="') + 12:].split('"', 1)[0], card[:card.index("</section>")]


def test_the_guide_leads_from_no_queries_to_watching_a_deployed_bundle(operator_client, operator):
    stage, card = _guide(operator_client)
    assert stage == "queries" and "at least two ready queries" in card and reverse("cameras") in card

    DemoSeed.objects.create(scale="tiny", status=DemoSeed.Status.BUILDING, queries_total=3, queries_registered=1)
    stage, card = _guide(operator_client)
    assert stage == "queries" and "The tiny demo is training its models (1 of 3 ready)" in card

    queries = [make_query("north_cars"), make_query("east_cars", camera="east", seed=2)]
    stage, card = _guide(operator_client)
    assert stage == "merge" and "2 queries are ready" in card and reverse("merge_jobs") in card

    job = MergeJob.objects.create(status=MergeJob.Status.RUNNING)
    job.queries.set(queries)
    stage, card = _guide(operator_client)
    assert stage == "merge" and f"Merge job {job.pk} is running" in card

    MergeJob.objects.filter(pk=job.pk).update(status=MergeJob.Status.SUCCEEDED)
    bundle = make_bundle(job=job)
    node, _ = make_node()
    EdgeNode.objects.filter(pk=node.pk).update(last_seen_at=timezone.now())
    stage, card = _guide(operator_client)
    assert stage == "deploy" and f"Job {job.pk} config {bundle.index} saves 1.0 MiB" in card
    assert "deploy it to edge-1" in card and f"#bundle-{bundle.pk}" in card

    deployment = deployment_create(bundle=bundle, node=node, user=operator)
    assert next_step().stage == "deploy" and "is pending" in next_step().text
    deployment_report_status(deployment=deployment, status=Deployment.Status.ACTIVE, detail="")
    stage, card = _guide(operator_client)
    assert stage == "watch" and "edge-1 serves job" in card and f"?node={node.pk}" in card
    assert '<li class="done">✓ ready queries</li>' in card and '<li class="current">watch it live</li>' in card


def test_a_job_that_saved_nothing_sends_the_newcomer_back_to_merge_with_a_longer_budget(operator_client):
    queries = [make_query("north_cars"), make_query("east_cars", camera="east", seed=2)]
    job = MergeJob.objects.create(status=MergeJob.Status.SUCCEEDED)
    job.queries.set(queries)
    stage, card = _guide(operator_client)
    assert stage == "merge" and "saved nothing that may be deployed" in card and "longer budget" in card
