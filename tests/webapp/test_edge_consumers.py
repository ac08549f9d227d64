"""The node websocket through the real ASGI application (auth, routing) and the real Redis channel layer."""

from __future__ import annotations

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import Client
from django.utils import timezone

from tests.webapp.test_edge_factories import make_bundle, make_node
from webapp.asgi import application
from webapp.edge.services import FLEET_SUMMARY_PERIOD, deployment_create, metrics_record
from webapp.live import claim_period_reset


def _connect(path: str, client=None) -> WebsocketCommunicator:
    headers = [(b"origin", b"http://testserver")]
    if client is not None:
        headers.append((b"cookie", f"sessionid={client.cookies['sessionid'].value}".encode()))
    return WebsocketCommunicator(application, path, headers=headers)


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_it_refuses_an_anonymous_websocket():
    communicator = _connect("/ws/nodes/")
    connected, code = await communicator.connect()
    assert not connected and code == 4401
    await communicator.disconnect()


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_it_refuses_an_unknown_node(viewer_client):
    communicator = _connect("/ws/nodes/999/", viewer_client)
    connected, code = await communicator.connect()
    assert not connected and code == 4404
    await communicator.disconnect()


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_a_nodes_watchers_get_every_report_and_the_fleet_one_summary_a_period(viewer_client, settings):
    settings.FLEET_SUMMARY_SECONDS = 600  # one period for the whole test
    await sync_to_async(claim_period_reset)(FLEET_SUMMARY_PERIOD)
    node, _ = await sync_to_async(make_node)()
    one = _connect(f"/ws/nodes/{node.pk}/", viewer_client)
    fleet = _connect("/ws/nodes/", viewer_client)
    assert (await one.connect())[0] and (await fleet.connect())[0]
    samples = [
        await sync_to_async(metrics_record)(
            node=node, at=timezone.now(), deployment=None, simulated=True,
            memory={"resident_bytes": 7 + i, "shared_bytes": 3}, queries={"q": {"fps": 2.0}},
        )
        for i in range(3)
    ]
    for sample in samples:
        message = await one.receive_json_from(timeout=5)
        assert message["type"] == "node.metrics"
        assert message["sample"]["id"] == sample.pk and message["sample"]["queries"]["q"]["fps"] == 2.0
    summary = await fleet.receive_json_from(timeout=5)
    assert summary["type"] == "fleet.summary" and [n["id"] for n in summary["nodes"]] == [node.pk]
    assert summary["nodes"][0]["resident_bytes"] == 7 and summary["nodes"][0]["queries_served"] == 1
    assert summary["nodes"][0]["sample_at"] == samples[0].at.isoformat()
    assert await fleet.receive_nothing(timeout=0.5)  # the next two came within the period
    await sync_to_async(claim_period_reset)(FLEET_SUMMARY_PERIOD)
    later = await sync_to_async(metrics_record)(node=node, at=timezone.now(), deployment=None, simulated=True,
                                                memory={"resident_bytes": 9}, queries={})
    summary = await fleet.receive_json_from(timeout=5)  # a new period: the box's newest figures
    assert summary["nodes"][0]["sample_at"] == later.at.isoformat() and summary["nodes"][0]["resident_bytes"] == 9
    await one.disconnect()
    await fleet.disconnect()


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_it_pushes_deployment_status_as_it_changes(operator_client, operator):
    node, _ = await sync_to_async(make_node)()
    bundle = await sync_to_async(make_bundle)()
    communicator = _connect("/ws/nodes/", operator_client)
    assert (await communicator.connect())[0]
    deployment = await sync_to_async(deployment_create)(bundle=bundle, node=node, user=operator)
    message = await communicator.receive_json_from(timeout=5)
    assert message["type"] == "deployment.status"
    assert message["deployment"]["id"] == deployment.pk and message["deployment"]["status"] == "pending"
    assert message["node"]["name"] == "edge-1"
    await communicator.disconnect()


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_a_malformed_frame_from_the_browser_is_ignored_and_the_socket_keeps_streaming(viewer_client):
    node, _ = await sync_to_async(make_node)()
    communicator = _connect(f"/ws/nodes/{node.pk}/", viewer_client)
    assert (await communicator.connect())[0]
    await communicator.send_to(text_data="{not json")
    await communicator.send_to(bytes_data=b"\x00\xff")
    sample = await sync_to_async(metrics_record)(
        node=node, at=timezone.now(), deployment=None, simulated=True, memory={}, queries={},
    )
    message = await communicator.receive_json_from(timeout=5)
    assert message["type"] == "node.metrics" and message["sample"]["id"] == sample.pk
    await communicator.disconnect()


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_signing_out_closes_the_sockets_the_session_opened(viewer_client, operator):
    node, _ = await sync_to_async(make_node)()
    other_browser = Client()
    await sync_to_async(other_browser.force_login)(operator)
    mine = _connect(f"/ws/nodes/{node.pk}/", viewer_client)
    others = _connect("/ws/nodes/", other_browser)
    assert (await mine.connect())[0] and (await others.connect())[0]
    await sync_to_async(viewer_client.logout)()
    closed = await mine.receive_output(timeout=5)
    assert closed == {"type": "websocket.close", "code": 4401}
    await sync_to_async(claim_period_reset)(FLEET_SUMMARY_PERIOD)
    sample = await sync_to_async(metrics_record)(
        node=node, at=timezone.now(), deployment=None, simulated=True, memory={}, queries={},
    )
    message = await others.receive_json_from(timeout=5)  # another session keeps streaming
    assert message["type"] == "fleet.summary" and message["nodes"][0]["sample_at"] == sample.at.isoformat()
    await mine.disconnect()
    await others.disconnect()
