"""At least one export path works for the paper's U-Net and the BN U-Net."""

from __future__ import annotations

import pytest
import torch

from .helpers import small_size, tiny_model


@pytest.mark.parametrize("name", ["unet", "unet_bn"])
def test_torch_export_reproduces_eager_outputs(name: str) -> None:
    model = tiny_model(name).eval()
    size = small_size(model, 96)
    x = torch.randn(2, 1, size, size + model.input_multiple * 2)
    program = torch.export.export(model, (x,))
    exported = program.module()
    y = torch.randn_like(x)
    with torch.no_grad():
        for inp in (x, y):
            torch.testing.assert_close(exported(inp), model(inp), rtol=1e-5, atol=1e-5)
