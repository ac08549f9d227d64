"""Merge strategies: which trials to run, in which order, and what to try after a trial fails.

A strategy turns the workload's merge candidates into a queue of trials (each a list of instances) and,
after each round, rewrites the queue from the outcome. The queue is the search's whole state, so a
search resumes from a checkpointed queue.

- ``none``: no sharing (the baseline bundle).
- ``all``: share every shareable layer at once, retrain, keep it if every query meets its target.
- ``stem``: Mainstream-style: only a shared prefix of models of the same architecture; the longest prefix
  that keeps every target, found by halving.
- ``gemel``: the paper's heuristic: instances ordered by memory saved, consecutive instances with the
  same model set grouped into one trial; on failure, models meeting their target keep the trial (retry
  without the failing models' layers), otherwise halve the trial (the first half, then the second), unless
  the first half saves less than the next trial, then move on. The passing models' part of a failed trial
  continues from the weights that round trained (as every derived trial does, see ``search.engine``), so it is
  kept as trained, as in the authors' code, once its first check and final validation confirm it. Where it
  departs from the authors' code: the failing models' layers are not retried joined to it (a plan here never
  adds a member to an accepted instance).
- ``gemel+``: ours: shape-mode matching (more shareable layers), the first member's weights as the warm start (on
  ``hard`` the members' mean started five classifiers so far from their targets that 2 passed where 4 did from the
  first member's, and it saved a third less in the same budget), distillation from the unmerged models, and
  optimistic trial sizing: the paper's groups merged into trials of 1, 2, 4, 8... groups, so savings come as early
  as with ``gemel`` and easy workloads merge fully in a few rounds. A trial stopped as hopeless is retried without
  only the models whose trend over their last checks could not reach their targets (``gemel`` keeps it for the
  models that passed at the stopping check, a draw that drops models still on their way). On any other failure, like
  ``gemel``, the models that met their targets keep the trial; when none did, both halves are tried (always, where
  ``gemel`` moves on when the first half saves less than the next trial). Under a time budget, each trial is sized
  to the time left: models whose retraining (timed on this machine before the first round) would not finish are left
  out of it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from gemel_engine.errors import UsageError
from gemel_engine.layers import InstanceCandidate
from gemel_engine.plan import MatchMode, MergeInstance
from gemel_engine.registry import Registry
from gemel_engine.search.retrain import RetrainOutcome
from gemel_engine.sharing import WarmStart

Trial = list[MergeInstance]


@dataclass(frozen=True)
class StrategyOptions:
    """How a strategy matches layers and retrains them."""

    mode: MatchMode = "exact"
    warm_start: WarmStart = "first"
    distill: float = 0.0
    # Under a time budget, leave out of a trial the models whose retraining would not finish in the time left
    # (costliest per byte they save first), and skip a trial of which nothing fits, so a short budget still
    # delivers the savings it can afford instead of a round cut at the deadline.
    fit_trials_to_budget: bool = False


class Strategy(ABC):
    """A merge strategy: an initial queue of trials and how to rewrite it after each round."""

    name: str = ""
    options = StrategyOptions()
    # The parameter bytes a trial saves; the search sets it from the workload's models before the first round
    # (None: a strategy used on its own, without sizes).
    saving: Callable[[Trial], int] | None = None

    @abstractmethod
    def initial_queue(self, candidates: Sequence[InstanceCandidate], archs: dict[str, str]) -> list[Trial]:
        """Return the trials to run, first first, from the workload's candidates (largest savings first)."""

    def after_failure(self, trial: Trial, outcome: RetrainOutcome, next_trial: Trial | None = None) -> list[Trial]:
        """Return the trials to put at the front of the queue after ``trial`` failed, ``next_trial`` being the
        one queued after it (default: none)."""
        return []


def _without_models(trial: Trial, models: frozenset[str]) -> Trial:
    reduced = []
    for instance in trial:
        members = tuple(m for m in instance.members if m.model not in models)
        if len(members) >= 2:
            reduced.append(MergeInstance(members, instance.signature))
    return reduced


def _kept_for_passing_models(trial: Trial, outcome: RetrainOutcome) -> Trial:
    """Return the trial without the models that missed their targets when some models met theirs, else []."""
    models = {m.model for instance in trial for m in instance.members}
    failing = outcome.failing & models
    return _without_models(trial, failing) if failing and failing != models else []


def _retried_without_hopeless_models(trial: Trial, outcome: RetrainOutcome) -> Trial:
    """Return the trial without the models whose trend made its round hopeless, when the round stopped as hopeless
    with models below target that were still on their way; else []."""
    failing = outcome.failing & {m.model for instance in trial for m in instance.members}
    hopeless = outcome.hopeless & failing
    return _without_models(trial, hopeless) if hopeless and failing - hopeless else []


def _halves(trial: Trial) -> list[Trial]:
    middle = (len(trial) + 1) // 2
    return [part for part in (trial[:middle], trial[middle:]) if part]


class NoSharing(Strategy):
    """Share nothing: the unmerged baseline."""

    name = "none"

    def initial_queue(self, candidates: Sequence[InstanceCandidate], archs: dict[str, str]) -> list[Trial]:
        """Return no trials."""
        return []


