"""The edge agent's deployment logic against a real EdgeServer; the dashboard is a stand-in at the HTTP boundary."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from gemel_engine.runtime.agent import Agent, AgentConfig, AgentError
from gemel_engine.runtime.serving import EdgeServer
from tests.engine.runtime.conftest import desired_json
from tests.waiting import wait_until


class FakeDashboard:
    """Answers the agent's requests like the server would: records posts, serves bundle files from folders."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, dict[str, Any]]] = []
        self.folders: dict[int, Path] = {}

    def post(self, path: str, body: dict[str, Any], *, retry: bool = True) -> dict[str, Any]:
        self.posts.append((path, body))
        return {}

    def download(self, path: str, dest: Path) -> None:
        deployment, name = int(path.split("/")[-3]), path.split("/")[-1]
        shutil.copyfile(self.folders[deployment] / name, dest)

    def statuses(self, deployment: int) -> list[str]:
        return [body["status"] for path, body in self.posts if path == f"/api/agent/deployments/{deployment}/status"]

    def desired(self, deployment: int, folder: Path) -> dict[str, Any]:
        self.folders[deployment] = folder
        desired = desired_json(deployment, ["a", "b"])
        desired["bundle"]["files"] = [
            {"name": p.name, "url": f"/api/agent/deployments/{deployment}/files/{p.name}",
             "sha256": hashlib.sha256(p.read_bytes()).hexdigest(), "size_bytes": p.stat().st_size}
            for p in sorted(folder.iterdir())
        ]
        return desired


def make_agent(state_dir: Path, dashboard: FakeDashboard) -> Agent:
    config = AgentConfig(server="http://dashboard.invalid", token="t", node="edge-1", state_dir=state_dir,
                         device="cpu", budget_bytes=256 << 20)
    return Agent(config, server=EdgeServer(device="cpu", budget_bytes=256 << 20), client=dashboard)


def converge_and_wait(agent: Agent, desired: dict[str, Any]) -> None:
    agent.converge(desired)
    if agent._worker is not None:
        agent._worker.join(timeout=60)
    assert agent.status()[0] != "deploying"


@pytest.fixture
def tampered_bundle(small_bundle, tmp_path) -> Path:
    """A copy of the small bundle with one tensor byte changed (the manifest's checksum no longer matches)."""
    copy = shutil.copytree(small_bundle, tmp_path / "tampered")
    tensors = copy / "tensors.safetensors"
    data = bytearray(tensors.read_bytes())
    data[-1] ^= 0xFF
    tensors.write_bytes(bytes(data))
    return copy


def test_it_switches_to_a_deployment_reporting_each_step_and_saves_it(small_bundle, tmp_path):
    dashboard = FakeDashboard()
    agent = make_agent(tmp_path / "state", dashboard)
    converge_and_wait(agent, dashboard.desired(1, small_bundle))
    assert agent.active_deployment == 1
    assert dashboard.statuses(1) == ["downloading", "loading", "warming", "active"]
    state = json.loads((tmp_path / "state" / "state.json").read_text())
    assert state["active"]["deployment"] == 1
    assert Path(state["active"]["bundle_dir"]).is_dir()
    assert agent.status() == ("serving", "")
    agent.server.close()


def test_it_keeps_serving_the_active_deployment_when_the_next_bundle_fails_to_load(
    small_bundle, tampered_bundle, tmp_path
):
    dashboard = FakeDashboard()
    agent = make_agent(tmp_path / "state", dashboard)
    converge_and_wait(agent, dashboard.desired(1, small_bundle))
    before = agent.server.active
    bad = dashboard.desired(2, tampered_bundle)
    converge_and_wait(agent, bad)
    assert agent.server.active is before and not before.released
    assert dashboard.statuses(2)[-1] == "failed"
    reason = next(b["detail"] for _, b in dashboard.posts if b.get("status") == "failed")
    assert "sha256" in reason
    status, detail = agent.status()
    assert status == "degraded" and "sha256" in detail
    converge_and_wait(agent, bad)
    assert dashboard.statuses(2).count("downloading") == 1, "a failed deployment id is not tried again"
    assert not (tmp_path / "state" / "bundles" / "2").exists()
    agent.server.close()


def test_it_refuses_a_download_whose_checksum_differs_from_the_desired_state(small_bundle, tmp_path):
    dashboard = FakeDashboard()
    agent = make_agent(tmp_path / "state", dashboard)
    desired = dashboard.desired(3, small_bundle)
    desired["bundle"]["files"][0]["sha256"] = "0" * 64
    converge_and_wait(agent, desired)
    assert agent.server.active is None
    assert dashboard.statuses(3) == ["downloading", "failed"]
    assert "checksum mismatch" in dashboard.posts[-1][1]["detail"]


def test_it_serves_the_saved_deployment_again_after_a_restart(small_bundle, tampered_bundle, tmp_path):
    dashboard = FakeDashboard()
    first = make_agent(tmp_path / "state", dashboard)
    converge_and_wait(first, dashboard.desired(1, small_bundle))
    converge_and_wait(first, dashboard.desired(2, tampered_bundle))
    first.server.close()

    again = make_agent(tmp_path / "state", FakeDashboard())
    assert again.restore() is True
    assert again.active_deployment == 1
    again.server.start()
    wait_until(lambda: sum(q["frames_total"] for q in again.server.metrics_snapshot()["queries"].values()) > 0,
               timeout=60, what="the restored deployment to serve frames")
    assert 2 in again._failed, "the failed deployment stays remembered across restarts"
    again.server.close()


class RefusingDashboard(FakeDashboard):
    """Refuses the agent's token for the first ``refusals`` registrations, as after a token was re-created."""

    def __init__(self, refusals: int) -> None:
        super().__init__()
        self.refusals = refusals

    def post(self, path: str, body: dict[str, Any], *, retry: bool = True) -> dict[str, Any]:
        if path == "/api/agent/register" and self.refusals:
            self.refusals -= 1
            raise AgentError(f"POST {path}: 401 unknown agent token", 401)
        return super().post(path, body, retry=retry)


def test_a_refused_token_keeps_the_agent_serving_and_asking_again(tmp_path, small_bundle):
    dashboard = RefusingDashboard(refusals=2)
    config = AgentConfig(server="http://dashboard.invalid", token="t", node="edge-1", state_dir=tmp_path / "state",
                         device="cpu", budget_bytes=256 << 20, refused_retry_s=0.05)
    agent = Agent(config, server=EdgeServer(device="cpu", budget_bytes=256 << 20), client=dashboard)
    converge_and_wait(agent, dashboard.desired(1, small_bundle))
    agent.register_until_accepted()
    assert dashboard.refusals == 0
    assert [path for path, _ in dashboard.posts].count("/api/agent/register") == 1
    assert agent.server.active is not None and agent.active_deployment == 1
