"""`make run`: the whole product on one machine with embedded defaults.

Migrates the database, makes sure an operator exists (printing generated credentials once), starts a private
Redis (when ``REDIS_URL`` is unset), daphne, a Celery worker and the edge agent, seeds the demo workload in
the background, prints the URL and waits. Ctrl-C (or SIGTERM) stops every process it started.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path
from types import FrameType

from webapp.embedded_redis import EmbeddedRedis
from webapp.stack import ManagedProcess, child_environment, daphne_command, worker_processes

AGENT_NODE = "edge-local"
# Printed at start under DEBUG: what this is, and where production's settings are written down.
DEVELOPMENT_NOTICE = ("mode       development server (DEBUG=1: debug pages for signed-in users); for production "
                      "settings see README.md, section Security")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m webapp.run", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=os.environ.get("GEMEL_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GEMEL_PORT", "8000")))
    parser.add_argument("--demo-scale", default=os.environ.get("DEMO_SCALE", "tiny,small"),
                        help="demo workloads built in the background, in this order (tiny, mix, small, hard, paper, "
                        "comma-separated; 'none' to skip)")
    parser.add_argument("--agent-budget-mb", type=int, default=int(os.environ.get("GEMEL_AGENT_BUDGET_MB", "512")))
    parser.add_argument("--agent-metrics-port", default=os.environ.get("GEMEL_AGENT_METRICS_PORT"),
                        help="serve the agent's Prometheus metrics on this port")
    parser.add_argument("--no-agent", action="store_true", help="do not start the local edge agent")
    parser.add_argument("--merge-workers", type=int, default=int(os.environ.get("GEMEL_MERGE_WORKERS", "2")),
                        help="Celery workers taking merge jobs (one job each at a time) and measurements")
    args = parser.parse_args(argv)
    if args.merge_workers < 1:
        parser.error("--merge-workers (GEMEL_MERGE_WORKERS) must be at least 1")
    from gemel_engine.demo import SCALES

    args.demo_scales = [] if args.demo_scale.strip() == "none" else [
        scale.strip() for scale in args.demo_scale.split(",") if scale.strip()]
    unknown = [scale for scale in args.demo_scales if scale not in SCALES]
    if unknown:
        parser.error(f"unknown demo scale(s) {', '.join(unknown)}; known: {', '.join(SCALES)}, or none")
    return args


def _setup_django() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")
    import django

    django.setup()


def _agent_token(token_file: Path) -> str:
    """Return the local agent's token, creating and saving it (mode 0600) the first time."""
    from webapp.edge.selectors import agent_token_find
    from webapp.edge.services import agent_token_create

    if token_file.exists():
        token = token_file.read_text().strip()
        known = agent_token_find(token=token)
        if known is not None and known.revoked_at is None:
            return token
    _, token = agent_token_create(name=f"{AGENT_NODE} (make run)")
    token_file.parent.mkdir(parents=True, exist_ok=True)
    token_file.touch(mode=0o600)
    token_file.write_text(token)
    return token


def main(argv: list[str] | None = None) -> int:
    """Run the stack until interrupted; return the exit status."""
    args = _parse(argv)
    _setup_django()
    from django.conf import settings
    from django.core.management import call_command

    from webapp.accounts.services import operator_bootstrap

    redis_server = None
    if settings.EMBEDDED_REDIS:
        redis_server = EmbeddedRedis(settings.EMBEDDED_REDIS_SOCKET)
        redis_url = redis_server.start()
        print(f"redis      private server on {settings.EMBEDDED_REDIS_SOCKET}")
    else:
        redis_url = settings.REDIS_URL
    call_command("migrate", interactive=False, verbosity=0)
    login = operator_bootstrap(
        username=os.environ.get("GEMEL_ADMIN_USER") or None, password=os.environ.get("GEMEL_ADMIN_PASSWORD") or None
    )
    logs = Path(settings.DATA_DIR) / "logs"
    env = child_environment(REDIS_URL=redis_url)
    url = f"http://{args.host}:{args.port}/"
    processes = [
        ManagedProcess("web (daphne)", daphne_command(args.host, args.port), env, logs / "daphne.log"),
        *worker_processes(env, logs, merge_workers=args.merge_workers),
    ]
    if not args.no_agent:
        token = _agent_token(Path(settings.DATA_DIR) / "agent" / "token")
        state_dir = Path(settings.DATA_DIR) / "agent" / AGENT_NODE
        # The token goes through the environment: not visible in the process list, and never parsed as an option.
        agent = [
            sys.executable, "-m", "gemel_engine", "agent", "--server", url, "--node", AGENT_NODE,
            "--budget-mb", str(args.agent_budget_mb), "--state-dir", str(state_dir),
        ]
        if args.agent_metrics_port:
            agent += ["--metrics-port", str(args.agent_metrics_port)]
        processes.append(ManagedProcess("edge agent", agent, {**env, "GEMEL_AGENT_TOKEN": token}, logs / "agent.log"))

    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    status = 0
    try:
        web, *others = processes
        web.start().wait_for_http(f"{url}healthz", timeout=60)
        for process in others:
            process.start()
        from webapp.workloads.services import demo_seed_start

        for scale in args.demo_scales:  # one builder takes them in this order: the quick one is ready first
            demo_seed_start(scale=scale)
        if args.demo_scales:
            print(f"demo       building {' then '.join(map(repr, args.demo_scales))} in the background (see the "
                  "Overview)")
        print(f"logs       {logs}/")
        print(f"dashboard  {url}")
        if settings.DEBUG:
            print(DEVELOPMENT_NOTICE)
        if login.generated_password:
            print(f"sign in    {login.username} / {login.generated_password}   (shown once; set GEMEL_ADMIN_PASSWORD "
                  "to choose it)")
        else:
            print(f"sign in    {login.username} (password from GEMEL_ADMIN_PASSWORD or shown at the first start)")
        print("Ctrl-C stops everything.", flush=True)
        while not stopping:
            for process in processes:
                if not process.running:
                    print(f"{process.name} exited; last lines of its log:\n{process.log_tail(2000)}", file=sys.stderr)
                    stopping, status = True, 1
            time.sleep(0.5)
    finally:
        print("stopping…", flush=True)
        for process in reversed(processes):
            process.stop()
        if redis_server is not None:
            redis_server.stop()
    return status


if __name__ == "__main__":
    sys.exit(main())
