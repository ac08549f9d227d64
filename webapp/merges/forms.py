"""Forms of the merges pages."""

from __future__ import annotations

from typing import Any

from django import forms

from webapp.merges.selectors import merge_strategies, merge_strategy_descriptions
from webapp.workloads.selectors import queries_ready, site_list

DEFAULT_STRATEGY = "gemel+"


class MergeJobStartForm(forms.Form):
    """Start a merge job: which ready queries, which strategy, how long it may search."""

    all_ready = forms.BooleanField(required=False, label="Every ready query",
                                   help_text="Or tick the queries to merge below.")
    queries = forms.ModelMultipleChoiceField(queryset=queries_ready(), required=False,
                                             widget=forms.CheckboxSelectMultiple)
    strategy = forms.ChoiceField(choices=())
    budget_minutes = forms.FloatField(
        required=False, min_value=0.01, label="Time budget (minutes)",
        help_text="Minutes the search may run (not memory). Leave empty to search until done."
    )

    accept_confidence = forms.ChoiceField(
        label="Accept a round when", initial="point", required=False, choices=[
            ("point", "the point figures meet every target (fastest; may accept a lucky draw)"),
            ("0.75", "every target is met at 75% confidence"),
            ("0.9", "every target is met at 90% confidence (saves less; rarely misses on test frames)"),
        ],
        help_text="How sure the validation frames must be that each query keeps its target before a round's "
                  "sharing is kept.",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["queries"].queryset = queries_ready().select_related("camera__site")
        if site_list().count() > 1:  # a job is over one site's queries: say which site each is of
            self.fields["queries"].label_from_instance = lambda query: f"{query.name} (site {query.camera.site.name})"
            self.fields["all_ready"].help_text = "Every ready query of one site; or tick one site's queries below."
        strategies = merge_strategies()
        described = merge_strategy_descriptions()
        self.fields["strategy"].choices = [
            (name, f"{name}: {described[name]}" if described.get(name) else name) for name in strategies
        ]
        self.fields["strategy"].initial = DEFAULT_STRATEGY if DEFAULT_STRATEGY in strategies else strategies[0]

    def clean_accept_confidence(self) -> float | None:
        """Return the acceptance confidence chosen: None for the point rule, else the number."""
        value = self.cleaned_data["accept_confidence"]
        return None if value in ("", "point") else float(value)

    def clean(self) -> dict[str, Any]:
        """Return the cleaned data, with every ready query chosen when ``all_ready`` is ticked.

        Raises:
            ValidationError: no query chosen.
        """
        data = super().clean()
        if data.get("all_ready"):
            data["queries"] = self.fields["queries"].queryset
        if not data.get("queries"):
            self.add_error("queries", "tick the queries to merge, or 'Every ready query'")
        return data
