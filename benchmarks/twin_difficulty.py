"""How hard are the synthetic twins? Train a small model for a fixed wall-clock budget and report Dice.

The twins must not be solved perfectly in a minute (issue 3). This trains `unet_bn` at
``base_channels=16`` on each twin for ``--seconds`` (bf16 autocast, channels-last, Adam) and reports
the foreground Dice on held-out samples (ISBI: the last block of slices; Carvana: held-out cars),
writing ``benchmarks/results/twin_difficulty-<machine>.json``.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from _common import benchmark_parser, save_results

from zoo import create_model
from zoo.data import CarvanaDataset, ISBI2012Dataset, SegmentationDataset, block_kfold, group_split
from zoo.data.augment import AugmentConfig, augment_batch
from zoo.data.loader import RandomCrops, make_loader, unit_float
from zoo.data.synthetic import write_car_twin, write_em_twin
from zoo.machine import describe_machine


def dice(pred: torch.Tensor, truth: torch.Tensor) -> float:
    """Foreground Dice of one image; 1 when both are empty."""
    inter = (pred & truth).sum().item()
    total = pred.sum().item() + truth.sum().item()
    return 1.0 if total == 0 else 2 * inter / total


def train_and_score(
    ds: SegmentationDataset, train: list[int], val: list[int], crop: int, seconds: float
) -> dict[str, float]:
    torch.manual_seed(0)
    model = create_model("unet_bn", in_channels=ds.in_channels, num_classes=2, base_channels=16)
    model = model.to(memory_format=torch.channels_last).train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    loader = make_loader(
        RandomCrops(ds, train, (crop, crop), repeats=10_000), batch_size=4, shuffle=True, in_memory=True
    )
    gen = torch.Generator().manual_seed(0)
    cfg = AugmentConfig(rotation=15, elastic_sigma=5)
    steps, start = 0, time.perf_counter()
    for image, mask in loader:
        image, mask, _ = augment_batch(unit_float(image), mask, config=cfg, generator=gen)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(image.contiguous(memory_format=torch.channels_last)), mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        steps += 1
        if time.perf_counter() - start > seconds:
            break
    model.eval()
    scores = []
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        for i in val:
            image, mask = ds[i]
            pred = model(image.unsqueeze(0)).argmax(1)[0]
            scores.append(dice(pred == 1, mask == 1))
    return {
        "steps": steps,
        "seconds": round(time.perf_counter() - start, 1),
        "val_dice": round(sum(scores) / len(scores), 4),
        "val_images": len(val),
    }


def main(argv: list[str] | None = None) -> int:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--seconds", type=float, default=60.0, help="training time per twin")
    args = parser.parse_args(argv)
    results: dict[str, object] = {
        "benchmark": "twin_difficulty",
        "model": "unet_bn base_channels=16",
        "budget_s": args.seconds,
        "machine": describe_machine(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        em = ISBI2012Dataset(write_em_twin(Path(tmp) / "em", count=12, seed=0, size=256))
        split = block_kfold(len(em), folds=4, fold=3)
        results["isbi2012_twin"] = train_and_score(em, list(split.train), list(split.val), 128, args.seconds)
        print("isbi2012 twin:", results["isbi2012_twin"], flush=True)
        car = CarvanaDataset(write_car_twin(Path(tmp) / "car", count=64, seed=0, height=128, width=192))
        split = group_split(car.groups, val_fraction=0.25, seed=0)
        results["carvana_twin"] = train_and_score(car, list(split.train), list(split.val), 128, args.seconds)
        print("carvana twin:", results["carvana_twin"], flush=True)
    save_results("twin_difficulty", results, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
