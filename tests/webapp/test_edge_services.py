"""Deployments, rollback, offline detection and agent tokens (services and selectors)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.utils import timezone

from tests.webapp.test_edge_factories import make_bundle, make_node
from webapp.edge import selectors
from webapp.edge.models import AgentToken, Deployment
from webapp.edge.services import (
    agent_token_create,
    deployment_create,
    deployment_report_status,
    deployment_rollback,
)

pytestmark = pytest.mark.django_db


def test_it_stores_only_the_hash_of_a_new_agent_token():
    token, plain = agent_token_create(name="edge-1")
    assert token.token_hash == selectors.token_hash(plain) != plain
    assert token.prefix == plain[:12]
    assert selectors.agent_token_find(token=plain) == token


def test_agent_tokens_never_look_like_a_command_line_option():
    from gemel_engine.cli import build_parser
    from webapp.edge.services import AGENT_TOKEN_PREFIX, agent_token_new

    tokens = [agent_token_new() for _ in range(500)]
    assert all(t.startswith(AGENT_TOKEN_PREFIX) and len(t) > 40 for t in tokens) and len(set(tokens)) == 500
    # A token from before the prefix may start with "-": the agent takes it as --token=VALUE or from the env.
    args = build_parser().parse_args(["agent", "--server", "http://x", "--token=-dash-first", "--node", "n"])
    assert args.token == "-dash-first"  # noqa: S105 - a made-up token


def test_it_prints_a_working_token_from_the_management_command(capsys):
    call_command("agent_token", "edge-9")
    plain = capsys.readouterr().out.strip()
    assert selectors.agent_token_find(token=plain) == AgentToken.objects.get(name="edge-9")


def test_it_refuses_to_deploy_a_bundle_whose_queries_miss_their_targets(operator):
    node, _ = make_node()
    with pytest.raises(ValidationError, match="cannot be deployed"):
        deployment_create(bundle=make_bundle(meets=False), node=node, user=operator)
    assert not Deployment.objects.exists()


def test_it_refuses_a_scheduler_the_engine_does_not_know_before_anything_is_stored(operator):
    node, _ = make_node()
    with pytest.raises(ValidationError, match=r"unknown scheduler 'fastest'; known: .*merged"):
        deployment_create(bundle=make_bundle(), node=node, user=operator, scheduler="fastest")
    assert not Deployment.objects.exists()
    assert deployment_create(bundle=make_bundle(), node=node, user=operator, scheduler="time-sharing").scheduler == (
        "time-sharing")


def test_it_supersedes_a_deployment_that_never_reached_the_node(operator):
    node, _ = make_node()
    first = deployment_create(bundle=make_bundle(), node=node, user=operator)
    second = deployment_create(bundle=make_bundle(), node=node, user=operator)
    first.refresh_from_db()
    assert first.status == "superseded"
    assert selectors.deployment_desired(node=node) == second


def test_it_rolls_back_to_the_bundle_the_current_deployment_replaced(operator):
    node, _ = make_node()
    old = deployment_create(bundle=make_bundle(), node=node, user=operator)
    deployment_report_status(deployment=old, status="active", detail="")
    node.refresh_from_db()
    new = deployment_create(bundle=make_bundle(), node=node, user=operator)
    deployment_report_status(deployment=new, status="active", detail="")
    node.refresh_from_db()
    back = deployment_rollback(node=node, user=operator)
    new.refresh_from_db()
    assert new.status == "rolled_back"
    assert back.bundle_id == old.bundle_id and back.status == "pending"
    assert selectors.deployment_desired(node=node) == back


def test_it_refuses_a_rollback_with_nothing_to_return_to(operator):
    node, _ = make_node()
    with pytest.raises(ValidationError, match="nothing is deployed"):
        deployment_rollback(node=node, user=operator)
    deployment_create(bundle=make_bundle(), node=node, user=operator)
    with pytest.raises(ValidationError, match="nothing to roll back to"):
        deployment_rollback(node=node, user=operator)


def test_it_counts_a_node_offline_after_three_missed_heartbeats(settings):
    settings.AGENT_HEARTBEAT_SECONDS = 5
    node, _ = make_node()
    now = timezone.now()
    assert not selectors.node_is_online(node, now=now)
    node.last_seen_at = now - timedelta(seconds=14)
    assert selectors.node_is_online(node, now=now)
    node.last_seen_at = now - timedelta(seconds=16)
    assert not selectors.node_is_online(node, now=now)


def test_it_lists_bundles_with_the_reason_they_cannot_be_deployed():
    good = make_bundle()
    bad = make_bundle(meets=False)
    rows = {row["bundle"].pk: row for row in selectors.bundles_for_deployment()}
    assert rows[good.pk]["deployable"] is True
    assert rows[bad.pk]["deployable"] is False and rows[bad.pk]["reason"]
