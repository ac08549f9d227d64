"""Forms of the merges pages."""

from __future__ import annotations

from typing import Any

from django import forms

from webapp.merges.selectors import merge_strategies
from webapp.workloads.selectors import queries_ready

DEFAULT_STRATEGY = "gemel+"


class MergeJobStartForm(forms.Form):
    """Start a merge job: which ready queries, which strategy, how long it may search."""

    queries = forms.ModelMultipleChoiceField(queryset=queries_ready(), widget=forms.SelectMultiple(attrs={"size": 6}))
    strategy = forms.ChoiceField(choices=())
    budget_minutes = forms.FloatField(
        required=False, min_value=0.01, label="Budget (minutes)", help_text="Leave empty to search until done."
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["queries"].queryset = queries_ready()
        strategies = merge_strategies()
        self.fields["strategy"].choices = [(name, name) for name in strategies]
        self.fields["strategy"].initial = DEFAULT_STRATEGY if DEFAULT_STRATEGY in strategies else strategies[0]
