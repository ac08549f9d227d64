"""The real edge agent (``python -m gemel_engine agent`` in a subprocess) against the real server (live_server).

A tiny bundle of two MobileNet-v3-small models is deployed to it; a tampered bundle must leave it on the
previous deployment; an agent SIGKILLed mid-deploy must serve its old bundle again after a restart and then
converge on the desired deployment.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings as django_settings

from tests.engine.runtime.conftest import make_bundle as write_bundle
from tests.waiting import wait_until
from tests.webapp.test_edge_factories import make_bundle, make_query
from webapp.edge import selectors
from webapp.edge.models import Deployment, EdgeNode, MetricSample
from webapp.edge.services import agent_token_create, deployment_create
from webapp.merges.models import MergeBundle
from webapp.stack import ManagedProcess, child_environment

pytestmark = pytest.mark.django_db(transaction=True)
QUERIES = {"north_cars": ("north", 1), "south_cars": ("south", 2)}


def wait_for(condition: Callable[[], Any], agent: ManagedProcess, what: str, timeout: float = 180.0) -> Any:
    return wait_until(condition, timeout=timeout, what=what, every=0.1, context=agent.log_tail)


def status_of(deployment: Deployment) -> str:
    return Deployment.objects.values_list("status", flat=True).get(pk=deployment.pk)


def bundle_row(name: str, *, seed: int, tamper: bool = False) -> MergeBundle:
    folder = write_bundle(Path(django_settings.MEDIA_ROOT) / "bundles" / name,
                          dict.fromkeys(QUERIES, "mobilenet_v3_small"), seed=seed)
    if tamper:
        tensors = folder / "tensors.safetensors"
        data = bytearray(tensors.read_bytes())
        data[-1] ^= 0xFF
        tensors.write_bytes(bytes(data))
    queries = [make_query(q, camera=camera, seed=seed) for q, (camera, seed) in QUERIES.items()]
    return make_bundle(folder=folder, queries=queries)


class AgentRunner:
    """Starts ``python -m gemel_engine agent`` for node edge-1 with one state folder, as often as asked."""

    def __init__(self, server: str, token: str, tmp_path: Path) -> None:
        self.command = [
            sys.executable, "-m", "gemel_engine", "agent", "--server", server, f"--token={token}", "--node", "edge-1",
            "--state-dir", str(tmp_path / "agent-state"), "--device", "cpu", "--budget-mb", "256",
        ]
        self.log = tmp_path / "agent.log"
        self.process: ManagedProcess | None = None

    def start(self) -> ManagedProcess:
        self.process = ManagedProcess("edge agent", self.command, child_environment(), self.log).start()
        return self.process

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()


@pytest.fixture
def agent_runner(live_server, settings, tmp_path) -> Iterator[AgentRunner]:
    settings.AGENT_HEARTBEAT_SECONDS = 1
    _, plain = agent_token_create(name="edge-1")
    runner = AgentRunner(live_server.url, plain, tmp_path)
    try:
        yield runner
    finally:
        runner.stop()


def deploy_and_wait_active(bundle: MergeBundle, agent: ManagedProcess) -> tuple[EdgeNode, Deployment]:
    node = wait_for(lambda: EdgeNode.objects.filter(name="edge-1").first(), agent, "registration")
    deployment = deployment_create(bundle=bundle, node=node, user=None)
    wait_for(lambda: status_of(deployment) == "active", agent, f"deployment {deployment.pk} active")
    wait_for(lambda: MetricSample.objects.filter(node=node, deployment=deployment).exists(), agent, "metrics")
    return node, deployment


def frames_served(sample: MetricSample) -> int:
    return sum(int(q.get("frames_total") or 0) for q in sample.payload["queries"].values())


def test_it_deploys_to_the_agent_and_stays_on_it_when_the_next_bundle_fails_to_load(agent_runner):
    good = bundle_row("good", seed=0)
    tampered = bundle_row("tampered", seed=1, tamper=True)
    agent = agent_runner.start()
    node, first = deploy_and_wait_active(good, agent)
    wait_for(lambda: frames_served(MetricSample.objects.filter(node=node).latest("id")) > 0, agent, "frames served")

    bad = deployment_create(bundle=tampered, node=node, user=None)
    wait_for(lambda: status_of(bad) == "failed", agent, "the tampered deployment failing")
    bad.refresh_from_db()
    assert "sha256" in bad.detail or "refused" in bad.detail
    wait_for(lambda: EdgeNode.objects.get(pk=node.pk).status == "degraded", agent, "a degraded heartbeat")
    node.refresh_from_db()
    assert node.active_deployment_id == first.pk
    assert status_of(first) == "active"
    newest = MetricSample.objects.filter(node=node).latest("id").pk
    wait_for(lambda: MetricSample.objects.filter(node=node, deployment=first, pk__gt=newest).exists(), agent,
             "metrics of the previous deployment after the failure")


def test_it_serves_the_old_bundle_after_a_kill_mid_deploy_and_then_converges(agent_runner, monkeypatch):
    good = bundle_row("good", seed=0)
    newer = bundle_row("newer", seed=1)
    agent = agent_runner.start()
    node, first = deploy_and_wait_active(good, agent)

    # A slow link: bundle downloads hang until the gate opens, so the kill lands mid-download.
    gate = threading.Event()
    real_file_path = selectors.deployment_file_path

    def slow_file_path(**kwargs: Any) -> Path | None:
        gate.wait(60)
        return real_file_path(**kwargs)

    monkeypatch.setattr(selectors, "deployment_file_path", slow_file_path)
    second = deployment_create(bundle=newer, node=node, user=None)
    wait_for(lambda: status_of(second) == "downloading", agent, "the download starting")
    agent.signal(signal.SIGKILL)
    wait_for(lambda: not agent.running, agent, "the agent dying")
    before_restart = MetricSample.objects.filter(node=node).latest("id").pk

    agent = agent_runner.start()
    restarted = wait_for(
        lambda: MetricSample.objects.filter(node=node, pk__gt=before_restart, deployment=first)
        .order_by("-id").first(), agent, "metrics after the restart")
    wait_for(lambda: frames_served(MetricSample.objects.filter(node=node).latest("id")) > 0, agent,
             "the old bundle serving frames again")
    assert restarted.deployment_id == first.pk
    assert status_of(second) == "downloading"

    gate.set()
    wait_for(lambda: status_of(second) == "active", agent, "convergence on the desired deployment")
    node.refresh_from_db()
    assert node.active_deployment_id == second.pk
    assert status_of(first) == "superseded"
    wait_for(lambda: MetricSample.objects.filter(node=node, deployment=second).exists(), agent,
             "metrics of the new deployment")
