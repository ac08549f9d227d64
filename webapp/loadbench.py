"""Fleet load benchmark: many edge agents reporting while many browsers watch, through the real stack.

``python -m webapp.loadbench --agents 100 --rate 1 --clients 50 --seconds 60`` starts a private stack (daphne,
a database, a Redis), creates one agent token per agent, and runs, side by side:

- ``--agents`` simulated agents in a process of their own, each speaking the real agent's HTTP protocol with
  its own token: it registers its box, then posts a metrics report ``--rate`` times a second and a heartbeat
  every heartbeat interval;
- ``--clients`` browsers, each with the fleet overview's websocket (one summary of the boxes that reported,
  every FLEET_SUMMARY_SECONDS) and one box's live-monitor websocket (every report of box ``client % agents``),
  after loading the Overview page once.

Each report travels HTTP → database → channel layer (Redis) → consumer → websocket. The benchmark prints a table
and writes JSON: messages expected, received and lost on both channels, delivery latency p50/p95/max (a report's
timestamp to its arrival at a monitor; a fleet summary's sending to its arrival), how stale the fleet's figures
of each box are when they arrive (its report's timestamp to arrival: up to one period plus one report interval,
by design), the daphne processes' CPU, and the Overview page's time with the whole fleet on it.

The database is PostgreSQL when ``--database-url`` (default: ``DATABASE_URL``) names one (a fresh database is
created on that server and dropped afterwards), else SQLite in a temporary folder; the channel layer is the
Redis at ``--redis-url`` (default: ``REDIS_URL``), else an embedded one. ``--web-processes K`` runs K daphne
processes on one channel layer, agents and browsers spread over them (as behind a load balancer).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests

NODE_PREFIX = "bench-node-"
# Seconds the websockets keep listening after the last report, for the last messages to arrive.
DRAIN_SECONDS = 3.0


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m webapp.loadbench", description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=1, help="simulated edge agents, one box and token each")
    parser.add_argument("--rate", type=float, default=2.0, help="metrics reports per second of each agent")
    parser.add_argument("--clients", type=int, default=50, help="browsers watching the fleet and one box each")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--web-processes", type=int, default=1, help="daphne processes sharing the channel layer")
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL", ""),
                        help="a PostgreSQL server to create the benchmark's database on (default: SQLite)")
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL", ""),
                        help="the channel layer's Redis (default: an embedded one)")
    parser.add_argument("--out", type=Path, default=Path("bench-results") / "dashboard.json")
    args = parser.parse_args(argv)
    for name in ("agents", "clients", "web_processes"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if not 0 < args.rate <= 50 or not 0 < args.seconds <= 3600:
        parser.error("--rate must be in (0, 50] and --seconds in (0, 3600]")
    return args


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else float("nan")


def _latency(values: list[float]) -> dict[str, float]:
    return {"p50": _quantile(values, 0.5), "p95": _quantile(values, 0.95), "max": max(values, default=float("nan")),
            "mean": statistics.fmean(values) if values else float("nan")}


# -- the agents (a process of their own) -------------------------------------------------------------------


def _report(node: str, at: str, index: int) -> dict[str, Any]:
    return {
        "node": node, "at": at, "deployment": None, "simulated": True,
        "memory": {"budget_bytes": 1 << 30, "resident_bytes": 50 << 20, "shared_bytes": 30 << 20,
                   "per_model_bytes": {}, "swapped_bytes_total": 0, "gpu": None},
        "queries": {"q": {"fps": 10.0, "latency_p50_ms": 5.0, "latency_p95_ms": 9.0, "frames_total": index,
                          "dropped_total": 0, "drop_rate": 0.0, "effective_accuracy": 0.9}},
    }


def _agent(server: str, token: str, node: str, args: dict[str, Any], start: float, out: dict[str, Any]) -> None:
    """Report as one agent until the run ends: metrics at ``rate`` Hz (its first at ``start``), a heartbeat every
    ``heartbeat_s``; record each report's timestamp and any refused request."""
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token}"
    period, sent, errors = 1.0 / args["rate"], [], 0
    next_beat = start
    for index in range(round(args["rate"] * args["seconds"])):
        delay = start + index * period - time.time()
        if delay > 0:
            time.sleep(delay)
        try:
            if time.time() >= next_beat:
                session.post(f"{server}api/agent/heartbeat", timeout=30, json={
                    "node": node, "status": "idle", "detail": "", "active_deployment": None,
                }).raise_for_status()
                next_beat += args["heartbeat_s"]
            at = datetime.now(UTC).isoformat()
            session.post(f"{server}api/agent/metrics", json=_report(node, at, index), timeout=30).raise_for_status()
            sent.append(at)
        except requests.RequestException:
            errors += 1
    out[node] = {"sent": sent, "errors": errors}