class ShareAll(Strategy):
    """Share every shareable layer in one trial: the most memory if accuracy holds, and often it does not."""

    name = "all"

    def initial_queue(self, candidates: Sequence[InstanceCandidate], archs: dict[str, str]) -> list[Trial]:
        """Return one trial holding every candidate."""
        return [[c.to_instance() for c in candidates]] if candidates else []


class SharedStem(Strategy):
    """Share a prefix of the layers of models with the same architecture (Mainstream-style): quick, saves little."""

    name = "stem"

    def initial_queue(self, candidates: Sequence[InstanceCandidate], archs: dict[str, str]) -> list[Trial]:
        """Return, per architecture used by several models, the trial sharing all their common layers in
        module order (halved on failure, so the longest prefix that keeps the targets survives)."""
        trials = []
        for arch in sorted(set(archs.values())):
            same = frozenset(name for name, a in archs.items() if a == arch)
            if len(same) < 2:
                continue
            prefix = sorted(
                (c for c in candidates if {m.model for m in c.members} == same), key=lambda c: c.order
            )
            if prefix:
                trials.append([c.to_instance() for c in prefix])
        return trials

    def after_failure(self, trial: Trial, outcome: RetrainOutcome, next_trial: Trial | None = None) -> list[Trial]:
        """Return the first half of the prefix."""
        return [trial[: len(trial) // 2]] if len(trial) > 1 else []


class Gemel(Strategy):
    """The paper's heuristic: the largest layers first, in groups; a group that misses a target is halved."""

    name = "gemel"

    def initial_queue(self, candidates: Sequence[InstanceCandidate], archs: dict[str, str]) -> list[Trial]:
        """Return groups of consecutive candidates that share the same model set, largest savings first."""
        groups: list[Trial] = []
        previous: frozenset[str] | None = None
        for candidate in candidates:
            models = frozenset(m.model for m in candidate.members)
            if models != previous:
                groups.append([])
                previous = models
            groups[-1].append(candidate.to_instance())
        return groups

    def after_failure(self, trial: Trial, outcome: RetrainOutcome, next_trial: Trial | None = None) -> list[Trial]:
        """Keep the trial for the models that met their targets; otherwise halve it, as the authors' code does:
        the first half (the larger layers) is tried next and the second half after it, unless the first half
        saves less than ``next_trial``, in which case the failed trial is dropped and the search moves on."""
        kept = _kept_for_passing_models(trial, outcome)
        if kept:
            return [kept]
        if len(trial) < 2:
            return []
        first, second = trial[: len(trial) // 2], trial[len(trial) // 2 :]
        if next_trial and self.saving is not None and self.saving(first) < self.saving(next_trial):
            return []
        return [first, second]


class GemelPlus(Strategy):
    """Ours: also layers that differ only in stride, distillation, and groups that double after a success: the most
    memory soonest."""

    name = "gemel+"
    options = StrategyOptions(mode="shape", warm_start="first", distill=1.0, fit_trials_to_budget=True)

    def initial_queue(self, candidates: Sequence[InstanceCandidate], archs: dict[str, str]) -> list[Trial]:
        """Return the paper's groups merged into trials of 1, 2, 4, 8... groups, largest savings first.

        The first trial delivers savings as early as the paper's heuristic; each later trial takes twice
        as many groups, so an easy workload is fully merged in a logarithmic number of rounds.
        """
        groups = Gemel().initial_queue(candidates, archs)
        trials: list[Trial] = []
        size = 1
        while groups:
            trials.append([instance for group in groups[:size] for instance in group])
            groups = groups[size:]
            size *= 2
        return trials

    def after_failure(self, trial: Trial, outcome: RetrainOutcome, next_trial: Trial | None = None) -> list[Trial]:
        """Retry a trial stopped as hopeless without only the models whose trend could not reach their targets
        (the others, met or still on their way, keep the whole trial: who happened to pass at the stopping check
        is a draw); otherwise keep the trial for the models that met their targets when some did (one query that
        cannot share, a detector among classifiers, must not hold back the rest); otherwise split it in halves,
        larger savings first, and try both."""
        retried = _retried_without_hopeless_models(trial, outcome)
        if retried:
            return [retried]
        kept = _kept_for_passing_models(trial, outcome)
        if kept:
            return [kept]
        return _halves(trial) if len(trial) > 1 else []


STRATEGIES: Registry[type[Strategy]] = Registry("strategy", error=UsageError, duplicate_error=UsageError)


def register_strategy(factory: type[Strategy]) -> type[Strategy]:
    """Register a strategy class under its ``name``; return it (usable as a decorator).

    Raises:
        UsageError: the name is empty or already registered.
    """
    return STRATEGIES.register(factory)


def get_strategy(name: str) -> Strategy:
    """Return a new instance of the strategy called ``name``.

    Raises:
        UsageError: unknown name; the message lists the known ones.
    """
    return STRATEGIES.create(name)


def list_strategies() -> list[str]:
    """Return the registered strategy names, in registration order."""
    return STRATEGIES.names()


def describe_strategies() -> dict[str, str]:
    """Return each registered strategy's name and one-sentence description (its docstring, on one line)."""
    return {factory.name: " ".join((factory.__doc__ or "").split()) for factory in STRATEGIES}


for _strategy in (NoSharing, ShareAll, SharedStem, Gemel, GemelPlus):
    register_strategy(_strategy)
