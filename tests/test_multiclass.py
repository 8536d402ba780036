"""Multi-class segmentation: per-class Dice and IoU against hand-computed figures, their keys in the
MLflow schema, the leaderboard's per-class columns, and predicted masks and overlays of four classes."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor, nn
from torchmetrics.functional.segmentation import dice_score

from zoo.harness.evaluate import evaluate
from zoo.harness.tracking import (
    CLASS_NAMES_PARAM,
    COST_KEYS,
    QUALITY_KEYS,
    Tracker,
    class_names_param,
    quality_keys,
)
from zoo.metrics import (
    MetricAccumulator,
    class_key_names,
    class_metric_keys,
    dice_iou_per_class,
    dice_iou_per_image,
    split_class_key,
)
from zoo.predict import predict_files
from zoo.report import build, write_report
from zoo.report.leaderboard import class_columns
from zoo.tiling import TiledInferer

from .helpers import AnySizeModel, seed_store

SHAPES = ("background", "disc", "square", "triangle")


# -- per-class figures against hand-computed ones --------------------------------------------------------


def test_three_classes_by_hand() -> None:
    # image 0: class 1 truth 3 px, predicted 3, overlap 2 -> Dice 2*2/6, IoU 2/4;
    #          class 2 truth 3 px, predicted 4, overlap 3 -> Dice 2*3/7, IoU 3/4
    truth0 = [[0, 1, 1, 2], [0, 1, 2, 2]]
    pred0 = [[0, 1, 2, 2], [1, 1, 2, 2]]
    # image 1: class 1 truth 4, predicted 4, overlap 3 -> Dice 6/8, IoU 3/5; class 2 is predicted only on
    # an unlabelled pixel (-1): absent from both where it counts, so it scores 1 and 1
    truth1 = [[0, 0, 1, 1], [-1, 0, 1, 1]]
    pred1 = [[0, 1, 1, 1], [2, 0, 0, 1]]
    acc = MetricAccumulator(3, class_names=("background", "Disc", "square!"))
    acc.update(torch.tensor([pred0]), torch.tensor([truth0]))  # one image per batch: means over images
    acc.update(torch.tensor([pred1]), torch.tensor([truth1]))
    out = acc.compute()
    d1 = [Fraction(2, 3), Fraction(3, 4)]
    i1 = [Fraction(1, 2), Fraction(3, 5)]
    d2 = [Fraction(6, 7), Fraction(1)]
    i2 = [Fraction(3, 4), Fraction(1)]
    assert set(out) == {"dice", "iou", "misclassified", "dice_disc", "dice_square", "iou_disc", "iou_square"}
    assert out["dice_disc"] == pytest.approx(float(sum(d1) / 2))  # 17/24
    assert out["iou_disc"] == pytest.approx(float(sum(i1) / 2))  # 11/20
    assert out["dice_square"] == pytest.approx(float(sum(d2) / 2))  # 13/14
    assert out["iou_square"] == pytest.approx(float(sum(i2) / 2))  # 7/8
    # the macro figure: per image, the mean over the foreground classes; then the mean over images
    assert out["dice"] == pytest.approx(float(((d1[0] + d2[0]) / 2 + (d1[1] + d2[1]) / 2) / 2))
    assert out["iou"] == pytest.approx(float(((i1[0] + i2[0]) / 2 + (i1[1] + i2[1]) / 2) / 2))
    # 2 of 8 pixels wrong, then 2 of the 7 labelled ones
    assert out["misclassified"] == pytest.approx((2 / 8 + 2 / 7) / 2)


def test_four_classes_by_hand() -> None:
    # image 0: disc truth 2, predicted 1, overlap 1 -> 2/3, 1/2; square 2, 3, 2 -> 4/5, 2/3;
    #          triangle 3, 3, 2 -> 4/6, 2/4
    truth0 = [[0, 1, 1], [2, 2, 3], [0, 3, 3]]
    pred0 = [[0, 1, 2], [2, 2, 3], [3, 3, 0]]
    # image 1: a disc predicted where there is none (0, 0); the square exact (1, 1); no triangle (1, 1)
    truth1 = [[2, 0, 0], [0, 0, 0], [0, 0, 0]]
    pred1 = [[2, 0, 0], [0, 0, 0], [0, 0, 1]]
    acc = MetricAccumulator(4, class_names=SHAPES)
    acc.update(torch.tensor([pred0, pred1]), torch.tensor([truth0, truth1]))
    out = acc.compute()
    expected = {
        "dice_disc": (Fraction(2, 3) + 0) / 2,
        "dice_square": (Fraction(4, 5) + 1) / 2,
        "dice_triangle": (Fraction(2, 3) + 1) / 2,
        "iou_disc": (Fraction(1, 2) + 0) / 2,
        "iou_square": (Fraction(2, 3) + 1) / 2,
        "iou_triangle": (Fraction(1, 2) + 1) / 2,
    }
    for key, value in expected.items():
        assert out[key] == pytest.approx(float(value)), key
    # per image the mean over the three classes: Dice (2/3 + 4/5 + 2/3) / 3 = 32/45 and (0 + 1 + 1) / 3,
    # IoU (1/2 + 2/3 + 1/2) / 3 = 5/9 and (0 + 1 + 1) / 3
    assert out["dice"] == pytest.approx(float((Fraction(32, 45) + Fraction(2, 3)) / 2))
    assert out["iou"] == pytest.approx(float((Fraction(5, 9) + Fraction(2, 3)) / 2))


def test_the_macro_figure_is_the_mean_of_the_per_class_ones_per_image() -> None:
    gen = torch.Generator().manual_seed(7)
    pred = torch.randint(0, 5, (6, 13, 17), generator=gen)
    truth = torch.randint(-1, 5, (6, 13, 17), generator=gen)  # -1: some unlabelled pixels
    truth[2][truth[2] == 4] = 0  # an image without class 4 in truth...
    pred[2][pred[2] == 4] = 0  # ...nor in the prediction: both empty, 1 for that class
    acc = MetricAccumulator(5)
    for start in range(0, 6, 4):
        acc.update(pred[start : start + 4], truth[start : start + 4])
    assert len(acc.class_dice) == 6 and all(len(row) == 4 for row in acc.class_dice)
    for macro, per_class in zip(acc.dice, acc.class_dice, strict=True):
        assert macro == pytest.approx(float(np.mean(per_class)), rel=1e-12)
    for macro, per_class in zip(acc.iou, acc.class_iou, strict=True):
        assert macro == pytest.approx(float(np.mean(per_class)), rel=1e-12)
    assert acc.class_dice[2][3] == 1.0 and acc.class_iou[2][3] == 1.0
    out = acc.compute()
    keys = ("dice_class1", "dice_class2", "dice_class3", "dice_class4")
    assert out["dice"] == pytest.approx(float(np.mean([out[k] for k in keys])), rel=1e-12)
    macro_dice, _ = dice_iou_per_image(pred, truth, 5)
    assert out["dice"] == pytest.approx(macro_dice.mean().item(), rel=1e-12)
    # per class against torchmetrics, on images where every class occurs (their empty rule differs)
    dice, _ = dice_iou_per_class(pred[:2], truth[:2].clamp(min=0), 5)
    ref = dice_score(pred[:2], truth[:2].clamp(min=0), num_classes=5, average="none", input_format="index")
    torch.testing.assert_close(dice.float(), ref.float(), rtol=1e-5, atol=1e-6)


def test_binary_tasks_report_no_per_class_keys() -> None:
    acc = MetricAccumulator(2, class_names=("background", "car"))
    acc.update(torch.tensor([[[0, 1], [1, 1]]]), torch.tensor([[[0, 1], [0, 1]]]))
    assert set(acc.compute()) == {"dice", "iou", "misclassified"}
    assert acc.class_dice == [] and class_metric_keys(("background", "car")) == ()


def test_key_names_are_sanitised_and_ordered_by_metric_then_class() -> None:
    names = ("bg", "Left Lung", "right-lung (R)", " ?? ", "3D")
    assert class_key_names(names) == ("left_lung", "right_lung_r", "class3", "3d")
    assert class_metric_keys(names, metrics=("dice",)) == (
        "dice_left_lung",
        "dice_right_lung_r",
        "dice_class3",
        "dice_3d",
    )
    assert class_metric_keys(SHAPES) == (
        "dice_disc",
        "dice_square",
        "dice_triangle",
        "iou_disc",
        "iou_square",
        "iou_triangle",
    )
    assert all(split_class_key(k) is not None for k in class_metric_keys(names))
    assert split_class_key("dice_left_lung") == ("dice", "left_lung")
    for key in ("dice", "iou", "val_dice_disc", "dice_", "dice_Disc", "rand_error_argmax", "dice__x"):
        assert split_class_key(key) is None, key


@pytest.mark.parametrize(
    ("names", "message"),
    [
        (("bg", "Disc", "disc"), r"'Disc' \(class 1\) and 'disc' \(class 2\) both give .* 'disc'"),
        (("bg", "a b", "a-b"), r"'a b' \(class 1\) and 'a-b' \(class 2\) both give .* 'a_b'"),
        (("bg", "class2", "!!"), r"'class2' \(class 1\) and '!!' \(class 2\) both give .* 'class2'"),
        (("bg", 3, "x"), r"class name 3 \(class 1\) is not a string"),
    ],
)
def test_clashing_or_bad_names_are_refused_naming_them(names: tuple[str, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        class_metric_keys(names)
    with pytest.raises(ValueError, match=message):
        MetricAccumulator(3, class_names=names)  # before any image is scored


def test_bad_arguments_say_what_to_give() -> None:
    with pytest.raises(ValueError, match=r"names 3 classes, but num_classes=4; give one name per class"):
        MetricAccumulator(4, class_names=("bg", "a", "b"))
    with pytest.raises(ValueError, match=r"no per-class figures of \['misclassified'\]; choose among"):
        class_metric_keys(SHAPES, metrics=("misclassified",))


# -- evaluation and the MLflow schema ---------------------------------------------------------------------


class GrayToClass(AnySizeModel):
    """Logits that pick, per pixel, the class ``k`` whose level ``k / (K - 1)`` is nearest the gray value
    (images in [0, 1]; uint8 inputs are scaled by tiling): any tiling gives the same pixels."""

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        self.in_channels, self.num_classes, self.model_name = 1, num_classes, "gray_to_class"
        levels = torch.linspace(0, 1, num_classes)
        self.levels = nn.Parameter(levels.view(1, num_classes, 1, 1), requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        return -100 * (x - self.levels) ** 2


class InMemory:
    """A dataset of ready tensors: what :func:`evaluate` reads of one (items, classes and their names)."""

    def __init__(self, images: list[Tensor], masks: list[Tensor], class_names: tuple[str, ...]) -> None:
        self.images, self.masks = images, masks
        self.num_classes, self.class_names = len(class_names), class_names

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.images[index], self.masks[index]


def _oracle(pred: np.ndarray, truth: np.ndarray, k: int) -> tuple[float, float]:
    """Dice and IoU of class ``k`` in one image, from pixel sets (unlabelled -1 left out)."""
    labelled = truth >= 0
    p = {tuple(ix) for ix in np.argwhere((pred == k) & labelled)}
    t = {tuple(ix) for ix in np.argwhere(truth == k)}
    if not p and not t:
        return 1.0, 1.0
    return 2 * len(p & t) / (len(p) + len(t)), len(p & t) / len(p | t)


def test_evaluate_reports_each_class_by_the_datasets_names() -> None:
    gen = torch.Generator().manual_seed(3)
    preds = [torch.randint(0, 4, (6, 5), generator=gen) for _ in range(3)]
    truths = [torch.randint(-1, 4, (6, 5), generator=gen) for _ in range(3)]
    truths[1][truths[1] == 3] = 2  # no triangle in this image's truth...
    preds[1][preds[1] == 3] = 1  # ...nor in its prediction
    images = [(p.float() / 3).unsqueeze(0) for p in preds]  # the model reads the class from the gray
    data = InMemory(images, truths, SHAPES)
    out = evaluate(GrayToClass().eval(), data, [0, 1, 2], inferer=TiledInferer(batch_size=2))  # type: ignore[arg-type]
    assert set(out) == {"dice", "iou", "misclassified", *class_metric_keys(SHAPES)}
    for k, name in enumerate(SHAPES[1:], start=1):
        per_image = [_oracle(p.numpy(), t.numpy(), k) for p, t in zip(preds, truths, strict=True)]
        assert out[f"dice_{name}"] == pytest.approx(np.mean([d for d, _ in per_image]))
        assert out[f"iou_{name}"] == pytest.approx(np.mean([i for _, i in per_image]))
    assert out["dice"] == pytest.approx(np.mean([out[f"dice_{n}"] for n in SHAPES[1:]]))


def test_quality_keys_carry_the_per_class_keys() -> None:
    base = quality_keys(isbi=False)
    assert base == ("dice", "iou", "misclassified")
    assert quality_keys(isbi=False, class_names=SHAPES) == (*base, *class_metric_keys(SHAPES))
    assert quality_keys(isbi=True, class_names=("cell", "membrane")) == QUALITY_KEYS  # binary: as before
    assert quality_keys(isbi=False, class_names=None) == base
    assert class_names_param(SHAPES) == {CLASS_NAMES_PARAM: json.dumps(list(SHAPES))}


# -- the leaderboard --------------------------------------------------------------------------------------

COST = {
    "params": 1e6,
    "gflops": 2.0,
    "train_images_per_s": 10.0,
    "infer_images_per_s": 50.0,
    "latency_ms": 5.0,
    "peak_memory_mb": 100.0,
}


def _log(
    tracker: Tracker, model: str, dataset: str, seed: int, metrics: dict[str, float], **params: str
) -> str:
    run_id = tracker.start_run(f"{model}-{dataset}-s{seed}", tags={"zoo.kind": "run"})
    tracker.log_params(
        run_id,
        {"cfg.model": model, "cfg.dataset": dataset, "cfg.seed": seed, "cfg.overrides": "{}", **params},
    )
    tracker.log_metrics(run_id, {"val_dice": metrics["dice"]}, step=0)
    tracker.log_metrics(run_id, {**metrics, **COST}, step=0)
    tracker.finish(run_id)
    return run_id


def _shapes_metrics(dice: float, disc: float, square: float, triangle: float) -> dict[str, float]:
    per_class = {"dice_disc": disc, "dice_square": square, "dice_triangle": triangle}
    iou = {k.replace("dice_", "iou_"): v / 2 for k, v in per_class.items()}
    return {"dice": dice, "iou": dice / 2, "misclassified": 1 - dice, **per_class, **iou}


# classes out of alphabetical order: the board keeps the class order
BOARD_CLASSES = ("background", "triangle", "square", "disc")


@pytest.fixture(scope="module")
def shapes_board(tmp_path_factory: pytest.TempPathFactory, store_template: Path) -> Tracker:
    """Four runs on shapes and carvana, logged once for the module's tests (which only read)."""
    tracker = Tracker("shapes", workdir=seed_store(store_template, tmp_path_factory.mktemp("shapes")))
    names = class_names_param(BOARD_CLASSES)
    _log(tracker, "unet_bn", "shapes", 0, _shapes_metrics(0.8, 0.9, 0.8, 0.7), **names)
    _log(tracker, "unet_bn", "shapes", 1, _shapes_metrics(0.7, 0.7, 0.7, 0.7), **names)
    # recorded without class names, and last (MLflow lists it first): its keys are found by their form
    _log(tracker, "unet", "carvana", 0, {"dice": 0.9, "iou": 0.8, "misclassified": 0.1})
    _log(tracker, "unet", "shapes", 0, _shapes_metrics(0.6, 0.5, 0.6, 0.7))
    return tracker


