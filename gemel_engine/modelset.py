"""A named set of models held as one module, the unit that sharing, training and bundles work on."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from torch import nn

from gemel_engine.plan import check_model_name


class ModelSet(nn.Module):
    """Several named models held as one module, so shared parameters are moved and listed once.

    ``parameters()`` yields each shared tensor once: an optimizer over it updates the unique weights.
    """

    def __init__(self, models: Mapping[str, nn.Module]) -> None:
        super().__init__()
        for name in models:
            check_model_name(name)
        self.models = nn.ModuleDict(dict(models))

    def __getitem__(self, name: str) -> nn.Module:
        return self.models[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.models)

    def __len__(self) -> int:
        return len(self.models)

    def as_dict(self) -> dict[str, nn.Module]:
        """Return name → model."""
        return dict(self.models.items())
