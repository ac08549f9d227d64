"""End-to-end fixtures: the whole stack (daphne, a Celery worker, the edge agent, Redis) on the test database,
driven by Debian's chromium through Playwright (no browser download).

The stack lives for the session and the tests in this folder share its data, so they run as one story in
file order. Screenshots go to ``$GEMEL_SCREENSHOT_DIR`` (default ``var/screenshots``), which CI keeps.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
from django.conf import settings as django_settings
from django.contrib.auth.models import User
from django.db import connection

from tests.time_limits import SESSION_BUILD_LIMIT_S, own_time_limit
from tests.waiting import wait_until
from tests.webapp.conftest import point_this_process_at_redis, redis_for_tests
from webapp.embedded_redis import EmbeddedRedis
from webapp.stack import (
    REPO_ROOT,
    ManagedProcess,
    celery_worker_command,
    child_environment,
    daphne_command,
    database_url,
    free_port,
)

# Playwright's sync API runs an event loop in this thread; the ORM calls the tests make are still plain sync.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
]
OPERATOR = ("olivia", "correct horse battery staple")
VIEWER = ("victor", "correct horse battery staple")
AGENT_NODE = "edge-e2e"


@dataclass
class LiveStack:
    """The running stack: its URL, Redis, media folder and processes, with handles for fault injection."""

    url: str
    redis_url: str
    media_root: Path
    logs: Path
    env: dict[str, str]
    agent_token: str
    redis_server: EmbeddedRedis | None
    processes: dict[str, ManagedProcess] = field(default_factory=dict)
    # What the browser reported its Content-Security-Policy refused, on any page of any test.
    csp_violations: list[str] = field(default_factory=list)

    def start(self, name: str, command: list[str]) -> ManagedProcess:
        """Start (or restart) the process ``name`` and return it."""
        old = self.processes.get(name)
        if old is not None:
            old.stop()
        process = ManagedProcess(name, command, self.env, self.logs / f"{name}.log").start()
        self.processes[name] = process
        return process

    def start_worker(self) -> ManagedProcess:
        """Start a Celery worker and wait until it is ready."""
        worker = self.start("worker", celery_worker_command(name=f"e2e{len(self.processes)}"))
        worker.wait_for_log("ready.", timeout=90)
        return worker

    def agent_command(self) -> list[str]:
        """Return the edge agent's command line."""
        return [
            sys.executable, "-m", "gemel_engine", "agent", "--server", self.url, f"--token={self.agent_token}",
            "--node", AGENT_NODE, "--budget-mb", "256", "--state-dir", str(self.media_root / "agent-state"),
            "--device", "cpu",
        ]

    def start_agent(self) -> ManagedProcess:
        """Start the edge agent."""
        return self.start("agent", self.agent_command())

    def agent_report(self) -> str:
        """Return whether the agent still runs and the tail of its log (what a failed wait on it shows)."""
        agent = self.processes.get("agent")
        if agent is None:
            return "the agent was never started"
        state = "running" if agent.running() else "exited"
        return f"agent {state}; its log ends:\n{agent.log_tail()}"

    def wait_for_agent(self, *, timeout: float) -> None:
        """Wait until the agent's node is registered (again, after a test's flush removed it)."""
        from webapp.edge.models import EdgeNode

        wait_until(lambda: EdgeNode.objects.filter(name=AGENT_NODE).exists(), timeout=timeout,
                   what="the agent to register", context=self.agent_report)

    def restart_redis(self, *, down_until: Callable[[], bool], what: str) -> None:
        """Take Redis away until ``down_until()`` holds (``what`` names it): restart the private server (its data
        is lost, as with any restart without persistence), or keep dropping every client connection of an
        external one."""
        if self.redis_server is not None:
            self.redis_server.stop()
            wait_until(down_until, timeout=120, what=what, every=0.2)
            self.redis_server.start()
        else:
            external = redis.Redis.from_url(self.redis_url)

            def dropped_and_done() -> bool:
                external.client_kill_filter(_type="normal", skipme=True)
                return down_until()

            wait_until(dropped_and_done, timeout=120, what=what, every=0.2)

    def stop(self) -> None:
        """Stop every process and the private Redis."""
        for process in reversed(list(self.processes.values())):
            process.stop()
        if self.redis_server is not None:
            self.redis_server.stop()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every browser test runs on the committed test database (the stack's processes read it)."""
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.path).parents:
            item.add_marker(pytest.mark.django_db(transaction=True))


