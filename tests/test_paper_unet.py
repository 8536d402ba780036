"""The paper's U-Net, checked against the paper's numbers and an independent functional oracle."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from zoo import InputSizeError, create_model
from zoo.cost import count_flops, count_parameters
from zoo.models import UNet


def meta_unet(**overrides: object) -> UNet:
    with torch.device("meta"):
        model = create_model("unet", in_channels=1, num_classes=2, **overrides)
    assert isinstance(model, UNet)
    return model


def test_parameter_count_is_the_papers() -> None:
    # 31,030,658: the paper's network with 1 input channel and 2 classes (e.g. Caffe/Keras reproductions)
    assert count_parameters(meta_unet()) == 31_030_658


def test_572_tile_maps_to_388() -> None:
    model = meta_unet()
    assert model.output_size((572, 572)) == (388, 388)
    out = model(torch.empty(1, 1, 572, 572, device="meta"))  # shapes only, full width
    assert tuple(out.shape) == (1, 2, 388, 388)


def test_real_forward_at_572_with_narrow_width() -> None:
    model = create_model("unet", in_channels=1, num_classes=2, base_channels=4).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, 572, 572)).shape == (1, 2, 388, 388)


def test_invalid_size_names_the_nearest_tile() -> None:
    model = meta_unet()
    with pytest.raises(
        InputSizeError,
        match=r"input size 573 is not accepted.*188 \+ 16k.*Nearest valid input: 572 \(output 388\)",
    ):
        model.output_size(573)
    with pytest.raises(InputSizeError, match=r"Nearest valid input: 188 \(output 4\)"):
        model.output_size(100)


def _oracle(x: Tensor, sd: dict[str, Tensor], depth: int) -> Tensor:
    """The paper's forward pass written from its description with torch.nn.functional only."""

    def double_conv(t: Tensor, prefix: str) -> Tensor:
        t = F.relu(F.conv2d(t, sd[f"{prefix}.0.weight"], sd[f"{prefix}.0.bias"]))
        return F.relu(F.conv2d(t, sd[f"{prefix}.3.weight"], sd[f"{prefix}.3.bias"]))

    skips = []
    for k in range(depth + 1):
        if k:
            x = F.max_pool2d(x, 2)
        x = double_conv(x, f"encoder.{k}")
        skips.append(x)
    x = skips.pop()
    for i in range(depth):
        x = F.conv_transpose2d(x, sd[f"decoder.{i}.up.weight"], sd[f"decoder.{i}.up.bias"], stride=2)
        skip = skips.pop()
        dy, dx = (skip.shape[-2] - x.shape[-2]) // 2, (skip.shape[-1] - x.shape[-1]) // 2
        skip = skip[..., dy : dy + x.shape[-2], dx : dx + x.shape[-1]]
        x = double_conv(torch.cat([skip, x], 1), f"decoder.{i}.conv")
    return F.conv2d(x, sd["head.weight"], sd["head.bias"])


@pytest.mark.parametrize("size", [(188, 188), (204, 252), (572, 572)])
def test_matches_a_functional_oracle(size: tuple[int, int]) -> None:
    model = create_model("unet", in_channels=1, num_classes=2, base_channels=4).eval()
    x = torch.randn(1, 1, *size)
    with torch.no_grad():
        expected = _oracle(x, model.state_dict(), depth=4)
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)


def test_paper_initialisation_std_is_sqrt_2_over_n() -> None:
    model = create_model("unet", in_channels=1, num_classes=2)
    cases = {
        "encoder.4.3.weight": 9 * 1024,  # 3x3 conv, 1024 inputs
        "encoder.1.0.weight": 9 * 64,
        "decoder.0.up.weight": 1024,  # 2x2 stride-2 transposed conv: each output sees 1 tap of 1024 channels
        "head.weight": 64,
    }
    params = dict(model.named_parameters())
    for name, n in cases.items():
        w = params[name].detach()
        expected = math.sqrt(2.0 / n)
        assert abs(w.mean().item()) < 5 * expected / math.sqrt(w.numel())
        assert w.std().item() == pytest.approx(expected, rel=0.03), name
    assert all(p.abs().sum() == 0 for n, p in params.items() if n.endswith("bias"))


def test_dropout_sits_at_the_end_of_the_contracting_path() -> None:
    model = create_model("unet", in_channels=1, num_classes=2, base_channels=4)
    seen: list[int] = []
    model.dropout.register_forward_hook(lambda m, i, o: seen.append(o.shape[1]))
    x = torch.randn(1, 1, 188, 188)
    model.train()
    a, b = model(x), model(x)
    assert seen == [32, 64, 32, 64]  # the two deepest levels (8x and 16x base width), each forward
    assert not torch.equal(a, b)  # dropout is live in training
    model.eval()
    assert torch.equal(model(x), model(x))
    no_drop = create_model("unet", in_channels=1, num_classes=2, base_channels=4, dropout=0.0).train()
    assert torch.equal(no_drop(x), no_drop(x))


def _paper_flops(size: int, base: int = 64, depth: int = 4, in_ch: int = 1, classes: int = 2) -> int:
    """FLOPs of the valid-convolution U-Net counted by hand: 2 x (output pixels x k*k x C_in x C_out)."""
    total, s, c_prev, levels = 0, size, in_ch, []
    for k in range(depth + 1):
        c = base * 2**k
        if k:
            s //= 2
        total += 2 * ((s - 2) ** 2 * 9 * c_prev * c + (s - 4) ** 2 * 9 * c * c)
        s -= 4
        levels.append((c, s))
        c_prev = c
    for k in reversed(range(depth)):
        c = base * 2**k
        s *= 2  # transposed conv: every output pixel takes C_in x 1 tap
        total += 2 * (s * s * c_prev * c)
        total += 2 * ((s - 2) ** 2 * 9 * 2 * c * c + (s - 4) ** 2 * 9 * c * c)
        s -= 4
        c_prev = c
    return total + 2 * s * s * c_prev * classes


def test_flops_match_a_hand_count() -> None:
    assert count_flops(meta_unet(), (1, 1, 572, 572)) == _paper_flops(572)
    assert count_flops(meta_unet(base_channels=16), (1, 1, 252, 252)) == _paper_flops(252, base=16)