def _agents_main(plan: list[dict[str, str]], args: dict[str, Any], start: float, result_path: str) -> None:
    """The agents' process: one thread per agent, all starting at ``start`` (spread over one report period)."""
    out: dict[str, Any] = {}
    threads = [
        threading.Thread(target=_agent, args=(item["server"], item["token"], item["node"], args,
                                              start + i / len(plan) / args["rate"], out))
        for i, item in enumerate(plan)
    ]
    began = time.process_time()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    out["_cpu_seconds"] = time.process_time() - began
    Path(result_path).write_text(json.dumps(out))


# -- the browsers (this process) ---------------------------------------------------------------------------


async def _socket(url: str, cookie: str, origin: str, ready: asyncio.Barrier, arrivals: dict[str, Any],
                  kind: str, stop: asyncio.Event) -> None:
    from websockets.asyncio.client import connect

    async with connect(url, additional_headers={"Cookie": cookie, "Origin": origin}, open_timeout=60,
                       max_queue=None) as socket:
        await ready.wait()
        while not stop.is_set():
            try:
                raw = await asyncio.wait_for(socket.recv(), timeout=0.5)
            except TimeoutError:
                continue
            received = time.time()
            message = json.loads(raw)
            if kind == "node" and message.get("type") == "node.metrics":
                arrivals.setdefault(message["sample"]["at"], received)
            elif kind == "fleet" and message.get("type") == "fleet.summary":
                arrivals.setdefault(message["at"], (received, [node["sample_at"] for node in message["nodes"]]))


async def _watch(servers: list[str], cookie: str, node_ids: list[int], args: argparse.Namespace,
                 start: float, mark: Any) -> list[dict[str, Any]]:
    """Open each browser's two sockets, then listen until the agents are done (``start`` + ``--seconds``, plus the
    drain), calling ``mark()`` as they start and as they end; return per browser the node it watched and its
    arrivals on each channel."""
    browsers = [{"node": node_ids[i % len(node_ids)], "server": servers[i % len(servers)], "node_arrivals": {},
                 "fleet_arrivals": {}} for i in range(args.clients)]
    ready, stop = asyncio.Barrier(2 * args.clients + 1), asyncio.Event()
    tasks = []
    for browser in browsers:
        server = browser["server"]
        ws = "ws" + server[len("http"):]
        origin = server.rstrip("/")
        tasks.append(asyncio.create_task(_socket(f"{ws}ws/nodes/{browser['node']}/", cookie, origin, ready,
                                                 browser["node_arrivals"], "node", stop)))
        tasks.append(asyncio.create_task(_socket(f"{ws}ws/nodes/", cookie, origin, ready,
                                                 browser["fleet_arrivals"], "fleet", stop)))
    await asyncio.wait_for(ready.wait(), timeout=120)
    await asyncio.sleep(max(0.0, start - time.time()))
    mark()
    await asyncio.sleep(max(0.0, start + args.seconds - time.time()))
    mark()
    await asyncio.sleep(DRAIN_SECONDS)
    stop.set()
    await asyncio.gather(*tasks)
    return browsers


# -- the stack ---------------------------------------------------------------------------------------------


