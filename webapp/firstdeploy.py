"""Time to a first deployed merged bundle: a newcomer's path through ``make run``, timed step by step.

``python -m webapp.firstdeploy [--budget-minutes 4]`` starts the whole stack as ``make run`` does (``webapp.run``,
the default demo scales, its edge agent) in a fresh data folder, then walks the path the Overview's guide leads
a newcomer along, through the dashboard's own API with an operator's session: wait for the dashboard, wait for
the first demo's queries to be ready, start a merge job over them (gemel+, the budget given), wait for its first
configuration that saves memory and may be deployed, deploy it to the local box, and wait until the box serves it
and reports metrics for it. It prints each step's time since the start and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import requests

T = TypeVar("T")
USER, PASSWORD = "newcomer", "first-deploy-" + os.urandom(4).hex()


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m webapp.firstdeploy", description=__doc__.splitlines()[0])
    parser.add_argument("--demo-scale", default="tiny,small", help="as make run's DEMO_SCALE")
    parser.add_argument("--budget-minutes", type=float, default=4.0, help="the merge job's budget")
    parser.add_argument("--timeout-minutes", type=float, default=40.0, help="give up after this long")
    parser.add_argument("--out", type=Path, default=Path("bench-results") / "first-deploy.json")
    return parser.parse_args(argv)


def _wait(what: str, probe: Callable[[], T | None], deadline: float, log: Path) -> T:
    while time.monotonic() < deadline:
        try:
            found = probe()
        except requests.RequestException:
            found = None
        if found is not None and found is not False:
            return found
        time.sleep(1.0)
    tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
    raise SystemExit(f"gave up waiting for {what}; the stack's output ends:\n{tail}")


class _Dashboard:
    """An operator's signed-in session on the dashboard's API."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.session = requests.Session()

    def sign_in(self) -> bool:
        self.session.get(f"{self.url}login/", timeout=10)
        self.session.post(f"{self.url}login/", timeout=10, headers={"Referer": f"{self.url}login/"}, data={
            "username": USER, "password": PASSWORD, "csrfmiddlewaretoken": self.session.cookies["csrftoken"]})
        return "sessionid" in self.session.cookies

    def get(self, path: str) -> Any:
        response = self.session.get(f"{self.url}api/{path}", timeout=30)
        response.raise_for_status()
        return response.json()

    def post(self, path: str, body: dict[str, Any]) -> Any:
        response = self.session.post(f"{self.url}api/{path}", json=body, timeout=60, headers={
            "X-CSRFToken": self.session.cookies["csrftoken"], "Referer": self.url})
        if response.status_code >= 400:
            raise SystemExit(f"POST /api/{path} answered {response.status_code}: {response.text[:500]}")
        return response.json()


def main(argv: list[str] | None = None) -> int:
    """Run the newcomer's path on a fresh stack; return the exit status."""
    args = _parse(argv)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")
    from webapp.stack import REPO_ROOT, free_port

    data_dir = Path(tempfile.mkdtemp(prefix="gemel-first-deploy-"))
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    env = {**os.environ, "GEMEL_DATA_DIR": str(data_dir), "GEMEL_ADMIN_USER": USER, "GEMEL_ADMIN_PASSWORD": PASSWORD,
           "PYTHONUNBUFFERED": "1"}
    for name in ("DATABASE_URL", "REDIS_URL"):
        env.pop(name, None)  # the embedded defaults, as a newcomer's make run
    log = data_dir / "run.log"
    started = time.monotonic()
    deadline = started + args.timeout_minutes * 60
    steps: list[dict[str, Any]] = []

    def step(name: str, **details: Any) -> None:
        steps.append({"step": name, "seconds": round(time.monotonic() - started, 1), **details})
        print(f"{steps[-1]['seconds']:>7.1f} s  {name}" + (f"  {details}" if details else ""), flush=True)

    with log.open("ab") as output:
        stack = subprocess.Popen(  # noqa: S603 - our own module
            [sys.executable, "-m", "webapp.run", "--port", str(port), "--demo-scale", args.demo_scale],
            cwd=REPO_ROOT, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        dashboard = _Dashboard(url)
        _wait("the dashboard", lambda: requests.get(f"{url}healthz", timeout=5).ok, deadline, log)
        step("dashboard answers")
        _wait("signing in", dashboard.sign_in, deadline, log)
        first_scale = args.demo_scale.split(",")[0].strip()

        def ready_queries() -> list[dict[str, Any]] | None:
            seeds = {seed["scale"]: seed for seed in dashboard.get("demo-seeds")}
            seed = seeds.get(first_scale)
            if seed is None or seed["status"] != "ready":
                return None
            queries = [q for q in dashboard.get("queries") if q["status"] == "ready"]
            return queries or None

        queries = _wait(f"the {first_scale} demo's queries", ready_queries, deadline, log)
        step(f"{len(queries)} queries of the {first_scale} demo ready")
        nodes = _wait("the local edge box", lambda: dashboard.get("nodes") or None, deadline, log)
        job = dashboard.post("merge-jobs", {"queries": [q["id"] for q in queries], "strategy": "gemel+",
                                            "budget_minutes": args.budget_minutes})
        step("merge job started", job=job["id"], budget_minutes=args.budget_minutes)

        def first_saving_bundle() -> dict[str, Any] | None:
            bundles = [b for b in dashboard.get(f"merge-jobs/{job['id']}/bundles")
                       if b["deployable"] and b["saved_param_bytes"] > 0]
            if bundles:
                return bundles[0]
            if dashboard.get(f"merge-jobs/{job['id']}")["finished"]:
                raise SystemExit(f"merge job {job['id']} finished without a deployable saving configuration")
            return None

        bundle = _wait("a deployable configuration that saves memory", first_saving_bundle, deadline, log)
        step("first deployable configuration that saves memory", config=bundle["index"],
             saved_mib=round(bundle["saved_param_bytes"] / 2**20, 1))
        deployment = dashboard.post("deployments", {"bundle": bundle["id"], "node": nodes[0]["id"]})
        step("deployed", deployment=deployment["id"], node=nodes[0]["name"])
        _wait("the box to serve it", lambda: next((d for d in dashboard.get(f"deployments?node={nodes[0]['id']}")
                                                   if d["id"] == deployment["id"] and d["status"] == "active"), None),
              deadline, log)
        step("the box serves it")
        _wait("metrics of it", lambda: next((s for s in dashboard.get(f"nodes/{nodes[0]['id']}/metrics")
                                             if s["deployment"] == deployment["id"]), None), deadline, log)
        step("live metrics of it on the monitor")
    finally:
        os.killpg(stack.pid, signal.SIGINT)
        try:
            stack.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(stack.pid, signal.SIGKILL)
    result = {"demo_scale": args.demo_scale, "budget_minutes": args.budget_minutes, "steps": steps,
              "machine": {"cpus": os.cpu_count()}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
