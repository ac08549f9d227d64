"""Forms of the workloads pages: they parse input; the services decide what is valid."""

from __future__ import annotations

import json
from typing import Any

from django import forms

from gemel_engine import zoo
from gemel_engine.data.synthetic import CLASSES
from gemel_engine.queries import TASK_KINDS
from webapp.workloads.models import Camera, ModelEntry, Query, Site, default_site_id


class SiteForm(forms.Form):
    """Add a site."""

    name = forms.CharField(max_length=100, help_text="a place with its own cameras and edge boxes: a junction, a store")


class CameraForm(forms.Form):
    """Register or edit a camera."""

    name = forms.CharField(max_length=100)
    site = forms.ModelChoiceField(
        queryset=Site.objects.all(), required=False, empty_label=None,
        help_text="where the camera is: its queries are merged with that site's queries and deployed to its boxes",
    )
    source = forms.CharField(
        max_length=500, strip=False,
        help_text="synthetic://name?seed=1&width=160&height=120&frames=600, rtsp://…, http(s)://…, "
        "file://… or a path inside the media folder",
    )
    fps = forms.FloatField(initial=10.0, min_value=0.01, max_value=1000, label="Frames per second")
    width = forms.IntegerField(initial=64, min_value=16, max_value=2048, help_text="frame width given to the models")
    height = forms.IntegerField(initial=64, min_value=16, max_value=2048, help_text="frame height given to the models")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["site"].queryset = Site.objects.order_by("name")
        if not self.is_bound and "site" not in self.initial:
            self.initial["site"] = default_site_id()


class CameraAnnotationsForm(forms.Form):
    """Upload annotations for an image-folder or video-file camera."""

    file = forms.FileField(
        label="Annotations",
        help_text="a .zip of YOLO label files (one <frame>.txt per image, with classes.txt or data.yaml naming the "
        "classes; without one, ids are COCO's 80 classes) or a COCO .json; up to 8 MiB",
    )


class CameraTeacherForm(forms.Form):
    """Name a teacher detector whose detections label every query on a camera."""

    model = forms.ModelChoiceField(
        queryset=ModelEntry.objects.none(), label="Teacher model",
        help_text="a registered detector, typically larger than the queries' models; its boxes label every query on "
        "the camera (a presence query: any box of its classes; a count: how many; detection: the boxes)",
    )
    labels = forms.CharField(
        label="Class of each label id", max_length=20_000, widget=forms.Textarea(attrs={"rows": 3}),
        help_text="the class names of its label ids 1, 2, ... in order, comma-separated (leave one empty for an id "
        "that names none), or coco for torchvision's COCO detectors",
    )
    score_threshold = forms.FloatField(label="Score threshold", min_value=0.0, max_value=1.0, initial=0.5,
                                       help_text="a detection scoring below this is not a label")
    frame_width = forms.IntegerField(label="Teacher frame width", required=False, min_value=16, max_value=2048,
                                     help_text="pixels the teacher sees (default: the camera's own frame size)")
    frame_height = forms.IntegerField(label="Teacher frame height", required=False, min_value=16, max_value=2048)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        detectors = zoo.list_models(task="detection")
        self.fields["model"].queryset = ModelEntry.objects.filter(arch__in=detectors).order_by("name")

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        if (data.get("frame_width") is None) != (data.get("frame_height") is None):
            self.add_error("frame_height", "give both the width and the height, or neither")
        return data

    def teacher_labels(self) -> str | list[str]:
        """Return the labels as the service takes them: "coco" or the list of class names."""
        text = self.cleaned_data["labels"].strip()
        return "coco" if text.lower() == "coco" else [name.strip() for name in text.split(",")]

    def frame_size(self) -> list[int] | None:
        """Return [width, height], or None when neither was given."""
        width, height = self.cleaned_data.get("frame_width"), self.cleaned_data.get("frame_height")
        return None if width is None or height is None else [width, height]


class ModelUploadForm(forms.Form):
    """Upload a model: an architecture of the zoo and its weights."""

    name = forms.CharField(max_length=100)
    arch = forms.ChoiceField(label="Architecture", choices=())
    builder_args = forms.CharField(
        initial='{"num_classes": 2}', label="Builder arguments (JSON)",
        help_text="num_classes must match the query's head: 2 for presence, bins for count, classes+1 for detection",
    )
    weights = forms.FileField(help_text=".safetensors, or a .pt/.pth state dict (read without unpickling code)")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["arch"].choices = [(name, name) for name in zoo.list_models()]

    def clean_builder_args(self) -> dict[str, Any]:
        """Return the builder arguments as a dict (any JSON object; the service checks the values)."""
        try:
            value = json.loads(self.cleaned_data["builder_args"] or "{}")
        except json.JSONDecodeError as exc:
            raise forms.ValidationError(f"not valid JSON: {exc}") from None
        if not isinstance(value, dict):
            raise forms.ValidationError("must be a JSON object, e.g. {\"num_classes\": 2}")
        return value