def test_the_board_aggregates_per_class_dice_over_seeds(shapes_board: Tracker) -> None:
    board = build("shapes", shapes_board.uri)
    table = board.table.set_index(["dataset", "model"])
    assert table.loc[("shapes", "unet_bn"), "dice_disc_mean"] == pytest.approx(0.8)
    assert table.loc[("shapes", "unet_bn"), "dice_disc_std"] == pytest.approx(np.std([0.9, 0.7], ddof=1))
    assert table.loc[("shapes", "unet_bn"), "dice_triangle_std"] == pytest.approx(0.0)
    assert table.loc[("shapes", "unet"), "dice_square_mean"] == pytest.approx(0.6)
    assert table.loc[("shapes", "unet"), "dice_square_std"] == 0.0  # one seed
    assert table.loc[("shapes", "unet_bn"), "iou_square_mean"] == pytest.approx(0.375)
    assert np.isnan(table.loc[("carvana", "unet"), "dice_disc_mean"])
    # class order, not alphabetical, from the recorded class names
    assert class_columns(board.table, suffix="_mean") == ["dice_triangle", "dice_square", "dice_disc"]
    assert class_columns(board.runs, metric="iou") == ["iou_triangle", "iou_square", "iou_disc"]


def test_the_board_shows_a_dice_column_per_class(shapes_board: Tracker, tmp_path: Path) -> None:
    board = build("shapes", shapes_board.uri)
    paths = write_report(board, tmp_path / "out", experiment="shapes", tracking_uri=shapes_board.uri)
    md = paths["md"].read_text()
    shapes = md.split("## shapes")[1].split("## ")[0]
    carvana = md.split("## carvana")[1].split("## ")[0]
    header = next(line for line in shapes.splitlines() if line.startswith("| rank"))
    cells = [c.strip() for c in header.strip("|").split("|")]
    assert cells[cells.index("Dice") : cells.index("Dice") + 5] == [
        "Dice",
        "Dice triangle",
        "Dice square",
        "Dice disc",
        "IoU",
    ]
    row = next(line for line in shapes.splitlines() if "| unet_bn" in line)
    values = [c.strip() for c in row.strip("|").split("|")]
    at = cells.index("Dice triangle")
    assert values[at : at + 3] == ["0.7000 ± 0.0000", "0.7500 ± 0.0707", "0.8000 ± 0.1414"]
    # a binary dataset's table is as before: no per-class columns
    assert "Dice disc" not in carvana and "| Dice | IoU |" in carvana
    with open(paths["csv"]) as f:
        rows = {r["model"] + "/" + r["dataset"]: r for r in csv.DictReader(f)}
    assert float(rows["unet_bn/shapes"]["iou_triangle_mean"]) == pytest.approx(0.35)