def _ensure_accounts(token: str) -> None:
    """Create the operator, the viewer and the agent's token unless they exist (a test's flush removes them)."""
    from webapp.accounts.services import user_create
    from webapp.edge.models import AgentToken
    from webapp.edge.selectors import token_hash

    for username, password, role in ((*OPERATOR, "operator"), (*VIEWER, "viewer")):
        if not User.objects.filter(username=username).exists():
            user_create(username=username, password=password, role=role)
    AgentToken.objects.get_or_create(token_hash=token_hash(token), defaults={"name": "e2e agent", "prefix": token[:8]})


@pytest.fixture(autouse=True)
def _stack_accounts(request) -> Iterator[None]:
    """Before each browser test, point this process at the stack's Redis and media and restore its accounts;
    after it, fail it if the browser refused anything under the pages' Content-Security-Policy."""
    stack = None
    if "live_stack" in request.fixturenames:
        stack = request.getfixturevalue("live_stack")
        django_settings.MEDIA_ROOT = stack.media_root
        point_this_process_at_redis(stack.redis_url)
        _ensure_accounts(stack.agent_token)
    yield
    if stack is not None:
        violations, stack.csp_violations[:] = list(stack.csp_violations), []
        assert not violations, "the pages broke their Content-Security-Policy:\n" + "\n".join(violations)


@pytest.fixture(scope="session")
def live_stack(django_db_setup, django_db_blocker, tmp_path_factory) -> Iterator[LiveStack]:
    """Start daphne, a Celery worker and the edge agent on the test database; yield the stack."""
    root = tmp_path_factory.mktemp("stack")
    redis_url, redis_server = redis_for_tests(root / "redis")
    media_root = root / "media"
    from webapp.edge.services import agent_token_new

    token = agent_token_new()
    with django_db_blocker.unblock():
        _ensure_accounts(token)
        env = child_environment(
            DATABASE_URL=database_url(connection.settings_dict), REDIS_URL=redis_url,
            GEMEL_MEDIA_DIR=str(media_root), GEMEL_CAMERA_FILE_ROOTS=str(root / "videos"),
            GEMEL_AGENT_HEARTBEAT_S="1",
        )
    # This process queues Celery tasks and sends channel-layer messages too: point it at the stack's Redis.
    django_settings.MEDIA_ROOT = media_root
    point_this_process_at_redis(redis_url)
    port = free_port()
    stack = LiveStack(f"http://127.0.0.1:{port}/", redis_url, media_root, root / "logs", env, token, redis_server)
    try:
        with own_time_limit(SESSION_BUILD_LIMIT_S):
            web = stack.start("web", daphne_command("127.0.0.1", port))
            web.wait_for_http(f"{stack.url}healthz", timeout=90)
            stack.start_worker()
            stack.start_agent()
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="session")
def browser():
    """Debian's chromium driven by Playwright."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture(scope="session")
def screenshot_dir() -> Path:
    """Folder for page screenshots (CI keeps it)."""
    folder = Path(os.environ.get("GEMEL_SCREENSHOT_DIR", REPO_ROOT / "var" / "screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def sign_in(browser, stack: LiveStack, credentials: tuple[str, str]):
    """Return a new page signed in with ``credentials``."""
    context = browser.new_context(viewport={"width": 1360, "height": 900})
    page = context.new_page()
    page.on("console", lambda message: stack.csp_violations.append(f"{page.url}: {message.text}")
            if "Content Security Policy" in message.text else None)
    page.goto(f"{stack.url}login/")
    page.fill("#id_username", credentials[0])
    page.fill("#id_password", credentials[1])
    page.click("button[type=submit]")
    page.wait_for_url(f"{stack.url}")
    return page
