"""Why the paper's SGD settings stall the paper's `unet`: a look inside the runs of the diagnosis.

For each run folder given (a harness run of `unet` on ISBI 2012), loads its last checkpoint and reports,
on one validation slice (eval mode, no dropout):

- dead channels: ReLU outputs that are zero at every pixel of the slice, per block (a unit that never
  fires gets no gradient and never comes back);
- the spread of the output: the share of pixels labelled membrane, and the mean probability of it;
- the norm of the weights.

It also measures, at initialisation, the gradient norm of the training loss (``ce+dice`` with the weight
map, and plain ``ce``) on four training tiles relative to the weights' norm, over all parameters and per
block: one SGD learning rate moves each block by lr times that ratio (times 1 / (1 - momentum) once
the momentum has built up), while Adam's step is about lr per weight everywhere.

    python benchmarks/sgd_diagnosis.py runs/sgd-diagnosis/unet-isbi2012-s0-* --data-root ../shared/data
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zoo import create_model
from zoo.data import ISBI2012Dataset, block_kfold
from zoo.data.loader import RandomCrops, unit_float
from zoo.harness.config import TrainConfig
from zoo.harness.training import _center, _loss
from zoo.machine import write_results
from zoo.tiling import predict_logits


def _dead_channels(model: nn.Module, image: torch.Tensor) -> dict[str, float]:
    """Share of ReLU channels that are zero over the whole image, per top-level block."""
    seen: dict[str, list[torch.Tensor]] = {}
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, nn.ReLU):
            block = name.rsplit(".", 1)[0]

            def hook(_m: nn.Module, _i: Any, out: torch.Tensor, block: str = block) -> None:
                seen.setdefault(block, []).append((out.amax(dim=(0, 2, 3)) <= 0).float())

            hooks.append(module.register_forward_hook(hook))
    with torch.no_grad():
        predict_logits(model, image[None])
    for h in hooks:
        h.remove()
    return {block: round(float(torch.cat(flags).mean()), 4) for block, flags in seen.items()}


def _grad_norm_at_init(
    cfg: TrainConfig, ds: ISBI2012Dataset, train_idx: list[int], loss: str
) -> dict[str, float]:
    """|gradient| / |weights| of the loss ``loss`` at initialisation, on four training tiles: over all
    parameters and per block (what one SGD learning rate does to each)."""
    torch.manual_seed(cfg.seed)
    model = create_model("unet", in_channels=1, num_classes=2, **cfg.overrides)
    crop = model.nearest_valid_input_size(cfg.crop)
    out = model.output_size(crop)
    crops = RandomCrops(ds, train_idx, (crop, crop), seed=cfg.seed, context=(crop - out) // 2)
    image, mask, weight = (torch.stack(t) for t in zip(*(crops[i] for i in range(4)), strict=True))
    image = unit_float(image)
    model.train()
    step_cfg = TrainConfig.from_dict({**cfg.to_dict(), "loss": loss})
    value = _loss(
        step_cfg, model(image), _center(mask, out), _center(weight, out) if cfg.weight_map else None
    )
    value.backward()
    ratios: dict[str, float] = {}
    blocks: dict[str, list[torch.nn.Parameter]] = {}
    for name, p in model.named_parameters():
        parts = name.split(".")
        blocks.setdefault(".".join(parts[:2]) if parts[0] in ("encoder", "decoder") else parts[0], []).append(
            p
        )
    for block, params in [("all", list(model.parameters())), *blocks.items()]:
        grad = torch.cat([p.grad.flatten() for p in params if p.grad is not None])
        weight = torch.cat([p.detach().flatten() for p in params])
        ratios[block] = round(float(grad.norm() / weight.norm()), 5)
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="+", help="run folders of unet on isbi2012")
    parser.add_argument("--data-root", default="../shared/data")
    parser.add_argument("--out", default="benchmarks/results", help="results folder")
    args = parser.parse_args()
    rows = []
    cfg = None
    for run in map(Path, args.runs):
        cfg = TrainConfig.from_dict(json.loads((run / "config.json").read_text()))
        ds = ISBI2012Dataset(Path(args.data_root) / "isbi2012")
        split = block_kfold(len(ds), folds=cfg.folds, fold=cfg.fold)
        model = create_model("unet", in_channels=1, num_classes=2, **cfg.overrides)
        state = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        model.eval()
        params = list(model.parameters())
        image, mask = ds[split.val[0]][:2]
        with torch.no_grad():
            probs = predict_logits(model, image[None]).softmax(1)[0, 1]
        rows.append(
            {
                "run": run.name,
                "optimizer": cfg.optimizer,
                "lr": cfg.lr,
                "momentum": cfg.momentum if cfg.optimizer == "sgd" else None,
                "loss": cfg.loss,
                "epoch": state["epoch"],
                "dead_channels": _dead_channels(model, image),
                "membrane_share_pred": round(float((probs > 0.5).float().mean()), 4),
                "membrane_share_truth": round(float((mask == 1).float().mean()), 4),
                "membrane_prob_mean": round(float(probs.mean()), 4),
                "weights_norm": round(float(torch.cat([p.detach().flatten() for p in params]).norm()), 2),
            }
        )
        print(json.dumps(rows[-1]))
    assert cfg is not None
    ds = ISBI2012Dataset(Path(args.data_root) / "isbi2012", weight_map=cfg.weight_map)
    split = block_kfold(len(ds), folds=cfg.folds, fold=cfg.fold)
    init = {loss: _grad_norm_at_init(cfg, ds, list(split.train), loss) for loss in ("ce+dice", "ce")}
    print("gradient norm / weight norm at initialisation:", init)
    path = write_results("sgd_diagnosis", {"runs": rows, "grad_over_weight_norm_at_init": init}, args.out)
    print(f"written {path}")


if __name__ == "__main__":
    main()
