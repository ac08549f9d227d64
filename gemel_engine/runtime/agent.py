"""The edge agent: converges an ``EdgeServer`` on the deployment the dashboard wants (docs/agent-protocol.md).

It registers, heartbeats and learns the desired deployment from each heartbeat's answer; a new one is
downloaded into a staging folder, its files checked (size, sha256), prepared beside the active deployment,
warmed up and switched to atomically, with its status reported at each step. On any failure the active
deployment keeps serving, the failure is reported with its reason and that deployment id is not tried again.
``state.json`` under the state folder names the active deployment, its spec and bundle folder, so that a
restarted agent serves it again at once (before it can even reach the server) and then converges.

Plain HTTP with ``requests``; no web framework here.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urljoin
from wsgiref.simple_server import WSGIServer

import requests
from prometheus_client import start_http_server

import gemel_engine
from gemel_engine.errors import DeploymentError, GemelError
from gemel_engine.fileio import file_sha256, write_json_atomically
from gemel_engine.runtime.protocol import PROTOCOL_VERSION, DeploymentSpec
from gemel_engine.runtime.serving import EdgeServer, PreparedDeployment

logger = logging.getLogger("gemel_engine.agent")

STATE_FILE = "state.json"
_BACKOFF_START_S = 1.0
_BACKOFF_MAX_S = 30.0
# Statuses with which the server refuses the agent's token.
_REFUSED = (401, 403)
_CHUNK = 1 << 20
# Failed deployment ids remembered in state.json (never tried again).
_FAILED_KEPT = 50


class AgentError(GemelError):
    """The server refused a request (a 4xx other than 409), or the agent was stopped while waiting."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class Stopped(AgentError):
    """The agent was asked to stop while a request was waiting to be retried."""


@dataclass(frozen=True)
class AgentConfig:
    """How the agent reaches its server and where it keeps its state."""

    # Base URL of the dashboard, e.g. http://127.0.0.1:8000.
    server: str
    # Agent token (Bearer) created by an operator.
    token: str
    # Node name, unique per server.
    node: str
    # Device memory budget in bytes (None: the device's own memory, or no limit on the CPU).
    budget_bytes: int | None = None
    # Folder for state.json, bundles and staging downloads.
    state_dir: Path = Path("var/agent")
    # "auto", "cpu" or "cuda[:N]".
    device: str = "auto"
    # Seconds one HTTP request may take.
    request_timeout_s: float = 30.0
    # Seconds between registration attempts while the server refuses the token (401/403).
    refused_retry_s: float = 30.0
    # Port of the Prometheus endpoint (/metrics) on metrics_host; None: no endpoint, 0: any free port.
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"

    def __post_init__(self) -> None:
        if not self.server.startswith(("http://", "https://")):
            raise DeploymentError(f"--server must be an http(s) URL, got {self.server!r}")
        if not self.token:
            raise DeploymentError("--token is required")
        if not self.node.strip():
            raise DeploymentError("--node must be a non-empty name")
        if self.budget_bytes is not None and self.budget_bytes <= 0:
            raise DeploymentError("--budget-mb must be positive")
        object.__setattr__(self, "state_dir", Path(self.state_dir))


class ServerClient:
    """JSON over HTTP to the dashboard with the agent token; retries 5xx and connection errors with back-off."""

    def __init__(self, config: AgentConfig, stop: threading.Event) -> None:
        self.base = config.server.rstrip("/") + "/"
        self.timeout = config.request_timeout_s
        self.stop = stop
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {config.token}"
        self.session.headers["User-Agent"] = f"gemel-agent/{gemel_engine.__version__}"

    def url(self, path: str) -> str:
        """Return the absolute URL of a server path (``/api/agent/...``)."""
        return urljoin(self.base, path.lstrip("/"))

    def _send(self, method: str, path: str, *, retry: bool, **kwargs: Any) -> requests.Response:
        delay = _BACKOFF_START_S
        while True:
            try:
                response = self.session.request(method, self.url(path), timeout=self.timeout, **kwargs)
            except requests.RequestException as exc:
                reason = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code < 400:
                    return response
                if response.status_code < 500 and response.status_code != 409:
                    raise AgentError(f"{method} {path}: {response.status_code} {_detail(response)}",
                                     response.status_code)
                reason = f"{response.status_code} {_detail(response)}"
            if not retry:
                raise AgentError(f"{method} {path}: {reason}")
            logger.warning("%s %s failed (%s); retrying in %.0f s", method, path, reason, delay)
            if self.stop.wait(delay):
                raise Stopped("stopped")
            delay = min(delay * 2, _BACKOFF_MAX_S)

    def post(self, path: str, body: dict[str, Any], *, retry: bool = True) -> dict[str, Any]:
        """POST ``body`` as JSON; return the JSON answer.

        Raises:
            AgentError: a 4xx answer (not retried), or any failure when ``retry`` is off.
            Stopped: the agent stopped while waiting to retry.
        """
        return self._send("POST", path, json=body, retry=retry).json()

    def download(self, path: str, dest: Path) -> None:
        """Stream the file at ``path`` into ``dest``.

        Raises:
            AgentError, Stopped: as for ``post``.
        """
        response = self._send("GET", path, retry=True, stream=True)
        with response, dest.open("wb") as handle:
            for chunk in response.iter_content(_CHUNK):
                handle.write(chunk)


