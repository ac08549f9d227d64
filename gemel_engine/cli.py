"""``python -m gemel_engine``: analyse workloads, apply merge plans, inspect bundles, run benchmarks.

Bad input exits with status 2 and one ``error: ...`` line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from torch import nn

from gemel_engine import zoo
from gemel_engine.accuracy import parse_accept_confidence
from gemel_engine.bundle import ModelRecipe, inspect_bundle, save_bundle
from gemel_engine.demo import SCALES
from gemel_engine.errors import GemelError, UsageError
from gemel_engine.layers import analyze_models
from gemel_engine.memory import footprint
from gemel_engine.modelset import ModelSet
from gemel_engine.plan import MATCH_MODES, MergePlan, check_model_name
from gemel_engine.report import format_table, mib, percent
from gemel_engine.search.engine import DEFAULT_ACCEPT_CONFIDENCE
from gemel_engine.sharing import WARM_STARTS, apply_plan

if TYPE_CHECKING:
    from gemel_engine.accuracy import Measurement
    from gemel_engine.workload import Workload

EXIT_USAGE = 2
_MODEL_SPEC = re.compile(r"^(?P<name>[^=]+)=(?P<arch>[A-Za-z0-9_]+)(?::(?P<classes>[^@]+))?(?:@(?P<weights>.+))?$")


@dataclass(frozen=True)
class ModelArg:
    """A ``--model NAME=ARCH[:NUM_CLASSES][@WEIGHTS]`` argument, parsed and checked."""

    name: str
    arch: str
    num_classes: int | None
    weights: Path | None

    @property
    def recipe(self) -> ModelRecipe:
        """Return the recipe that rebuilds this model."""
        classes = self.num_classes or zoo.get_spec(self.arch).default_num_classes
        return ModelRecipe(self.arch, {"num_classes": classes})

    def build(self, *, device: str | None = None) -> nn.Module:
        """Return the model, with the weights file loaded (or, on the meta device, checked) when given.

        Raises:
            GemelError: unknown architecture, unreadable or mismatched weights.
        """
        model = self.recipe.build(device=device)
        if self.weights is None:
            return model
        if device == "meta":  # shapes only: check the file fits, there is nothing to copy into
            zoo.check_state_dict(model, zoo.read_state_dict(self.weights), source=str(self.weights))
            return model
        return zoo.load_weights(model, self.weights)


def parse_model_arg(text: str) -> ModelArg:
    """Return the parsed ``NAME=ARCH[:NUM_CLASSES][@WEIGHTS]`` specification.

    Raises:
        UsageError: malformed text, a bad name or class count, an unknown architecture, a missing file.
    """
    match = _MODEL_SPEC.match(text)
    if match is None:
        raise UsageError(f"--model {text!r}: expected NAME=ARCH[:NUM_CLASSES][@WEIGHTS]")
    try:
        name = check_model_name(match["name"])
    except GemelError as exc:
        raise UsageError(f"--model {text!r}: {exc}") from None
    zoo.get_spec(match["arch"])
    classes = None
    if match["classes"] is not None:
        if not match["classes"].isdigit() or int(match["classes"]) < 1:
            raise UsageError(f"--model {text!r}: NUM_CLASSES must be a positive integer")
        classes = int(match["classes"])
    weights = Path(match["weights"]) if match["weights"] else None
    if weights is not None and not weights.is_file():
        raise UsageError(f"--model {text!r}: weights file {weights} not found")
    return ModelArg(name, match["arch"], classes, weights)


def _model_args(texts: Sequence[str]) -> list[ModelArg]:
    parsed = [parse_model_arg(text) for text in texts]
    names = [arg.name for arg in parsed]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise UsageError(f"model names must be unique; repeated: {', '.join(duplicates)}")
    return parsed


def _print_json(data: object) -> None:
    print(json.dumps(data, indent=2))


def cmd_analyze(args: argparse.Namespace) -> int:
    """Print the sharing analysis of the given models; optionally write the share-everything plan."""
    if bool(args.model) == bool(args.workload):
        raise UsageError("give either --model (repeatable) or --workload")
    if args.workload:
        from gemel_engine.workload import Workload

        workload = Workload.load(args.workload, check_weights=False)
        models = {e.name: e.query.build_model(device="meta", **e.builder_args) for e in workload.queries}
        archs = {e.name: e.query.arch for e in workload.queries}
    else:
        model_args = _model_args(args.model)
        models = {arg.name: arg.build(device="meta") for arg in model_args}
        archs = {arg.name: arg.arch for arg in model_args}
    analysis = analyze_models(models, mode=args.mode, archs=archs)
    if args.plan_out:
        analysis.plan().save(args.plan_out)
    if args.json:
        _print_json(analysis.to_dict())
        return 0
    print(format_table(
        ["model", "arch", "params MiB", "shareable MiB"],
        [[m.name, m.arch, mib(m.param_bytes), mib(m.shareable_param_bytes)] for m in analysis.models],
    ))
    print()
    top = analysis.instances[: args.top]
    print(f"Top {len(top)} of {len(analysis.instances)} merge instances ({analysis.mode} mode):")
    print(format_table(
        ["signature", "members", "MiB each", "saves MiB"],
        [[c.signature.key, len(c.members), mib(c.layer_bytes), mib(c.savings_bytes)] for c in top],
    ))
    print()
    print(f"total parameters: {analysis.total_param_bytes} bytes ({mib(analysis.total_param_bytes)} MiB)")
    print(
        f"structural optimum: {analysis.max_savings_bytes} bytes ({mib(analysis.max_savings_bytes)} MiB, "
        f"{percent(analysis.max_savings_fraction)} of all parameters)"
    )
    if args.plan_out:
        print(f"plan sharing all {len(analysis.instances)} instances written to {args.plan_out}")
    return 0


def cmd_merge_apply(args: argparse.Namespace) -> int:
    """Build (or load) the models, tie them by the plan and write a bundle."""
    model_args = _model_args(args.model)
    plan = MergePlan.load(args.plan)
    models = ModelSet({arg.name: arg.build() for arg in model_args})
    before = footprint(models)
    apply_plan(models, plan, warm_start=args.warm_start)
    after = footprint(models)
    out = save_bundle(
        models,
        plan,
        args.out,
        recipes={arg.name: arg.recipe for arg in model_args},
        metadata={"created_by": "merge-apply", "warm_start": args.warm_start},
        overwrite=args.overwrite,
    )
    print(
        f"bundle {out}: {len(plan.instances)} shared instances, parameters {mib(before.param_bytes)} MiB -> "
        f"{mib(after.param_bytes)} MiB (saved {percent(after.saved_param_bytes / before.param_bytes)})"
    )
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    """Print what a bundle holds and what its sharing saves."""
    from gemel_engine.search import bundle_test_report, resolve_bundle

    bundle = resolve_bundle(args.bundle)

    info = inspect_bundle(bundle)
    tested = bundle_test_report(dict(info.metadata))
    if args.json:
        data = info.to_dict()
        data["models"] = [{**model, **tested.get(model["name"], {})} for model in data["models"]]
        _print_json(data)
        return 0
    print(format_table(
        ["model", "arch", "builder args", "params MiB", "test accuracy [95% interval]", "test target"],
        [
            [m["name"], m["arch"], json.dumps(m["builder_args"]), mib(m["param_bytes"]),
             _accuracy_cell(tested[m["name"]]) if m["name"] in tested else "-",
             _target_cell(tested.get(m["name"], {}).get("test_target"))]
            for m in info.models
        ],
    ))
    print()
    print(f"shared instances: {len(info.plan.instances)} ({info.plan.mode} mode)")
    print(f"unmerged_param_bytes: {info.unmerged_param_bytes} ({mib(info.unmerged_param_bytes)} MiB)")
    print(f"unique_param_bytes: {info.unique_param_bytes} ({mib(info.unique_param_bytes)} MiB)")
    print(f"savings: {info.savings_bytes} bytes ({percent(info.savings_fraction)})")
    print(f"tensor file: {info.tensor_file_bytes} bytes")
    return 0


def _accuracy_cell(row: dict) -> str:
    return _interval_cell(row["merged_test_accuracy"], *row["merged_test_interval"])


def _interval_cell(accuracy: float, low: float, high: float) -> str:
    return f"{accuracy:.3f} [{low:.3f}, {high:.3f}]"


def _target_cell(target: float | None) -> str:
    return "-" if target is None else f"{target:.3f}"


def _measurement_cell(measured: Measurement | None) -> str:
    return "-" if measured is None else measured.describe()


def cmd_demo_build(args: argparse.Namespace) -> int:
    """Generate a demo workload: cameras, trained unmerged models and workload.json."""
    from gemel_engine.demo import build_demo

    def report(event: dict) -> None:
        if event["type"] == "demo.kept":
            print(f"kept {event['query']} ({event['arch']}): trained by an earlier run of this build", flush=True)
        elif event["type"] == "demo.training":
            print(f"training {event['query']} ({event['arch']}, {event['steps']} steps)...", flush=True)
        elif event["type"] == "demo.step" and event["step"] % 50 == 0:
            print(f"  step {event['step']} of {event['steps']}, {event['seconds']:.0f} s, "
                  f"about {event['seconds_left']:.0f} s left", flush=True)
        elif event["type"] == "demo.trained":
            test = event.get("test") or {}
            print(f"  accuracy {event['accuracy']:.3f} on {event['val_frames']} validation frames, "
                  f"{test.get('accuracy', float('nan')):.3f} on {event['test_frames']} test frames, "
                  f"{event['seconds']:.0f} s", flush=True)

    workload = build_demo(args.scale, args.out, progress=report)
    print()
    _print_unmerged(workload)
    print(f"\nwrote {Path(args.out) / 'workload.json'}")
    return 0


def _print_unmerged(workload: Workload) -> None:
    print(format_table(
        ["query", "camera", "arch", "task", "chance (val)", "unmerged val", "unmerged test [95% interval]",
         "chance (test)", "test target"],
        [
            [
                e.name, e.query.camera, e.query.arch, e.query.task.kind,
                "-" if e.chance_accuracy is None else f"{e.chance_accuracy:.3f}",
                f"{e.unmerged_accuracy:.3f}", _measurement_cell(e.unmerged_test), _measurement_cell(e.chance_test),
                _target_cell(e.required_test_accuracy),
            ]
            for e in workload.queries
        ],
    ))
    _warn_no_better_than_chance(workload)


def _warn_no_better_than_chance(workload: Workload) -> None:
    for entry in workload.queries:
        if entry.chance_shortfall is not None:
            print(f"warning: {entry.name}: {entry.chance_shortfall}; merging it proves little", file=sys.stderr,
                  flush=True)


def cmd_measure(args: argparse.Namespace) -> int:
    """Measure every query's unmerged model on its validation and test frames and rewrite workload.json."""
    from gemel_engine.workload import Workload, camera_frames, measure_query

    workload = Workload.load(args.workload, upgrade=True)
    frames = {camera.name: camera_frames(workload, camera) for camera in workload.cameras}
    measured = []
    for entry in workload.queries:
        print(f"measuring {entry.name}...", file=sys.stderr, flush=True)
        measured.append(measure_query(workload, entry, frames[entry.query.camera])[0])
    workload = workload.with_queries(tuple(measured))
    workload.save(args.workload)
    _print_unmerged(workload)
    print(f"\nwrote {args.workload}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Train the named queries' unmerged models on their cameras' labelled frames, measure them and rewrite
    workload.json after each one."""
    from gemel_engine.train import default_recipe
    from gemel_engine.workload import Workload, camera_frames, train_unmerged

    workload = Workload.load(args.workload, check_weights=False)
    entries = [workload.query(name) for name in dict.fromkeys(args.query)]
    frames = {}
    trained = []
    for entry in entries:
        overrides = {key: value for key, value in (("steps", args.steps), ("batch_size", args.batch_size),
                                                   ("lr", args.lr), ("seed", args.seed)) if value is not None}
        recipe = dataclasses.replace(default_recipe(entry.query.task), device=args.device, **overrides)
        camera = entry.query.camera
        if camera not in frames:
            print(f"reading camera {camera}...", file=sys.stderr, flush=True)
            frames[camera] = camera_frames(workload, workload.camera(camera))
        print(f"training {entry.name} ({entry.query.arch}, {recipe.steps} steps of {recipe.batch_size} frames)...",
              file=sys.stderr, flush=True)

        def report(event: dict, steps: int = recipe.steps) -> None:
            if event["type"] == "train.step" and (event["step"] % 50 == 0 or event["step"] == steps):
                print(f"  step {event['step']} of {steps}, loss {event['loss']:.3f}", file=sys.stderr, flush=True)

        done, result, _ = train_unmerged(workload, entry, frames[camera], recipe, progress=report)
        workload = workload.with_queries(tuple(done if e.name == done.name else e for e in workload.queries))
        workload.save(args.workload)
        trained.append(done)
        print(f"  trained in {result.seconds:.0f} s; weights {workload.weights_path(done)}", file=sys.stderr,
              flush=True)
    _print_unmerged(workload.with_queries(tuple(trained)))
    print(f"\nwrote {args.workload}")
    return 0


class _MergeReporter:
    """Turns search events into a one-line progress display on a terminal, or plain lines otherwise."""

    def __init__(self, *, quiet: bool) -> None:
        self.quiet = quiet
        self.live = sys.stderr.isatty()

    def __call__(self, event: dict) -> None:
        if self.quiet:
            return
        kind = event["type"]
        if kind == "round.started":
            models = ", ".join(event["trial_models"])
            line = f"round {event['round']}: trying {event['trial_layers']} shared layers of {models}"
            if event.get("left_out"):
                line += f" (left out to fit the time left: {', '.join(event['left_out'])})"
            if event.get("continued_from_round"):
                line += f", continuing from round {event['continued_from_round']}'s weights"
        elif kind == "trial.skipped":
            line = (f"skipped a trial of {event['trial_layers']} layers of {', '.join(event['trial_models'])}: it "
                    f"needs about {event['estimated_seconds'] / 60:.1f} min, {event['seconds_left'] / 60:.1f} left")
        elif kind == "round.finished":
            verdict = "accepted" if event["accepted"] else f"rejected ({event['stopped']})"
            if event.get("hopeless"):
                verdict += f"; could not get there: {', '.join(event['hopeless'])}"
            unsure = sorted(n for n, low in event.get("lower_margin", {}).items()
                            if low < 0 <= event["accuracy"][n] - event["required"][n])
            if unsure:
                verdict += f"; met on validation but not at {event['accept_confidence']:.0%}: {', '.join(unsure)}"
            line = (
                f"round {event['round']}: {verdict} after {event['steps']} steps; "
                f"saved {mib(event['bytes_saved'])} MiB at {event['elapsed']:.0f}s"
            )
        elif kind == "round.progress":
            accuracies = ", ".join(
                f"{name} {value:.3f}/{event['required'][name]:.3f}" for name, value in sorted(event["accuracy"].items())
            )
            left = "" if event["budget_left"] is None else f", {event['budget_left'] / 60:.1f} min of budget left"
            eta = event.get("round_seconds_left")
            ends = "" if eta is None else f", round done in at most ~{eta / 60:.1f} min"
            line = f"round {event['round']}: step {event['steps']} of {event['max_steps']}; {accuracies}{ends}{left}"
        elif kind == "round.cut":
            line = (f"round {event['round']}: cut ({event['stopped']}) after {event['steps']} of "
                    f"{event['max_steps']} steps")
        elif kind == "search.preparing":
            counted = "" if event.get("total") is None else f" ({event['done']} of {event['total']})"
            line = f"preparing: {event['stage']}{counted}"
        elif kind == "search.started":
            start = "resuming" if event["resumed"] else "starting"
            line = f"search ({event['strategy']}): {start}, {event['queued_trials']} trials queued"
        else:
            return
        if self.live:
            same_line = kind in ("search.preparing", "round.started", "round.progress")
            print(f"\r\033[K{line}", end="" if same_line else "\n", file=sys.stderr, flush=True)
        else:
            print(line, file=sys.stderr, flush=True)


def _accept_confidence(text: str) -> float | None:
    """Return ``--accept-confidence``'s value (``accuracy.parse_accept_confidence``).

    Raises:
        argparse.ArgumentTypeError: it is neither ``point`` nor a confidence in [0.5, 1).
    """
    try:
        return parse_accept_confidence(text)
    except GemelError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def cmd_merge(args: argparse.Namespace) -> int:
    """Run (or resume) a merge search over a workload."""
    from gemel_engine.search import RetrainBudget, SearchConfig, run_search
    from gemel_engine.workload import Workload

    workload = Workload.load(args.workload)
    _warn_no_better_than_chance(workload)
    config = SearchConfig(
        strategy=args.strategy, budget_minutes=args.budget_minutes, device=args.device,
        round_budget=RetrainBudget(max_steps=args.round_steps), accept_confidence=args.accept_confidence,
        warm_start=args.warm_start,
    )
    result = run_search(workload, args.out, config, progress=_MergeReporter(quiet=args.json))
    if args.json:
        _print_json(result.to_json())
        return 0
    print(format_table(
        ["query", "unmerged val", "val target", "merged val", "meets (val)", "unmerged test", "test target",
         "merged test [95% interval]", "meets (test)"],
        [
            [q["name"], f"{q['unmerged_accuracy']:.3f}", f"{q['target']:.3f}", f"{q['merged_accuracy']:.3f}",
             "yes" if q["meets_target"] else "NO", f"{q['unmerged_test_accuracy']:.3f}", _target_cell(q["test_target"]),
             _accuracy_cell(q), "yes" if q["meets_target_on_test"] else "NO"]
            for q in result.queries
        ],
    ))
    print("val: the frames the search decided on; test: held-out frames no training or decision has seen")
    print()
    shared = len(result.plan.instances)
    print(f"strategy {result.strategy} ({result.status}): {result.rounds} rounds, {shared} shared instances")
    print(
        f"parameters: {mib(result.unmerged_param_bytes)} MiB -> {mib(result.merged_param_bytes)} MiB "
        f"(saved {percent(result.savings_fraction)})"
    )
    print(f"outcome: {result.outcome}")
    print(f"bundle: {result.bundle}")
    return 0


def cmd_agent(args: argparse.Namespace) -> int:
    """Run the edge agent until SIGTERM/SIGINT (docs/agent-protocol.md)."""
    from gemel_engine.runtime.agent import AgentConfig, run_agent

    budget = None if args.budget_mb is None else int(args.budget_mb * 1024 * 1024)
    state_dir = args.state_dir or Path("var") / "agent" / args.node
    return run_agent(AgentConfig(server=args.server, token=args.token, node=args.node, budget_bytes=budget,
                                 state_dir=state_dir, device=args.device, metrics_port=args.metrics_port,
                                 metrics_host=args.metrics_host))


def cmd_bench(args: argparse.Namespace) -> int:
    """Run a benchmark by name."""
    from gemel_engine.bench import run_benchmark

    return run_benchmark(args.benchmark, args.bench_args)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of ``python -m gemel_engine``."""
    prog = "gemel" if Path(sys.argv[0]).name == "gemel" else "python -m gemel_engine"
    parser = _Parser(prog=prog, description="Gemel: merge video-analytics DNNs to fit one GPU.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    model_help = "a model as NAME=ARCH[:NUM_CLASSES]; repeat for each model"

    analyze = commands.add_parser("analyze", help="which layers of the models can share weights, and what it saves")
    analyze.add_argument("--model", action="append", metavar="NAME=ARCH[:NUM_CLASSES]", help=model_help)
    analyze.add_argument("--workload", type=Path, help="analyse the queries of a workload.json instead")
    analyze.add_argument("--mode", choices=MATCH_MODES, default="exact", help="layer matching (default: exact)")
    analyze.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    analyze.add_argument("--plan-out", type=Path, help="write the plan that shares every shareable layer")
    analyze.add_argument("--top", type=int, default=10, help="instances to list in the table (default: 10)")
    analyze.set_defaults(handler=cmd_analyze)

    merge_apply = commands.add_parser("merge-apply", help="apply a plan to models and write a bundle (no retraining)")
    merge_apply.add_argument(
        "--model", action="append", required=True, metavar="NAME=ARCH:NUM_CLASSES[@WEIGHTS]",
        help="a model, optionally with its weights (.safetensors, .pt, .pth); repeat for each model",
    )
    merge_apply.add_argument("--plan", type=Path, required=True, help="plan JSON (from analyze --plan-out)")
    merge_apply.add_argument("--out", type=Path, required=True, help="bundle directory to write")
    merge_apply.add_argument("--warm-start", choices=WARM_STARTS, default="first",
                             help="initial shared weights: the first member's or the members' mean")
    merge_apply.add_argument("--overwrite", action="store_true", help="replace an existing bundle directory")
    merge_apply.set_defaults(handler=cmd_merge_apply)

    inspect = commands.add_parser("inspect", help="what a bundle holds and saves")
    inspect.add_argument("bundle", type=Path, help="bundle directory, or a merge job directory (its final bundle)")
    inspect.add_argument("--json", action="store_true", help="print one JSON object")
    inspect.set_defaults(handler=cmd_inspect)

    merge = commands.add_parser(
        "merge", help="search for the merge that saves most while every query keeps its target"
    )
    merge.add_argument("--workload", type=Path, required=True, help="workload.json (from demo build or your own)")
    merge.add_argument("--out", type=Path, required=True, help="job directory: bundles, checkpoints, result.json")
    merge.add_argument("--strategy", default="gemel", help="none, all, stem, gemel or gemel+ (default: gemel)")
    merge.add_argument("--budget-minutes", type=float, help="wall-clock budget of the whole search")
    merge.add_argument("--round-steps", type=int, default=120, help="most joint-retraining steps per round")
    merge.add_argument(
        "--accept-confidence", type=_accept_confidence, default=DEFAULT_ACCEPT_CONFIDENCE, metavar="C",
        help="accept a round only when its validation frames show every target met at this one-sided confidence, "
             "in [0.5, 1), or 'point' to let the point figure decide (default: point)",
    )
    merge.add_argument("--warm-start", choices=WARM_STARTS,
                       help="how a trial's shared layers start: the first member's weights or the members' mean "
                            "(default: the strategy's; both start from the first)")
    merge.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    merge.add_argument("--json", action="store_true", help="print one final JSON object")
    merge.set_defaults(handler=cmd_merge)

    measure = commands.add_parser(
        "measure", help="measure every query's unmerged model on validation and held-out test frames"
    )
    measure.add_argument("--workload", type=Path, required=True,
                         help="workload.json to measure and rewrite (also upgrades a version 1 file)")
    measure.set_defaults(handler=cmd_measure)

    train = commands.add_parser(
        "train", help="train queries' unmerged models on their cameras' labelled frames (annotations or ground truth)"
    )
    train.add_argument("--workload", type=Path, required=True, help="workload.json to train in and rewrite")
    train.add_argument("--query", action="append", required=True, metavar="NAME", help="a query to train; repeat")
    train.add_argument("--steps", type=int, help="optimizer steps (default: 250, 300 for a detector)")
    train.add_argument("--batch-size", type=int, help="frames per step (default: 64, 8 for a detector)")
    train.add_argument("--lr", type=float, help="peak learning rate (default: 0.001, 0.02 for a detector)")
    train.add_argument("--seed", type=int, help="seed of the initial weights and the batches (default: 0)")
    train.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    train.set_defaults(handler=cmd_train)

    demo = commands.add_parser("demo", help="demo workloads from synthetic cameras")
    demo_commands = demo.add_subparsers(dest="demo_command", required=True, parser_class=_Parser)
    demo_build = demo_commands.add_parser(
        "build", help="generate cameras, train every unmerged model, write workload.json"
    )
    demo_build.add_argument("--scale", choices=tuple(SCALES), default="tiny", help="workload size")
    demo_build.add_argument("--out", type=Path, required=True, help="folder for workload.json, weights and frames")
    demo_build.set_defaults(handler=cmd_demo_build)

    agent = commands.add_parser("agent", help="run the edge agent: serve what the dashboard deploys to this node")
    agent.add_argument("--server", required=True, help="dashboard URL, e.g. http://127.0.0.1:8000")
    agent.add_argument("--token", default=os.environ.get("GEMEL_AGENT_TOKEN"),
                       help="agent token (default: $GEMEL_AGENT_TOKEN)")
    agent.add_argument("--node", required=True, help="this node's name")
    agent.add_argument("--budget-mb", type=float, help="device memory budget in MiB")
    agent.add_argument("--state-dir", type=Path, help="state.json and bundles (default: var/agent/NODE)")
    agent.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    agent.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port (0: any free port)")
    agent.add_argument("--metrics-host", default="127.0.0.1", help="address of the Prometheus endpoint")
    agent.set_defaults(handler=cmd_agent)

    bench = commands.add_parser("bench", help="run a benchmark (python -m gemel_engine bench NAME --help)")
    bench.add_argument("benchmark", help="benchmark name, e.g. analyze")
    bench.add_argument("bench_args", nargs=argparse.REMAINDER, help="the benchmark's own arguments")
    bench.set_defaults(handler=cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the process exit status (0 on success, 2 on bad input)."""
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (GemelError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
