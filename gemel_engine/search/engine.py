"""The merge search: run a strategy's trials with joint retraining, keep what meets every target.

Every accepted configuration is written as a bundle at once (usable before the search ends) and the
savings timeline grows with it. Decisions read validation frames only; each saved configuration also records
every query's accuracy on its held-out test frames, with 95% intervals, for reports and the deploy gate, and
nothing inside the search reads those. After every round the search state (the strategy's queue of trials, the
accepted plan, the timeline) is checkpointed in the job directory; starting again with the same
directory resumes after the last finished round. A cancellation token stops it at the next safe point.

A trial the strategy derived from a failed trial (a part of it: without some models, or a half) is run right
after it and continues from the weights that round trained, not from the accepted models again: its models
were on their way and its shared layers already trained for sharing (``round.started`` names the round it
continues). Those weights are held in memory only, so a resumed search starts such a trial afresh.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from gemel_engine.accuracy import (
    Measurement,
    TargetTest,
    check_accept_confidence,
    measure_sets,
    measured_predictions,
)
from gemel_engine.bundle import MANIFEST_NAME, ModelRecipe, load_bundle, save_bundle
from gemel_engine.errors import GemelError
from gemel_engine.events import CancelToken, Progress, emit
from gemel_engine.fileio import read_versioned_json, write_json_atomically
from gemel_engine.layers import analyze_models, layer_parameters
from gemel_engine.memory import footprint, tensor_bytes
from gemel_engine.modelset import ModelSet
from gemel_engine.plan import MergeInstance, MergePlan
from gemel_engine.search.retrain import (
    QueryData,
    QueryPace,
    RetrainBudget,
    check_subset,
    joint_retrain,
    measure_pace,
    teacher_logits,
)
from gemel_engine.search.strategies import Strategy, Trial, _without_models, get_strategy
from gemel_engine.sharing import WARM_STARTS, WarmStart, apply_plan, resolve_layer
from gemel_engine.train import LabelledFrames, resolve_device
from gemel_engine.workload import QueryEntry, QueryFrames, Workload, camera_frames, query_data

STATE_NAME = "state.json"
RESULT_NAME = "result.json"
STATE_FORMAT = "gemel-search-state"
STATE_VERSION = 1
# The one-sided confidence at which a round's final validation measurement must show every target met; None lets
# the point figure decide. On the hard demo a 90% rule accepted nothing within 7 minutes where the point rule
# saved 42.6 MiB (the README's acceptance table), so the stricter rule is the operator's choice.
DEFAULT_ACCEPT_CONFIDENCE: float | None = None


class SearchError(GemelError):
    """A search that cannot start or resume (bad state, mismatched strategy, unmeasured queries)."""


@dataclass(frozen=True)
class SearchConfig:
    """What to search and how much effort to spend."""

    # Registered strategy name (none, all, stem, gemel, gemel+).
    strategy: str = "gemel"
    # Wall-clock budget of the whole search in minutes (None: until the queue is empty).
    budget_minutes: float | None = None
    # Budget of each round of joint retraining.
    round_budget: RetrainBudget = field(default_factory=RetrainBudget)
    # Seed of batch sampling in retraining.
    seed: int = 0
    # "auto", "cpu" or "cuda[:N]".
    device: str = "auto"
    # A round is accepted only when its final validation measurement shows every target met at this one-sided
    # confidence (a paired block bootstrap against the unmerged model; ``accuracy.TargetTest``). None: the point
    # figure decides, so a merged model that meets its target on validation by noise alone is accepted.
    accept_confidence: float | None = DEFAULT_ACCEPT_CONFIDENCE
    # How a trial's shared layers start ("first" member's weights or the members' "mean"); None: the strategy's.
    warm_start: WarmStart | None = None

    def __post_init__(self) -> None:
        get_strategy(self.strategy)
        if self.warm_start is not None and self.warm_start not in WARM_STARTS:
            raise SearchError(f"warm_start must be one of {', '.join(WARM_STARTS)}, got {self.warm_start!r}")
        try:
            check_accept_confidence(self.accept_confidence)
        except GemelError as exc:
            raise SearchError(f"accept_confidence: {exc}") from None
        if self.budget_minutes is not None and (not math.isfinite(self.budget_minutes) or self.budget_minutes <= 0):
            raise SearchError(f"budget_minutes must be a positive number, got {self.budget_minutes!r}")
        resolve_device(self.device)


@dataclass
class SearchResult:
    """What a search found."""

    strategy: str
    status: str
    unmerged_param_bytes: int
    merged_param_bytes: int
    queries: list[dict[str, Any]]
    bundle: str
    timeline: list[list[float]]
    rounds: int
    plan: MergePlan
    # The round the budget or a cancellation cut short (its steps, last check and time), or None.
    unfinished_round: dict[str, Any] | None = None
    # One sentence for the operator: what the search ended with and, when it saved nothing, why.
    outcome: str = ""

    @property
    def savings_fraction(self) -> float:
        """Return the parameter bytes saved as a fraction of the unmerged bytes."""
        return 1 - self.merged_param_bytes / self.unmerged_param_bytes if self.unmerged_param_bytes else 0.0

    def to_json(self) -> dict[str, Any]:
        """Return the result as JSON-ready data (the CLI's ``--json`` object)."""
        return {
            "strategy": self.strategy,
            "status": self.status,
            "unmerged_param_bytes": self.unmerged_param_bytes,
            "merged_param_bytes": self.merged_param_bytes,
            "savings_fraction": self.savings_fraction,
            "queries": self.queries,
            "bundle": self.bundle,
            "timeline": self.timeline,
            "rounds": self.rounds,
            "shared_instances": len(self.plan.instances),
            "unfinished_round": self.unfinished_round,
            "outcome": self.outcome,
        }


@dataclass
class _State:
    strategy: str
    queue: list[Trial]
    accepted: MergePlan
    timeline: list[list[float]]
    elapsed: float
    rounds: int
    bundles: list[dict[str, Any]]

    def to_json(self) -> dict[str, Any]:
        mode = self.accepted.mode
        return {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "strategy": self.strategy,
            "queue": [MergePlan(tuple(trial), mode).to_dict() for trial in self.queue],
            "accepted": self.accepted.to_dict(),
            "timeline": self.timeline,
            "elapsed": self.elapsed,
            "rounds": self.rounds,
            "bundles": self.bundles,
        }

    @classmethod
    def read(cls, path: Path) -> _State:
        return cls.from_json(read_versioned_json(path, version=STATE_VERSION, what="search state", error=SearchError),
                             path)

    @classmethod
    def from_json(cls, data: Any, where: Path) -> _State:
        if not isinstance(data, dict) or data.get("format") != STATE_FORMAT or data.get("version") != STATE_VERSION:
            raise SearchError(f"{where}: not a search state this build can resume")
        try:
            return cls(
                strategy=data["strategy"],
                queue=[list(MergePlan.from_dict(plan).instances) for plan in data["queue"]],
                accepted=MergePlan.from_dict(data["accepted"]),
                timeline=[[float(t), float(b)] for t, b in data["timeline"]],
                elapsed=float(data["elapsed"]),
                rounds=int(data["rounds"]),
                bundles=list(data["bundles"]),
            )
        except (KeyError, TypeError, ValueError, GemelError) as exc:
            raise SearchError(f"{where}: damaged search state ({exc})") from None


@dataclass(frozen=True)
class _FailedRound:
    """A round that failed this session and the weights it trained, for the trial derived from it."""

    round: int
    trial: Trial
    models: ModelSet


def _part_of(trial: Trial, whole: Trial) -> bool:
    """Return whether every instance of ``trial`` shares a subset of the layers of one instance of ``whole``."""
    wholes = [frozenset(instance.members) for instance in whole]
    return all(any(frozenset(instance.members) <= members for members in wholes) for instance in trial)


def _affected(plan: MergePlan, trial: Trial) -> list[str]:
    parent: dict[str, str] = {}

    def find(name: str) -> str:
        while parent.setdefault(name, name) != name:
            name = parent[name]
        return name

    for instance in (*plan.instances, *trial):
        first = instance.members[0].model
        for member in instance.members[1:]:
            parent[find(member.model)] = find(first)
    roots = {find(m.model) for instance in trial for m in instance.members}
    return sorted(name for name in parent if find(name) in roots)


def size_trial_to_time(
    trial: Trial, seconds_left: float, *, estimate: Callable[[Trial], float], saving: Callable[[Trial], int]
) -> tuple[Trial, list[str]]:
    """Return ``trial`` without the models its round cannot afford, and the models left out, in order.

    While ``estimate(trial)`` (seconds its round takes) exceeds ``seconds_left``, the model whose leaving cuts the
    most seconds per byte of lost ``saving`` is left out (its layers leave every instance; an instance left with
    one member goes). A round's cost grows with the models it retrains, not with the layers they share, so
    leaving out models, not layers, is what makes a round shorter. The trial comes back empty when nothing fits.
    """
    left_out: list[str] = []
    while trial and (cost := estimate(trial)) > seconds_left:
        saved = saving(trial)

        def price(model: str, trial: Trial = trial, cost: float = cost, saved: int = saved) -> float:
            reduced = _without_models(trial, frozenset({model}))
            cut = cost - (estimate(reduced) if reduced else 0.0)
            return cut / max(1, saved - (saving(reduced) if reduced else 0))

        costliest = max(sorted({m.model for instance in trial for m in instance.members}), key=price)
        trial = _without_models(trial, frozenset({costliest}))
        left_out.append(costliest)
    return trial, left_out


def _trial_saving(models: ModelSet, trial: Trial) -> int:
    """Return the parameter bytes ``trial`` saves: each instance's layer bytes times its members beyond the first."""
    lookup = models.as_dict()
    saving = 0
    for instance in trial:
        layer = resolve_layer(lookup, instance.members[0])
        size = sum(tensor_bytes(p) for p in layer_parameters(layer).values())
        saving += size * (len(instance.members) - 1)
    return saving


def search_outcome(
    status: str,
    rounds: int,
    saved_bytes: int,
    seconds: float,
    unfinished: dict[str, Any] | None,
    skipped: dict[str, float] | None = None,
) -> str:
    """Return one sentence saying how a search ended: what it saved and, when a round was cut, where, and, when
    nothing was saved, about how many minutes the cut round would have needed; when the search stopped because no
    trial left fitted the time left, ``skipped`` (the smallest skipped trial's ``estimated_seconds`` and the
    ``seconds_left`` then) says so."""
    saving = f"{saved_bytes / 2**20:.1f} MiB saved" if saved_bytes > 0 else "nothing saved"
    ended = {"finished": "every trial was tried", "cancelled": "cancelled", "budget": "the budget ended"}.get(
        status, status)
    if unfinished is None and status == "budget" and skipped is not None:
        return (f"stopped after {rounds} round(s) in {seconds / 60:.1f} min: no trial left fits the "
                f"{skipped['seconds_left'] / 60:.1f} min that remained (the smallest needs about "
                f"{math.ceil(skipped['estimated_seconds'] / 60)} min), so {saving}")
    if unfinished is None and rounds == 0 and status == "budget":
        return (f"{ended} before round 1 could start: loading the frames and measuring the unmerged models took "
                f"the whole {seconds / 60:.1f} min, so {saving}; give it well over that")
    if unfinished is None:
        return f"{ended} after {rounds} round(s) in {seconds / 60:.1f} min: {saving}"
    steps, most = int(unfinished["steps"]), int(unfinished["max_steps"])
    where = f"inside round {unfinished['round']} after {steps} of {most} steps ({float(unfinished['seconds']):.0f} s)"
    if saved_bytes > 0 or status == "cancelled":
        return f"{ended} {where}: {saving} by the configurations accepted before it"
    if steps == 0:
        spent = float(unfinished["started_at"]) + float(unfinished["seconds"])
        return f"{ended} {where}, before its first step, so {saving}; give it well over {math.ceil(spent / 60)} min"
    per_step = float(unfinished["seconds"]) / steps
    needed = float(unfinished["started_at"]) + per_step * most
    return (f"{ended} {where}, so {saving}; a budget of about {math.ceil(needed / 60)} min would let this round "
            f"run all {most} steps")


def round_seconds_left(seconds: float, steps: int, max_steps: int) -> float | None:
    """Return about how many seconds a round needs to run its last steps (up to ``max_steps``), at the pace of
    its first ``steps`` (which took ``seconds``, checks included), rounded to a tenth; 0.0 at or past the cap.
    A round ends sooner when its targets are met or it looks hopeless, so this is an upper estimate.

    Returns:
        The estimate, or None before the first step (no pace yet).
    """
    if steps <= 0:
        return None
    return round(max(0, max_steps - steps) * seconds / steps, 1)


class MergeSearch:
    """One search job over a workload, in a job directory."""

    def __init__(
        self,
        workload: Workload,
        out_dir: str | Path,
        config: SearchConfig,
        *,
        progress: Progress | None = None,
        cancel: CancelToken | None = None,
    ) -> None:
        missing = [e.name for e in workload.queries if e.required_accuracy is None or e.unmerged_test is None]
        if missing:
            raise SearchError(
                f"queries without measured unmerged accuracies on validation and test frames: {', '.join(missing)}"
            )
        self.workload = workload
        # Absolute, so every path a result or event names can be read from any working directory.
        self.out_dir = Path(out_dir).resolve()
        self.config = config
        self.strategy: Strategy = get_strategy(config.strategy)
        self.warm_start: WarmStart = config.warm_start or self.strategy.options.warm_start
        self.progress = progress
        self.cancel = cancel or CancelToken()
        self.device = resolve_device(config.device)
        self.recipes = {e.name: ModelRecipe(e.query.arch, e.recipe_args()) for e in workload.queries}
        self.round_budget = dataclasses.replace(config.round_budget, distill=self.strategy.options.distill)
        # Held-out test frames per query: measured for reports only, never read by a decision.
        self._test_frames: dict[str, LabelledFrames] = {}
        # (validation, test) measurements of each query's current weights; a round forgets its affected queries.
        self._measured: dict[str, tuple[Measurement, Measurement]] = {}
        # The round this session's budget or a cancellation cut short, if any.
        self._unfinished: dict[str, Any] | None = None
        # The longest a round's closing work took this session (the final validation of a round, then measuring
        # and saving an accepted configuration): rounds end this long before the budget, so the search keeps it.
        self._closing_seconds = 0.0
        # Each query's measured cost in a round, timed before the first round of a search with a budget.
        self._paces: dict[str, QueryPace] = {}
        # The models the current trial left out to fit the time left (for its round.started event).
        self._left_out: list[str] = []
        # Steps the rounds accepted this session took from a fresh start; once no trial fits at full steps, trials
        # are sized to the most of these instead (a round that then runs long is cut at the deadline and reported).
        self._accepted_steps: list[int] = []
        self._sizing_steps: int | None = None
        # The smallest trial skipped in the last pass over the queue, when the search stopped for that.
        self._skipped: dict[str, float] | None = None
        # The round just rejected, whose trained weights the trial derived from it continues from.
        self._failed: _FailedRound | None = None

    # -- set-up -----------------------------------------------------------------------------------

    def _preparing(self, stage: str, done: int | None = None, total: int | None = None) -> None:
        """Report a set-up stage (``search.preparing``) so the time before the first round is not silent."""
        emit(self.progress, "search.preparing", stage=stage, done=done, total=total)

    def _unmerged(self) -> ModelSet:
        self._preparing(f"loading the {len(self.workload.queries)} unmerged models")
        return ModelSet({e.name: self.workload.load_model(e) for e in self.workload.queries}).to(self.device)

    def _query_data(self, unmerged: ModelSet | None) -> dict[str, QueryData]:
        frames = {}
        cameras = self.workload.cameras
        for index, camera in enumerate(cameras, 1):
            self._preparing(f"reading the frames of camera {camera.name}", index, len(cameras))
            frames[camera.name] = camera_frames(self.workload, camera)
        data = {}
        most = self.round_budget.check_frames
        queries = self.workload.queries
        for index, entry in enumerate(queries, 1):
            self._preparing(f"labelling the frames of {entry.name}", index, len(queries))
            labelled = query_data(self.workload, entry, frames[entry.query.camera])
            logits = None
            if self.strategy.options.distill > 0 and not entry.query.task.is_detection:
                teacher = unmerged[entry.name] if unmerged is not None else self.workload.load_model(entry)
                logits = teacher_logits(teacher.to(self.device), labelled.train)
            required = entry.required_accuracy or 0.0
            data[entry.name] = QueryData(
                entry.name, entry.query.task, labelled.train, labelled.val, required, logits,
                check_subset(labelled.val, most), self._acceptance(entry, required, labelled, unmerged),
            )
            self._test_frames[entry.name] = labelled.test
        return data

    def _acceptance(
        self, entry: QueryEntry, required: float, labelled: QueryFrames, unmerged: ModelSet | None
    ) -> TargetTest | None:
        """Return how the query's rounds are judged: None (the point figure) without an acceptance confidence;
        otherwise at that confidence, paired with the unmerged model's predictions on the validation frames when
        the target is relative to it (measured here the one way models are measured, on a copy)."""
        confidence = self.config.accept_confidence
        if confidence is None:
            return None
        relative = entry.query.target.relative
        if relative is None:
            return TargetTest(required, confidence)
        self._preparing(f"predicting {entry.name}'s unmerged model on its validation frames")
        model = unmerged[entry.name] if unmerged is not None else self.workload.load_model(entry)
        (reference,) = measured_predictions(copy.deepcopy(model).to(self.device), (labelled.val,),
                                            entry.query.task, calibration=labelled.train)
        return TargetTest(required, confidence, tuple(reference), relative)

    def _fresh_state(self, models: ModelSet) -> _State:
        candidates = analyze_models(models.as_dict(), mode=self.strategy.options.mode).instances
        archs = {e.name: e.query.arch for e in self.workload.queries}
        queue = self.strategy.initial_queue(candidates, archs)
        empty = MergePlan((), self.strategy.options.mode, {"strategy": self.strategy.name})
        return _State(self.strategy.name, queue, empty, [[0.0, 0.0]], 0.0, 0, [])

    def _load_state(self) -> _State | None:
        path = self.out_dir / STATE_NAME
        if not path.exists():
            return None
        state = _State.read(path)
        if state.strategy != self.strategy.name:
            raise SearchError(
                f"{self.out_dir} holds a {state.strategy!r} search; resume it with that strategy or use a new directory"
            )
        return state

    def _save_state(self, state: _State) -> None:
        write_json_atomically(self.out_dir / STATE_NAME, state.to_json())

    def _save_config(
        self, models: ModelSet, state: _State, data: dict[str, QueryData], *, announce: bool = False
    ) -> dict[str, Any]:
        index = len(state.bundles)
        relative = Path("bundles") / f"config-{index:03d}"
        path = self.out_dir / relative
        saved = footprint(models).saved_param_bytes
        measured = self._measure_all(models, data, announce=announce)
        save_bundle(
            models, state.accepted, path, recipes=self.recipes, overwrite=True,
            metadata={
                "strategy": self.strategy.name, "round": state.rounds, "saved_param_bytes": saved,
                "accuracies": {name: val.accuracy for name, (val, _) in measured.items()},
                "workload": self.workload.name,
                "required": {e.name: e.required_accuracy for e in self.workload.queries},
                "evaluation": {
                    name: {"val": val.to_json(), "test": test.to_json()} for name, (val, test) in measured.items()
                },
                "required_test": {e.name: e.required_test_accuracy for e in self.workload.queries},
                "unmerged_test": {
                    e.name: e.unmerged_test.to_json() for e in self.workload.queries if e.unmerged_test is not None
                },
            },
        )
        state.bundles.append(
            {"path": relative.as_posix(), "round": state.rounds, "saved_param_bytes": saved, "elapsed": state.elapsed}
        )
        return {**state.bundles[-1], "path": str(path)}

    # -- the search -------------------------------------------------------------------------------

    def run(self) -> SearchResult:
        """Run (or resume) the search until its queue is empty, its budget is spent or it is cancelled.

        Returns:
            The search result, also written to ``result.json`` in the job directory.

        Raises:
            SearchError: the job directory holds another strategy's or a damaged state.
            GemelError: the workload's frames, labels or weights cannot be loaded.
        """
        self.out_dir.mkdir(parents=True, exist_ok=True)
        session_start = time.monotonic()
        state = self._load_state()
        resumed = state is not None
        if state is not None and state.bundles:
            self._preparing(f"loading the configuration saved after round {state.rounds}")
            models = load_bundle(_bundle_path(self.out_dir, state.bundles[-1]), device=self.device).models
            data = self._query_data(None)
        else:
            models = self._unmerged()
            data = self._query_data(models)
        sized = models  # layer sizes never change, so the models the search starts from size every trial
        self.strategy.saving = lambda trial: _trial_saving(sized, trial)
        if state is None:
            state = self._fresh_state(models)
            saving_started = time.monotonic()
            self._recorded_unmerged(data)
            self._save_config(models, state, data, announce=True)
            self._closing_seconds = time.monotonic() - saving_started
            self._save_state(state)
        base = state.elapsed
        deadline = None
        if self.config.budget_minutes is not None:
            deadline = session_start + self.config.budget_minutes * 60 - base
            self._paces = self._measure_paces(models, data)

        def elapsed() -> float:
            return base + time.monotonic() - session_start

        emit(self.progress, "search.started", strategy=self.strategy.name, resumed=resumed, rounds=state.rounds,
             queued_trials=len(state.queue), out_dir=str(self.out_dir))
        status = "finished"
        self._unfinished = None
        skipped = 0
        try:
            while state.queue:
                if self.cancel.cancelled:
                    status = "cancelled"
                    break
                if skipped >= len(state.queue):
                    if self._sizing_steps is not None or not self._accepted_steps:
                        status = "budget"
                        break
                    self._sizing_steps = max(self._accepted_steps)
                    skipped = 0
                    self._skipped = None
                fitting = deadline is not None and self.strategy.options.fit_trials_to_budget and self._paces
                if fitting and not self._fit_first_trial(models, state, data, deadline - time.monotonic()):
                    skipped += 1
                    continue
                rounds_end = None if deadline is None else deadline - self._closing_reserve(state, data)
                if rounds_end is not None and time.monotonic() >= rounds_end:
                    status = "budget"
                    break
                skipped = 0
                self._skipped = None
                finished = self._round(models, state, data, elapsed, rounds_end)
                if finished is None:
                    status = "cancelled" if self.cancel.cancelled else "budget"
                    break
                models = finished
        except Exception as exc:
            emit(self.progress, "search.failed", error=str(exc), rounds=state.rounds)
            raise
        result = self._result(models, state, data, status, elapsed())
        write_json_atomically(self.out_dir / RESULT_NAME, result.to_json())
        final_type = "search.cancelled" if status == "cancelled" else "search.finished"
        emit(self.progress, final_type, status=status, result=result.to_json())
        return result

    def _round(
        self,
        models: ModelSet,
        state: _State,
        data: dict[str, QueryData],
        elapsed: Callable[[], float],
        deadline: float | None,
    ) -> ModelSet | None:
        trial = state.queue[0]
        affected = _affected(state.accepted, trial)
        round_index = state.rounds + 1
        estimate = self._round_estimate(state.accepted, trial, data) if self._paces else None
        failed, self._failed = self._failed, None
        if failed is not None and not _part_of(trial, failed.trial):
            failed = None
        emit(self.progress, "round.started", round=round_index, trial_layers=len(trial),
             trial_models=sorted({m.model for i in trial for m in i.members}), affected=affected,
             estimated_seconds=None if estimate is None else round(estimate, 1), left_out=self._left_out,
             sized_for_steps=self._sizing_steps or self.round_budget.max_steps,
             continued_from_round=None if failed is None else failed.round)
        self._left_out = []
        candidate = copy.deepcopy(models)
        if failed is not None:
            # Every model this round retrains was retrained by the failed round (its trial is a part of that one,
            # over the same accepted plan); loading in place keeps the accepted plan's ties.
            for name in affected:
                candidate[name].load_state_dict(failed.models[name].state_dict())
        apply_plan(candidate, MergePlan(tuple(trial), state.accepted.mode), warm_start=self.warm_start)
        round_started = elapsed()
        round_clock = time.monotonic()
        required = {n: data[n].required for n in affected}

        def checked(steps: int, accuracies: dict[str, float]) -> None:
            now = time.monotonic()
            emit(self.progress, "round.progress", round=round_index, steps=steps,
                 max_steps=self.round_budget.max_steps, accuracy=accuracies, required=required, elapsed=elapsed(),
                 budget_left=None if deadline is None else max(0.0, deadline - now),
                 round_seconds_left=round_seconds_left(now - round_clock, steps, self.round_budget.max_steps))

        outcome = joint_retrain(
            candidate, affected, data, self.round_budget, seed=self.config.seed + round_index, cancel=self.cancel,
            deadline=deadline, on_check=checked,
        )
        closing_started = time.monotonic() - outcome.closing_seconds
        if outcome.stopped in ("cancelled", "deadline"):
            self._unfinished = {
                "round": round_index, "trial_layers": len(trial), "affected": affected, "steps": outcome.steps,
                "max_steps": self.round_budget.max_steps, "seconds": round(outcome.seconds, 3),
                "started_at": round(round_started, 3), "accuracy": outcome.check_accuracies, "required": required,
                "stopped": outcome.stopped,
            }
            emit(self.progress, "round.cut", **self._unfinished)
            return None
        state.rounds = round_index
        state.elapsed = elapsed()
        accepted = outcome.all_met
        if accepted:
            if failed is None:  # a continued round's steps say nothing of what a fresh trial needs
                self._accepted_steps.append(outcome.steps)
            models = candidate
            for name in affected:
                self._measured.pop(name, None)
            state.accepted = state.accepted.extended(trial)
            state.queue = state.queue[1:]
            record = self._save_config(models, state, data)
            state.timeline.append([round(state.elapsed, 3), float(record["saved_param_bytes"])])
        else:
            following = state.queue[1] if len(state.queue) > 1 else None
            derived = self.strategy.after_failure(trial, outcome, following)
            state.queue = derived + state.queue[1:]
            if derived:
                self._failed = _FailedRound(round_index, trial, candidate)
        self._save_state(state)
        self._closing_seconds = max(self._closing_seconds, time.monotonic() - closing_started)
        emit(
            self.progress, "round.finished", round=round_index, trial_layers=len(trial), accepted=accepted,
            accepted_layers=len(state.accepted.instances), accuracy=outcome.accuracies,
            initial_accuracy=outcome.initial_accuracies, check_accuracy=outcome.check_accuracies,
            required={n: data[n].required for n in affected}, steps=outcome.steps, stopped=outcome.stopped,
            bytes_saved=int(state.timeline[-1][1]), elapsed=state.elapsed,
            lower_margin={n: round(v, 4) for n, v in outcome.lower_margins.items()},
            accept_confidence=self.config.accept_confidence, false_stops=outcome.false_stops,
            hopeless=sorted(outcome.hopeless),
        )
        if accepted:
            emit(self.progress, "config.accepted", round=round_index,
                 bundle=str(_bundle_path(self.out_dir, state.bundles[-1])),
                 bytes_saved=state.bundles[-1]["saved_param_bytes"], elapsed=state.elapsed)
        return models

    def _recorded_unmerged(self, data: dict[str, QueryData]) -> None:
        """Take the unmerged models' validation and test figures the workload recorded (the one measurement
        procedure is deterministic, so measuring the same weights on the same frames again would repeat them)
        for every query whose recorded test figure covers the frames the search holds."""
        for entry in self.workload.queries:
            test, interval = entry.unmerged_test, entry.unmerged_val_interval
            if (test is None or interval is None or entry.unmerged_accuracy is None or entry.name not in data
                    or test.frames != len(self._test_frames[entry.name])):
                continue
            val = Measurement(entry.unmerged_accuracy, interval[0], interval[1], len(data[entry.name].val))
            self._measured[entry.name] = (val, test)

    def _measure_paces(self, models: ModelSet, data: dict[str, QueryData]) -> dict[str, QueryPace]:
        """Return each query's measured cost in a round (``measure_pace``), each timing reported as a set-up
        stage."""
        paces = {}
        for index, (name, query) in enumerate(data.items(), 1):
            self._preparing(f"timing the retraining of {name}", index, len(data))
            paces[name] = measure_pace(models[name], query, self.round_budget)
        return paces

    def _frames(self, name: str, data: dict[str, QueryData]) -> dict[str, int]:
        query = data[name]
        check = query.check if query.check is not None else query.val
        return {"check_frames": len(check), "val_frames": len(query.val), "test_frames": len(self._test_frames[name])}

    def _round_estimate(self, accepted: MergePlan, trial: Trial, data: dict[str, QueryData]) -> float:
        """Return about how long a round of ``trial`` takes, from the measured paces: with all its steps, or with
        as many as the longest round accepted so far once no trial fits at full steps."""
        return sum(self._paces[name].round_seconds(self.round_budget, steps=self._sizing_steps,
                                                   **self._frames(name, data))
                   for name in _affected(accepted, trial))

    def _closing_reserve(self, state: _State, data: dict[str, QueryData]) -> float:
        """Return how long before the budget the next round must end to measure and save what it accepts: the
        longest closing work seen so far, or the measured paces' estimate for the next trial if longer."""
        if not self._paces or not state.queue:
            return self._closing_seconds
        estimate = sum(self._paces[name].closing_seconds(val_frames=len(data[name].val),
                                                         test_frames=len(self._test_frames[name]))
                       for name in _affected(state.accepted, state.queue[0]))
        return max(self._closing_seconds, estimate)

    def _fit_first_trial(
        self, models: ModelSet, state: _State, data: dict[str, QueryData], seconds_left: float
    ) -> bool:
        """Size the queue's first trial to ``seconds_left`` (``size_trial_to_time``). Return False when nothing
        of it fits; it then moves to the back of the queue (a resumed search with more time tries it again)."""
        first = state.queue[0]
        trial, left_out = size_trial_to_time(
            first, seconds_left, estimate=lambda t: self._round_estimate(state.accepted, t, data),
            saving=lambda t: _trial_saving(models, t),
        )
        if not trial:
            needs = self._round_estimate(state.accepted, first, data)
            if self._skipped is None or needs < self._skipped["estimated_seconds"]:
                self._skipped = {"estimated_seconds": needs, "seconds_left": max(0.0, seconds_left)}
            emit(self.progress, "trial.skipped", trial_layers=len(first),
                 sized_for_steps=self._sizing_steps or self.round_budget.max_steps,
                 trial_models=sorted({m.model for i in first for m in i.members}),
                 estimated_seconds=round(needs, 1), seconds_left=round(max(0.0, seconds_left), 1))
            state.queue = [*state.queue[1:], first]
            return False
        if left_out:
            state.queue[0] = trial
            self._left_out = left_out
        return True

    def _measure_all(
        self, models: ModelSet, data: dict[str, QueryData], *, announce: bool = False
    ) -> dict[str, tuple[Measurement, Measurement]]:
        """Return each query's (validation, test) measurement of its current weights, measuring only the queries
        whose weights changed since they were last measured (each reported as a set-up stage with ``announce``:
        the start configuration's unmerged models)."""
        for index, (name, query) in enumerate(data.items(), 1):
            if name not in self._measured:
                if announce:
                    self._preparing(f"measuring the unmerged model {name}", index, len(data))
                val, test = measure_sets(
                    models[name], (query.val, self._test_frames[name]), query.task, calibration=query.train
                )
                self._measured[name] = (val, test)
        return {name: self._measured[name] for name in data}

    def _result(
        self, models: ModelSet, state: _State, data: dict[str, QueryData], status: str, seconds: float
    ) -> SearchResult:
        measured = footprint(models)
        evaluation = self._measure_all(models, data)
        queries = []
        for e in self.workload.queries:
            val, test = evaluation[e.name]
            queries.append({
                "name": e.name,
                "unmerged_accuracy": e.unmerged_accuracy,
                "target": e.required_accuracy,
                "merged_accuracy": val.accuracy,
                "meets_target": val.accuracy >= (e.required_accuracy or 0.0),
                "merged_val_interval": val.to_json()["interval"],
                **_test_report(
                    test.to_json(), e.required_test_accuracy, e.unmerged_test.accuracy if e.unmerged_test else None
                ),
            })
        saved = measured.naive_param_bytes - measured.param_bytes
        return SearchResult(
            strategy=self.strategy.name, status=status, unmerged_param_bytes=measured.naive_param_bytes,
            merged_param_bytes=measured.param_bytes, queries=queries,
            bundle=str(_bundle_path(self.out_dir, state.bundles[-1])),
            timeline=state.timeline, rounds=state.rounds, plan=state.accepted, unfinished_round=self._unfinished,
            outcome=search_outcome(status, state.rounds, saved, seconds, self._unfinished, self._skipped),
        )


def bundle_evaluation(metadata: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """Return the per-query ``{"val": measurement, "test": measurement}`` (``Measurement.to_json``) a search wrote
    into a saved configuration's bundle metadata; queries whose figures are missing or malformed are left out
    (bundles saved before test frames existed have none)."""
    evaluation = metadata.get("evaluation")
    if not isinstance(evaluation, dict):
        return {}
    found = {}
    for name, figures in evaluation.items():
        try:
            found[str(name)] = {part: Measurement.from_json(figures[part]).to_json() for part in ("val", "test")}
        except (GemelError, KeyError, TypeError):
            continue
    return found


def bundle_test_report(metadata: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Return, per query of a saved configuration's bundle metadata, the held-out test figures ``merge --json``
    reports: ``unmerged_test_accuracy``, ``test_target``, ``merged_test_accuracy``, ``merged_test_interval``
    (``[low, high]``), ``merged_test_frames`` and ``meets_target_on_test``. Empty for bundles saved before test
    frames existed."""
    evaluation = bundle_evaluation(metadata)
    required = metadata.get("required_test") if isinstance(metadata.get("required_test"), dict) else {}
    unmerged = metadata.get("unmerged_test") if isinstance(metadata.get("unmerged_test"), dict) else {}
    report = {}
    for name, figures in evaluation.items():
        target = required.get(name)
        target = float(target) if isinstance(target, int | float) and math.isfinite(target) else None
        try:
            unmerged_accuracy: float | None = Measurement.from_json(unmerged.get(name)).accuracy
        except GemelError:
            unmerged_accuracy = None
        report[name] = _test_report(figures["test"], target, unmerged_accuracy)
    return report


def _test_report(test: dict[str, Any], target: float | None, unmerged_accuracy: float | None) -> dict[str, Any]:
    return {
        "unmerged_test_accuracy": unmerged_accuracy,
        "test_target": target,
        "merged_test_accuracy": test["accuracy"],
        "merged_test_interval": test["interval"],
        "merged_test_frames": test["frames"],
        "meets_target_on_test": target is not None and test["accuracy"] >= target,
    }


def _bundle_path(out_dir: Path, record: dict[str, Any]) -> Path:
    """Return the absolute folder of a checkpointed configuration: its path is relative to the job directory
    (states written before that named it absolute or relative to the directory the search ran in)."""
    path = Path(record["path"])
    if path.is_absolute():
        return path
    in_job = out_dir / path
    return in_job if in_job.exists() or not path.exists() else path.resolve()


def saved_configs(out_dir: str | Path) -> list[dict[str, Any]]:
    """Return the configurations the search in ``out_dir`` has saved so far, in order (index 0: the start).

    Each is ``{"path", "round", "saved_param_bytes", "elapsed"}`` as checkpointed, with ``path`` absolute, so a
    configuration is listed only once the state naming it is on disk (a resumed search never rewrites it). Empty
    before the first checkpoint.

    Raises:
        SearchError: the checkpoint is unreadable or damaged.
    """
    job = Path(out_dir).resolve()
    path = job / STATE_NAME
    if not path.exists():
        return []
    return [{**record, "path": str(_bundle_path(job, record))} for record in _State.read(path).bundles]


def resolve_bundle(path: str | Path) -> Path:
    """Return the absolute bundle folder ``path`` names: a bundle itself, or a merge job directory (its latest
    saved configuration, which is the final one once the job has ended). A job directory that was moved still
    resolves: its checkpoint names configurations relative to itself.

    Raises:
        SearchError: ``path`` is neither a bundle nor a merge job directory, or its checkpoint or result is
            damaged.
    """
    folder = Path(path).resolve()
    if (folder / MANIFEST_NAME).is_file():
        return folder
    configs = saved_configs(folder)
    if configs:
        return Path(configs[-1]["path"])
    result = folder / RESULT_NAME
    if result.is_file():
        try:
            return _bundle_path(folder, {"path": str(json.loads(result.read_text())["bundle"])})
        except (ValueError, KeyError, TypeError, OSError):
            raise SearchError(f"{result}: not a merge result") from None
    raise SearchError(f"{folder}: neither a bundle (no {MANIFEST_NAME}) nor a merge job directory")


def run_search(
    workload: Workload,
    out_dir: str | Path,
    config: SearchConfig | None = None,
    *,
    progress: Progress | None = None,
    cancel: CancelToken | None = None,
) -> SearchResult:
    """Run or resume a merge search of ``workload`` in ``out_dir`` (see ``MergeSearch.run``)."""
    torch.manual_seed((config or SearchConfig()).seed)
    return MergeSearch(workload, out_dir, config or SearchConfig(), progress=progress, cancel=cancel).run()


__all__ = [
    "MergeInstance",
    "MergeSearch",
    "SearchConfig",
    "SearchError",
    "SearchResult",
    "bundle_evaluation",
    "resolve_bundle",
    "run_search",
    "saved_configs",
    "size_trial_to_time",
]