@contextmanager
def _database(url: str) -> Iterator[str]:
    """Yield the ``DATABASE_URL`` of a fresh PostgreSQL database on the server ``url`` names (dropped afterwards),
    or "" (SQLite in the data folder) when ``url`` is empty."""
    if not url:
        yield ""
        return
    import psycopg

    parts = urlsplit(url)
    name = f"gemel_loadbench_{uuid.uuid4().hex[:10]}"
    admin = urlunsplit((parts.scheme.replace("postgresql", "postgres"), parts.netloc, "/postgres", "", ""))
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        yield urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, ""))
    finally:
        from django.db import connections

        connections.close_all()
        with psycopg.connect(admin, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _cpu_seconds(pid: int) -> float:
    """Return the user + system CPU seconds process ``pid`` has used (Linux ``/proc``; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _sign_in(server: str, password: str) -> str:
    browser = requests.Session()
    browser.get(f"{server}login/", timeout=30)
    browser.post(f"{server}login/", data={"username": "bench", "password": password,
                                         "csrfmiddlewaretoken": browser.cookies["csrftoken"]},
                 headers={"Referer": f"{server}login/"}, timeout=30)
    return f"sessionid={browser.cookies['sessionid']}"


def _page_ms(url: str, cookie: str) -> float:
    started = time.perf_counter()
    response = requests.get(url, headers={"Cookie": cookie}, timeout=60)
    response.raise_for_status()
    return (time.perf_counter() - started) * 1000


def _tally(browsers: list[dict[str, Any]], sent: dict[str, list[str]], names: dict[int, str]) -> dict[str, Any]:
    """Return delivered vs expected and the latencies on each channel. A browser expects every report of the
    box it watches, and every box summary the server sent on the fleet channel (those any browser received)."""
    node_latencies, node_received, node_expected = [], 0, 0
    for browser in browsers:
        reports = sent.get(names[browser["node"]], [])
        node_expected += len(reports)
        for at in reports:
            if at in browser["node_arrivals"]:
                node_received += 1
                node_latencies.append((browser["node_arrivals"][at] - datetime.fromisoformat(at).timestamp()) * 1000)
    summaries = set().union(*(browser["fleet_arrivals"] for browser in browsers))
    fleet_latencies, staleness, fleet_received = [], [], 0
    for browser in browsers:
        for sent_at, (arrived, sample_times) in browser["fleet_arrivals"].items():
            fleet_received += 1
            fleet_latencies.append((arrived - datetime.fromisoformat(sent_at).timestamp()) * 1000)
            staleness.extend((arrived - datetime.fromisoformat(at).timestamp()) * 1000 for at in sample_times if at)
    fleet_expected = len(summaries) * len(browsers)
    return {
        "messages_expected": node_expected + fleet_expected,
        "messages_received": node_received + fleet_received,
        "messages_lost": node_expected + fleet_expected - node_received - fleet_received,
        "latency_ms": _latency(node_latencies + fleet_latencies),
        "node_channel": {"expected": node_expected, "received": node_received,
                         "lost": node_expected - node_received, "latency_ms": _latency(node_latencies)},
        "fleet_channel": {"summaries_sent": len(summaries), "expected": fleet_expected, "received": fleet_received,
                          "lost": fleet_expected - fleet_received, "latency_ms": _latency(fleet_latencies),
                          "staleness_ms": _latency(staleness)},
    }


def _run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command

    from webapp.accounts.services import user_create
    from webapp.edge.models import EdgeNode
    from webapp.edge.services import agent_token_create
    from webapp.embedded_redis import EmbeddedRedis
    from webapp.stack import ManagedProcess, child_environment, daphne_command, free_port

    redis_server = None if args.redis_url else EmbeddedRedis(settings.EMBEDDED_REDIS_SOCKET)
    redis_url = args.redis_url or redis_server.start()
    call_command("migrate", interactive=False, verbosity=0)
    password = "bench-password-" + os.urandom(6).hex()
    user_create(username="bench", password=password, role="viewer")
    tokens = [agent_token_create(name=f"{NODE_PREFIX}{i}")[1] for i in range(args.agents)]
    ports = [free_port() for _ in range(args.web_processes)]
    servers = [f"http://127.0.0.1:{port}/" for port in ports]
    webs = [ManagedProcess(f"daphne-{i}", daphne_command("127.0.0.1", port), child_environment(REDIS_URL=redis_url),
                           workdir / f"daphne-{i}.log") for i, port in enumerate(ports)]
    try:
        for web, server in zip(webs, servers, strict=True):
            web.start().wait_for_http(f"{server}healthz", timeout=60)
        cookie = _sign_in(servers[0], password)
        plan = [{"server": servers[i % len(servers)], "token": token, "node": f"{NODE_PREFIX}{i}"}
                for i, token in enumerate(tokens)]
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda item: requests.post(
                f"{item['server']}api/agent/register", headers={"Authorization": f"Bearer {item['token']}"},
                timeout=60, json={"protocol": 1, "node": item["node"], "agent_version": "bench",
                                  "budget_bytes": 1 << 30, "active_deployment": None,
                                  "device": {"kind": "cpu", "name": "bench", "memory_total_bytes": 1 << 30}},
            ).raise_for_status(), plan))
        names = dict(EdgeNode.objects.filter(name__startswith=NODE_PREFIX).values_list("pk", "name"))
        node_ids = sorted(names, key=lambda pk: int(names[pk][len(NODE_PREFIX):]))
        with ThreadPoolExecutor(8) as pool:
            page_ms = list(pool.map(lambda i: _page_ms(servers[i % len(servers)], cookie), range(args.clients)))
        start = time.time() + 5.0  # the browsers' sockets open meanwhile
        result_path = workdir / "agents.json"
        agents = multiprocessing.get_context("spawn").Process(target=_agents_main, args=(
            plan, {"rate": args.rate, "seconds": args.seconds, "heartbeat_s": settings.AGENT_HEARTBEAT_SECONDS},
            start, str(result_path)))
        agents.start()
        marks: list[tuple[float, list[float]]] = []  # (time, each daphne's CPU seconds) as the agents start and end

        def mark() -> None:
            marks.append((time.time(), [_cpu_seconds(web.process.pid) for web in webs]))

        browsers = asyncio.run(_watch(servers, cookie, node_ids, args, start, mark))
        wall = marks[1][0] - marks[0][0]
        cpu = [end - begin for begin, end in zip(marks[0][1], marks[1][1], strict=True)]
        agents.join(timeout=args.seconds + 120)
        reported = json.loads(result_path.read_text())
    finally:
        for web in webs:
            web.stop()
        if redis_server is not None:
            redis_server.stop()
    sent = {name: item["sent"] for name, item in reported.items() if not name.startswith("_")}
    return {
        "agents": args.agents, "clients": args.clients, "rate_hz": args.rate, "seconds": args.seconds,
        "web_processes": args.web_processes,
        "database": "postgresql" if args.database_url else "sqlite",
        "channel_layer": "redis (given)" if args.redis_url else "redis (embedded)",
        "fleet_summary_seconds": settings.FLEET_SUMMARY_SECONDS,
        "reports_sent": sum(len(times) for times in sent.values()),
        "requests_failed": sum(item["errors"] for name, item in reported.items() if not name.startswith("_")),
        **_tally(browsers, sent, names),
        "server_cpu_cores": sum(cpu) / wall, "server_cpu_cores_per_process": [c / wall for c in cpu],
        "agents_cpu_cores": reported["_cpu_seconds"] / args.seconds,
        "overview_page_ms": {"p50": _quantile(page_ms, 0.5), "p95": _quantile(page_ms, 0.95)},
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark on a private stack; return the exit status."""
    args = _parse(argv)
    workdir = Path(tempfile.mkdtemp(prefix="gemel-loadbench-"))
    os.environ["GEMEL_DATA_DIR"] = str(workdir)
    os.environ.pop("REDIS_URL", None)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")
    with _database(args.database_url) as database_url:
        if database_url:
            os.environ["DATABASE_URL"] = database_url
        else:
            os.environ.pop("DATABASE_URL", None)
        result = _run(args, workdir)
    result["machine"] = {"cpus": os.cpu_count(), "python": sys.version.split()[0]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    latency = result["latency_ms"]
    print("agents  clients  rate  seconds  web  db          sent  expected  received  lost  p50 ms  p95 ms  max ms"
          "  server CPU")
    print(f"{result['agents']:>6}  {result['clients']:>7}  {result['rate_hz']:>4g}  {result['seconds']:>7g}  "
          f"{result['web_processes']:>3}  {result['database']:<10}  {result['reports_sent']:>4}  "
          f"{result['messages_expected']:>8}  {result['messages_received']:>8}  {result['messages_lost']:>4}  "
          f"{latency['p50']:>6.1f}  {latency['p95']:>6.1f}  {latency['max']:>6.1f}  "
          f"{result['server_cpu_cores']:>6.2f} cores")
    for channel in ("node_channel", "fleet_channel"):
        figures = result[channel]
        print(f"  {channel.replace('_', ' ')}: {figures['received']}/{figures['expected']} delivered, "
              f"p95 {figures['latency_ms']['p95']:.1f} ms"
              + (f"; box figures {figures['staleness_ms']['p95'] / 1000:.1f} s old at p95 (by design)"
                 if "staleness_ms" in figures else ""))
    print(f"  Overview page with {result['agents']} boxes: p50 {result['overview_page_ms']['p50']:.0f} ms; "
          f"{result['requests_failed']} agent requests failed")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