def _detail(response: requests.Response) -> str:
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    return str(detail) if detail else (response.text[:200] or response.reason)


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Agent:
    """One edge node's agent: an ``EdgeServer`` plus the control loop that talks to the dashboard."""

    def __init__(self, config: AgentConfig, *, server: EdgeServer | None = None, client: ServerClient | None = None,
                 ) -> None:
        self.config = config
        self.stop_event = threading.Event()
        self.server = server or EdgeServer(device=config.device, budget_bytes=config.budget_bytes)
        self.client = client or ServerClient(config, self.stop_event)
        self.state_dir = config.state_dir
        self.heartbeat_interval_s = 5.0
        self.metrics_interval_s = 1.0
        self._lock = threading.Lock()
        self._applying: int | None = None
        self._worker: threading.Thread | None = None
        self._failed: dict[int, str] = {}
        self._detail = ""
        self._active_desired: dict[str, Any] | None = None

    # -- local state ------------------------------------------------------------------------------------

    @property
    def state_path(self) -> Path:
        """Return the path of state.json."""
        return self.state_dir / STATE_FILE

    def _read_state(self) -> dict[str, Any]:
        try:
            data = json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            logger.error("%s is unreadable (%s); starting without a deployment", self.state_path, exc)
            return {}
        return data if isinstance(data, dict) else {}

    def _save_state(self) -> None:
        active = self.server.active
        write_json_atomically(self.state_path, {
            "node": self.config.node,
            "active": None if active is None or self._active_desired is None else {
                "deployment": active.spec.deployment,
                "desired": self._active_desired,
                "bundle_dir": str(active.bundle_dir),
            },
            "failed": {str(k): v for k, v in list(self._failed.items())[-_FAILED_KEPT:]},
        })

    @property
    def active_deployment(self) -> int | None:
        """Return the id of the deployment being served, or None."""
        active = self.server.active
        return None if active is None else active.spec.deployment

    def restore(self) -> bool:
        """Serve the deployment state.json names again, from its bundle on disk; return whether it serves.

        A bundle that no longer loads is reported in the heartbeats' detail; the agent then starts idle.
        """
        state = self._read_state()
        self._failed = {int(k): str(v) for k, v in (state.get("failed") or {}).items() if str(k).isdigit()}
        active = state.get("active")
        if not isinstance(active, dict):
            return False
        try:
            desired = active["desired"]
            spec = DeploymentSpec.from_json(desired)
            prepared = self.server.prepare(Path(active["bundle_dir"]), spec)
            self.server.warm_up(prepared)
            self.server.activate(prepared)
        except (GemelError, KeyError, TypeError) as exc:
            self._detail = f"could not resume the saved deployment: {exc}"
            logger.error(self._detail)
            return False
        self._active_desired = desired
        logger.info("resumed deployment %s from %s", spec.deployment, active["bundle_dir"])
        return True

    # -- protocol ---------------------------------------------------------------------------------------

    def register(self) -> None:
        """Register the node (device, memory, budget, active deployment) and adopt the server's intervals."""
        device = self.server.device_info()
        answer = self.client.post("/api/agent/register", {
            "protocol": PROTOCOL_VERSION, "node": self.config.node, "agent_version": gemel_engine.__version__,
            "device": {"kind": device["kind"], "name": device.get("name") or device["kind"],
                       "memory_total_bytes": int(device.get("memory_total_bytes") or self.config.budget_bytes or 0)},
            "budget_bytes": self.config.budget_bytes,
            "active_deployment": self.active_deployment,
        })
        self.heartbeat_interval_s = float(answer.get("heartbeat_interval_s") or self.heartbeat_interval_s)
        self.metrics_interval_s = float(answer.get("metrics_interval_s") or self.metrics_interval_s)
        logger.info("registered node %s with %s", self.config.node, self.config.server)

    def register_until_accepted(self, *, refused: AgentError | None = None) -> None:
        """Register, and while the server refuses the token (401/403) keep serving and ask again every
        ``refused_retry_s``: an edge box goes on watching its cameras while an operator fixes the token.

        Raises:
            Stopped: the agent was asked to stop while waiting.
            AgentError: any other refusal.
        """
        while True:
            if refused is not None:
                logger.error("the server refused the agent (%s); serving goes on, asking again in %.0f s",
                             refused, self.config.refused_retry_s)
                if self.stop_event.wait(self.config.refused_retry_s):
                    raise Stopped("stopped")
            try:
                self.register()
                return
            except AgentError as exc:
                if exc.status not in _REFUSED:
                    raise
                refused = exc

    def status(self) -> tuple[str, str]:
        """Return the heartbeat's (status, detail): idle, serving, deploying or degraded."""
        with self._lock:
            if self._applying is not None:
                return "deploying", ""
        if self._detail:
            return ("degraded" if self.server.active is not None else "idle"), self._detail
        return ("serving" if self.server.active is not None else "idle"), ""

    def heartbeat(self) -> dict[str, Any] | None:
        """Send a heartbeat (registering again if the server forgot the node); return the desired state."""
        status, detail = self.status()
        body = {"node": self.config.node, "active_deployment": self.active_deployment, "status": status,
                "detail": detail}
        try:
            answer = self.client.post("/api/agent/heartbeat", body)
        except AgentError as exc:
            if exc.status != 404:
                raise
            self.register()
            answer = self.client.post("/api/agent/heartbeat", body)
        return answer.get("desired")

    def send_metrics(self) -> None:
        """Send one metrics report (best effort: a failure is logged and the report dropped)."""
        body = {"node": self.config.node, "at": _now_iso(), **self.server.metrics_snapshot()}
        try:
            self.client.post("/api/agent/metrics", body, retry=False)
        except AgentError as exc:
            logger.warning("metrics not sent: %s", exc)

    def _report(self, deployment: int, status: str, detail: str = "") -> None:
        self.client.post(f"/api/agent/deployments/{deployment}/status",
                         {"node": self.config.node, "status": status, "detail": detail})

    # -- applying a deployment --------------------------------------------------------------------------

    def converge(self, desired: dict[str, Any] | None) -> None:
        """Start applying ``desired`` in the background unless it is served, failed before or under way."""
        if not isinstance(desired, dict) or not isinstance(desired.get("deployment"), int):
            return
        deployment = desired["deployment"]
        if deployment == self.active_deployment:
            if self._detail and deployment not in self._failed:
                self._detail = ""
            return
        if deployment in self._failed:
            self._detail = self._failed[deployment]
            return
        with self._lock:
            if self._applying is not None:
                return
            self._applying = deployment
        self._worker = threading.Thread(target=self._apply_safely, args=(desired,), name=f"deploy-{deployment}",
                                        daemon=True)
        self._worker.start()

    def _apply_safely(self, desired: dict[str, Any]) -> None:
        deployment = desired["deployment"]
        try:
            self.apply(desired)
        except Stopped:
            logger.info("stopped while applying deployment %s", deployment)
        except Exception as exc:  # any failure: keep serving the current deployment, report why
            reason = str(exc) if isinstance(exc, GemelError) else f"{type(exc).__name__}: {exc}"
            logger.error("deployment %s failed: %s", deployment, reason)
            self._failed[deployment] = reason
            self._detail = f"deployment {deployment} failed: {reason}"
            try:
                self._save_state()
                self._report(deployment, "failed", reason)
            except (AgentError, OSError) as report_exc:
                logger.error("could not report the failure of deployment %s: %s", deployment, report_exc)
        finally:
            with self._lock:
                self._applying = None

    def apply(self, desired: dict[str, Any]) -> PreparedDeployment:
        """Download, check, prepare beside the active deployment, warm up and switch to ``desired``.

        Returns:
            The deployment now being served.

        Raises:
            GemelError: a malformed desired state, a file whose size or sha256 differs, a bundle the
                runtime refuses, out of budget, an unreachable camera (the active deployment still serves).
            AgentError, Stopped: the server refused a request, or the agent stopped.
        """
        deployment = desired["deployment"]
        spec = DeploymentSpec.from_json(desired)
        self._report(deployment, "downloading")
        bundle_dir = self._download(deployment, desired.get("bundle") or {})
        self._report(deployment, "loading")
        try:
            prepared = self.server.prepare(bundle_dir, spec)
            try:
                self._report(deployment, "warming")
                self.server.warm_up(prepared)
            except BaseException:
                prepared.release()
                raise
        except BaseException:
            shutil.rmtree(bundle_dir, ignore_errors=True)
            raise
        self.server.activate(prepared)
        self._active_desired = desired
        self._detail = ""
        self._save_state()
        self._report(deployment, "active")
        self._remove_old_bundles()
        logger.info("deployment %s active (%d resident bytes)", deployment, prepared.resident_bytes)
        return prepared

    def _download(self, deployment: int, bundle: dict[str, Any]) -> Path:
        files = bundle.get("files")
        if not isinstance(files, list) or not files:
            raise DeploymentError(f"deployment {deployment}: the desired state lists no bundle files")
        staging_root = self.state_dir / "staging"
        staging_root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f"{deployment}-", dir=staging_root))
        try:
            for item in files:
                name = item.get("name") if isinstance(item, dict) else None
                if not isinstance(name, str) or not name or Path(name).name != name or name.startswith("."):
                    raise DeploymentError(f"deployment {deployment}: refusing bundle file name {name!r}")
                dest = staging / name
                self.client.download(item["url"], dest)
                size = dest.stat().st_size
                if size != item.get("size_bytes"):
                    raise DeploymentError(
                        f"checksum mismatch: {name} has {size} bytes, the server announced {item.get('size_bytes')}"
                    )
                if file_sha256(dest) != item.get("sha256"):
                    raise DeploymentError(f"checksum mismatch: sha256 of {name} differs from the server's")
            final = self.state_dir / "bundles" / str(deployment)
            final.parent.mkdir(parents=True, exist_ok=True)
            if final.exists() and (self.server.active is None or self.server.active.bundle_dir != final):
                shutil.rmtree(final)
            if final.exists():  # the active deployment's own folder: never touched
                raise DeploymentError(f"deployment {deployment} is already active")
            os.replace(staging, final)
            return final
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _remove_old_bundles(self) -> None:
        """Delete every downloaded bundle but the active one's, and the staging folder."""
        active = self.server.active
        keep = active.bundle_dir.resolve() if active is not None else None
        root = self.state_dir / "bundles"
        for path in root.iterdir() if root.is_dir() else []:
            if path.resolve() != keep:
                shutil.rmtree(path, ignore_errors=True)
        shutil.rmtree(self.state_dir / "staging", ignore_errors=True)

    # -- the loop ---------------------------------------------------------------------------------------

    def start_prometheus(self) -> WSGIServer | None:
        """Serve the runtime's figures at ``http://metrics_host:metrics_port/metrics`` when a port is set.

        Returns:
            The running HTTP server (its ``server_port`` is the port bound), or None without a port.
        """
        if self.config.metrics_port is None:
            return None
        exporter, _ = start_http_server(
            self.config.metrics_port, addr=self.config.metrics_host, registry=self.server.prometheus_registry()
        )
        logger.info("Prometheus metrics at http://%s:%d/metrics", self.config.metrics_host, exporter.server_port)
        return exporter

    def stop(self) -> None:
        """Ask the loop to end (safe from a signal handler)."""
        self.stop_event.set()

    def run(self, *, install_signals: bool = True) -> int:
        """Resume the saved deployment, register, then heartbeat, converge and send metrics until stopped.

        Returns:
            The process exit status (0 after a clean stop).
        """
        if install_signals:
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, lambda *_: self.stop())
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.restore()
        self.server.start()
        exporter = self.start_prometheus()
        try:
            self.register_until_accepted()
            next_beat = next_metrics = time.monotonic()
            while not self.stop_event.is_set():
                now = time.monotonic()
                try:
                    if now >= next_beat:
                        self.converge(self.heartbeat())
                        next_beat = time.monotonic() + self.heartbeat_interval_s
                    if now >= next_metrics:
                        self.send_metrics()
                        next_metrics = time.monotonic() + self.metrics_interval_s
                except AgentError as exc:
                    if exc.status not in _REFUSED:
                        raise
                    self.register_until_accepted(refused=exc)
                self.stop_event.wait(max(0.0, min(next_beat, next_metrics) - time.monotonic()))
        except Stopped:
            pass
        except AgentError as exc:
            logger.error("the server refused the agent: %s", exc)
            return 1
        finally:
            self.stop_event.set()
            if exporter is not None:
                exporter.shutdown()
            if self._worker is not None:
                self._worker.join(timeout=30)
            self.server.close()
        logger.info("agent stopped")
        return 0


def run_agent(config: AgentConfig) -> int:
    """Run an agent for ``config`` until SIGTERM/SIGINT; return its exit status."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return Agent(config).run()