def test_a_run_with_unreadable_class_names_is_left_out_with_the_reason(
    tmp_path: Path, fresh_store: Callable[[Path], Path]
) -> None:
    tracker = Tracker("bad", workdir=fresh_store(tmp_path))
    _log(tracker, "unet", "shapes", 0, _shapes_metrics(0.6, 0.5, 0.6, 0.7), **class_names_param(SHAPES))
    bad = _log(tracker, "unet", "shapes", 1, _shapes_metrics(0.6, 0.5, 0.6, 0.7), class_names="disc,square")
    board = build("bad", tracker.uri)
    assert len(board.runs) == 1
    assert board.excluded == [
        f"unet-shapes-s1 ({bad[:8]}): param class_names='disc,square' is not a JSON list of class names"
    ]


def test_the_required_keys_are_unchanged() -> None:
    # per-class figures are extra: a binary run is complete without them
    assert set(COST_KEYS) <= set(COST) and "dice_disc" not in QUALITY_KEYS


# -- prediction of four classes ---------------------------------------------------------------------------


def test_predict_writes_class_indices_and_a_tint_per_class(tmp_path: Path) -> None:
    levels = np.array([0, 85, 170, 255], np.uint8)  # class k at gray k/3: the model reads it back
    classes = np.zeros((12, 16), np.int64)
    classes[:6, 8:], classes[6:, :8], classes[6:, 8:] = 1, 2, 3
    classes[0, 0] = 3  # a lone pixel: nothing is smoothed away
    Image.fromarray(levels[classes]).save(tmp_path / "shapes.png")
    model = GrayToClass().eval()
    [outcome] = predict_files(
        model,
        [tmp_path / "shapes.png"],
        tmp_path / "out",
        scale="none",
        overlays=True,
        inferer=TiledInferer(tile=8),  # several tiles: the stitching keeps the classes
        device="cpu",
        progress=False,
    )
    assert outcome.ok, outcome.error
    with Image.open(tmp_path / "out" / "shapes_mask.png") as im:
        assert im.mode == "L"
        mask = np.asarray(im)
    np.testing.assert_array_equal(mask, classes)
    assert set(np.unique(mask)) == {0, 1, 2, 3}
    with Image.open(tmp_path / "out" / "shapes_overlay.png") as im:
        rgb = np.asarray(im.convert("RGB")).astype(int)
    gray = levels[classes].astype(int)
    assert (rgb[classes == 0] == gray[classes == 0][:, None]).all()  # the background is left as it is
    tints = set()
    for k in (1, 2, 3):
        colours = {tuple(c) for c in rgb[classes == k]}
        assert len(colours) == 1, (k, colours)  # one colour per class (one gray level per class here)
        (colour,) = colours
        assert len(set(colour)) > 1, colour  # tinted, not gray
        tints.add(colour)
    assert len(tints) == 3