class ModelRenameForm(forms.Form):
    """Rename a model (its weights are fixed once validated)."""

    name = forms.CharField(max_length=100)


class QueryForm(forms.Form):
    """Create or edit a query; on edit the camera and model are fixed."""

    name = forms.CharField(max_length=64, help_text="letters, digits, _ or - (it names the model in bundles)")
    camera = forms.ModelChoiceField(queryset=Camera.objects.order_by("name"))
    model = forms.ModelChoiceField(queryset=ModelEntry.objects.order_by("name"))
    kind = forms.ChoiceField(label="Task", choices=[(kind, kind) for kind in TASK_KINDS])
    classes = forms.MultipleChoiceField(
        choices=(), widget=forms.CheckboxSelectMultiple,
        help_text="from the camera's classes: a synthetic camera's five, or those its annotations name",
    )
    count_edges = forms.CharField(
        required=False, initial="1,3", label="Count bins", help_text="count task: increasing edges, 1,3 → 0, 1-2, 3+"
    )
    target_fraction = forms.FloatField(initial=0.95, label="Accuracy target (× unmerged)")
    slo_ms = forms.FloatField(initial=500.0, label="Latency bound (ms)")

    def __init__(self, *args: Any, query: Query | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        names = list(CLASSES)
        for vocabulary in Camera.objects.exclude(vocabulary=[]).values_list("vocabulary", flat=True):
            names += [name for name in vocabulary if name not in names]
        self.fields["classes"].choices = [(name, name) for name in names]
        if query is not None:
            for name in ("camera", "model"):
                self.fields[name].disabled = True
                self.fields[name].required = False

    @staticmethod
    def initial_for(query: Query) -> dict[str, Any]:
        """Return the form's initial values for editing ``query``."""
        task = query.task or {}
        return {
            "name": query.name, "camera": query.camera_id, "model": query.model_id, "kind": task.get("kind"),
            "classes": task.get("classes", []), "count_edges": ",".join(str(e) for e in task.get("count_edges", [])),
            "target_fraction": query.target_fraction, "slo_ms": query.slo_ms,
        }

    def clean_count_edges(self) -> list[int]:
        """Return the count bins as a list of integers (empty when not given)."""
        raw = self.cleaned_data.get("count_edges") or ""
        try:
            return [int(part) for part in raw.replace(" ", "").split(",") if part]
        except ValueError:
            raise forms.ValidationError("give integers separated by commas, e.g. 1,3") from None

    def task(self) -> dict[str, Any]:
        """Return the task JSON of the cleaned form."""
        data = self.cleaned_data
        task: dict[str, Any] = {"kind": data["kind"], "classes": list(data["classes"])}
        if data["kind"] == "count" and data.get("count_edges"):
            task["count_edges"] = data["count_edges"]
        return task


class TrainingForm(QueryForm):
    """Train a new unmerged model for a query on a labelled camera: the query's fields, an architecture and how
    long to train."""

    arch = forms.ChoiceField(label="Architecture", choices=())
    steps = forms.IntegerField(
        required=False, min_value=1, label="Training steps",
        help_text="optimizer steps (default: 250 of 64 frames for a classifier, 300 of 8 for a detector)",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        del self.fields["model"]
        self.fields["name"].help_text = "names both the new model and its query"
        self.fields["arch"].choices = [(name, name) for name in zoo.list_models()]


class AnalysisForm(forms.Form):
    """Choose the queries to analyse (all when none is ticked) and how layers are matched."""

    queries = forms.ModelMultipleChoiceField(
        queryset=Query.objects.order_by("name"), required=False, widget=forms.CheckboxSelectMultiple,
        help_text="None ticked: every ready query.",
    )
    mode = forms.ChoiceField(
        label="Layers match on",
        choices=[("shape", "shape: same weight shapes"), ("exact", "exact: same layer configuration")],
        initial="shape",
    )


class DemoSeedForm(forms.Form):
    """Start building a demo workload."""

    scale = forms.ChoiceField(choices=[("tiny", "tiny"), ("mix", "mix"), ("small", "small")], initial="tiny")
