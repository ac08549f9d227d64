"""Dashboard load benchmark: many browsers watching live metrics through the real stack.

``python -m webapp.loadbench [--clients 50] [--rate 2] [--seconds 60]`` starts a private stack in a temporary
folder (SQLite, an embedded Redis, daphne), signs in, opens ``--clients`` websockets on a node's live monitor
channel, and posts agent metrics at ``--rate`` Hz over the agent API for ``--seconds``. Each report travels
HTTP → database → channel layer (Redis) → consumer → websocket. It prints a table and writes JSON with the
messages lost and the delivery latency (report timestamp to arrival) per client message.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests

NODE = "bench-node"


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m webapp.loadbench", description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--rate", type=float, default=2.0, help="metrics reports per second")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--out", type=Path, default=Path("bench-results") / "dashboard.json")
    return parser.parse_args(argv)


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else float("nan")


async def _client(url: str, cookie: str, origin: str, ready: asyncio.Event, counter: list[int],
                  arrivals: dict[str, float], stop: asyncio.Event) -> None:
    from websockets.asyncio.client import connect

    async with connect(url, additional_headers={"Cookie": cookie, "Origin": origin}, open_timeout=30) as socket:
        counter[0] += 1
        if counter[0] == counter[1]:
            ready.set()
        while not stop.is_set():
            try:
                raw = await asyncio.wait_for(socket.recv(), timeout=0.5)
            except TimeoutError:
                continue
            received = time.time()
            message = json.loads(raw)
            if message.get("type") == "node.metrics":
                arrivals.setdefault(message["sample"]["at"], received)


def _publish(server: str, token: str, rate: float, seconds: float) -> list[str]:
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token}"
    sent = []
    period = 1.0 / rate
    start = time.monotonic()
    for index in range(round(rate * seconds)):
        delay = start + index * period - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        at = datetime.now(UTC).isoformat()
        body = {
            "node": NODE, "at": at, "deployment": None, "simulated": True,
            "memory": {"budget_bytes": 1 << 30, "resident_bytes": 50 << 20, "shared_bytes": 30 << 20,
                       "per_model_bytes": {}, "swapped_bytes_total": 0, "gpu": None},
            "queries": {"q": {"fps": 10.0, "latency_p50_ms": 5.0, "latency_p95_ms": 9.0, "frames_total": index,
                              "dropped_total": 0, "drop_rate": 0.0, "effective_accuracy": 0.9}},
        }
        response = session.post(f"{server}api/agent/metrics", json=body, timeout=10)
        response.raise_for_status()
        sent.append(at)
    return sent


async def _run(server: str, ws_url: str, cookie: str, token: str, args: argparse.Namespace) -> dict[str, Any]:
    ready, stop = asyncio.Event(), asyncio.Event()
    counter = [0, args.clients]
    per_client: list[dict[str, float]] = [{} for _ in range(args.clients)]
    tasks = [
        asyncio.create_task(_client(ws_url, cookie, server.rstrip("/"), ready, counter, per_client[i], stop))
        for i in range(args.clients)
    ]
    await asyncio.wait_for(ready.wait(), timeout=60)
    sent = await asyncio.to_thread(_publish, server, token, args.rate, args.seconds)
    await asyncio.sleep(3)  # let the last reports arrive
    stop.set()
    await asyncio.gather(*tasks)
    latencies = []
    received = 0
    for arrivals in per_client:
        for at in sent:
            if at in arrivals:
                received += 1
                latencies.append((arrivals[at] - datetime.fromisoformat(at).timestamp()) * 1000)
    expected = len(sent) * args.clients
    return {
        "clients": args.clients, "rate_hz": args.rate, "seconds": args.seconds, "reports_sent": len(sent),
        "messages_expected": expected, "messages_received": received, "messages_lost": expected - received,
        "latency_ms": {"p50": _quantile(latencies, 0.5), "p95": _quantile(latencies, 0.95),
                       "max": max(latencies, default=float("nan")),
                       "mean": statistics.fmean(latencies) if latencies else float("nan")},
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark on a private stack; return the exit status."""
    args = _parse(argv)
    workdir = Path(tempfile.mkdtemp(prefix="gemel-loadbench-"))
    os.environ["GEMEL_DATA_DIR"] = str(workdir)
    os.environ.pop("DATABASE_URL", None)
    os.environ.pop("REDIS_URL", None)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command

    from webapp.accounts.services import user_create
    from webapp.edge.services import agent_token_create
    from webapp.embedded_redis import EmbeddedRedis
    from webapp.stack import ManagedProcess, child_environment, daphne_command, free_port

    redis_server = EmbeddedRedis(settings.EMBEDDED_REDIS_SOCKET)
    redis_url = redis_server.start()
    call_command("migrate", interactive=False, verbosity=0)
    password = "bench-password-" + os.urandom(6).hex()
    user_create(username="bench", password=password, role="viewer")
    _, token = agent_token_create(name="bench")
    port = free_port()
    server = f"http://127.0.0.1:{port}/"
    web = ManagedProcess("daphne", daphne_command("127.0.0.1", port), child_environment(REDIS_URL=redis_url),
                         workdir / "daphne.log")
    try:
        web.start().wait_for_http(f"{server}healthz", timeout=60)
        browser = requests.Session()
        browser.get(f"{server}login/", timeout=10)
        browser.post(f"{server}login/", data={"username": "bench", "password": password,
                                             "csrfmiddlewaretoken": browser.cookies["csrftoken"]},
                     headers={"Referer": f"{server}login/"}, timeout=10)
        cookie = f"sessionid={browser.cookies['sessionid']}"
        registered = requests.post(
            f"{server}api/agent/register", headers={"Authorization": f"Bearer {token}"}, timeout=10,
            json={"protocol": 1, "node": NODE, "agent_version": "bench", "budget_bytes": 1 << 30,
                  "device": {"kind": "cpu", "name": "bench", "memory_total_bytes": 1 << 30}, "active_deployment": None},
        )
        registered.raise_for_status()
        from webapp.edge.models import EdgeNode

        node_id = EdgeNode.objects.get(name=NODE).pk
        result = asyncio.run(_run(server, f"ws://127.0.0.1:{port}/ws/nodes/{node_id}/", cookie, token, args))
    finally:
        web.stop()
        redis_server.stop()
    result["machine"] = {"cpus": os.cpu_count(), "python": sys.version.split()[0]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    latency = result["latency_ms"]
    print("clients  rate  seconds  sent  expected  received  lost  p50 ms  p95 ms  max ms")
    print(f"{result['clients']:>7}  {result['rate_hz']:>4g}  {result['seconds']:>7g}  {result['reports_sent']:>4}  "
          f"{result['messages_expected']:>8}  {result['messages_received']:>8}  {result['messages_lost']:>4}  "
          f"{latency['p50']:>6.1f}  {latency['p95']:>6.1f}  {latency['max']:>6.1f}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
