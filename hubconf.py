"""torch.hub entry points: one per registered model, e.g.

    torch.hub.load("path/to/unet-zoo", "unet_bn", source="local", pretrained=True)
    torch.hub.load("path/to/unet-zoo", "unet_bn", source="local", weights="isbi2012-w16-s0")
    torch.hub.load("path/to/unet-zoo", "unet", source="local", in_channels=1, num_classes=2)

Each is ``zoo.create_model(name, ...)``: weights come from the manifest (verified by sha256) or from a
unet-zoo ``.safetensors`` path, and loading them never executes code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING as _TYPE_CHECKING

from zoo.factory import create_model as _create_model
from zoo.registry import get_entry as _get_entry
from zoo.registry import list_models as _list_models

if _TYPE_CHECKING:  # nothing public but the entry points: torch.hub lists every callable here
    from collections.abc import Callable
    from typing import Any

dependencies = ["torch", "torchvision", "safetensors", "timm", "segmentation_models_pytorch"]


def _hub_entry(name: str) -> Callable[..., Any]:
    def entry(pretrained: bool = False, weights: str | None = None, **kwargs: Any) -> Any:
        return _create_model(name, pretrained=pretrained, weights=weights, **kwargs)

    entry.__name__ = entry.__qualname__ = name
    entry.__doc__ = (
        f"{_get_entry(name).summary}\n\n"
        f"``pretrained=True`` loads {name}'s default weights, ``weights=TAG`` a tagged checkpoint "
        "(`unet-zoo weights list`); otherwise pass ``in_channels`` and ``num_classes``. Other keywords are "
        "overrides, as for zoo.create_model."
    )
    return entry


for _name in _list_models():
    globals()[_name] = _hub_entry(_name)
