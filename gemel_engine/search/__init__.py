"""The merge search: strategies behind one interface, joint retraining, resumable jobs."""

from gemel_engine.search.engine import (
    DEFAULT_ACCEPT_CONFIDENCE,
    MergeSearch,
    SearchConfig,
    SearchError,
    SearchResult,
    bundle_evaluation,
    bundle_test_report,
    resolve_bundle,
    run_search,
    saved_configs,
)
from gemel_engine.search.retrain import (
    QueryData,
    RetrainBudget,
    RetrainOutcome,
    estimate_round_seconds,
    joint_retrain,
)
from gemel_engine.search.strategies import (
    Strategy,
    describe_strategies,
    get_strategy,
    list_strategies,
    register_strategy,
)

__all__ = [
    "DEFAULT_ACCEPT_CONFIDENCE",
    "MergeSearch",
    "QueryData",
    "RetrainBudget",
    "RetrainOutcome",
    "SearchConfig",
    "SearchError",
    "SearchResult",
    "Strategy",
    "bundle_evaluation",
    "bundle_test_report",
    "describe_strategies",
    "estimate_round_seconds",
    "get_strategy",
    "joint_retrain",
    "list_strategies",
    "register_strategy",
    "resolve_bundle",
    "run_search",
    "saved_configs",
]
