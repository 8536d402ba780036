"""Bad input and faults: each becomes one clear line (the file or value, what is wrong, the fix), the
documented exit code, and nothing written or lost.

The CLI prints a :class:`zoo.errors.ZooError` as ``unet-zoo: error: ...`` with exit code 2 and lets any
other exception (a bug) keep its traceback; ``data verify`` lists problems with exit code 1; ``predict``
reports each input it could not read and exits 1 (the other inputs are still predicted).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from zoo.cli import main
from zoo.data.datasets import ISBI2012Dataset
from zoo.data.io import DataError, read_image, read_stack, write_image, write_stack
from zoo.data.verify import verify_dataset
from zoo.errors import ConfigError, ZooError

from .helpers import TINY_RUN, seed_store

# -- helpers -----------------------------------------------------------------------------------------------


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    """The CLI's stderr, checked to be the one ``unet-zoo: error:`` line."""
    err = capsys.readouterr().err.strip()
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("unet-zoo: error: "), err
    return lines[0]


def _snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` with the sha256 of its bytes: equal snapshots, nothing written or lost."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(width: int, height: int, rows: bytes) -> bytes:
    """An 8-bit gray PNG whose header says ``width x height`` and whose (complete, valid) zlib stream holds
    ``rows``: the raw filtered rows, fewer than promised for a truncated file."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(rows))
        + _png_chunk(b"IEND", b"")
    )


def _rows(image: np.ndarray) -> bytes:
    return b"".join(b"\0" + row.tobytes() for row in image)  # filter type 0 (none) per row


def _sixteen(image: np.ndarray) -> Image.Image:
    """The 8-bit ``image`` as a 16-bit gray image holding v * 257 (the full-range 16-bit copy)."""
    return Image.fromarray(image.astype(np.uint16) * 257)


def _tiny_train(workdir: Path, *settings: str) -> list[str]:
    """``unet-zoo train`` argv of :data:`TINY_RUN` with ``--set`` ``settings`` on top."""
    argv = [
        "train",
        "--model",
        TINY_RUN["model"],
        "--dataset",
        TINY_RUN["dataset"],
        "--workdir",
        str(workdir),
    ]
    for key, value in TINY_RUN.items():
        if key not in ("model", "dataset"):
            argv += ["--set", f"{key}={json.dumps(value)}"]
    for setting in settings:
        argv += ["--set", setting]
    return argv


@pytest.fixture(scope="module")
def store_template(tmp_path_factory: pytest.TempPathFactory, store_template: Path) -> Path:
    """The shared empty store (conftest) with experiment "template-suite"; tests copy it."""
    from zoo.harness.tracking import Tracker

    workdir = seed_store(store_template, tmp_path_factory.mktemp("store"))
    Tracker("template-suite", workdir=workdir)
    return workdir / "mlflow.db"


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from zoo import create_model
    from zoo.weights import save_weights

    torch.manual_seed(1)
    model = create_model("unet_bn", in_channels=1, num_classes=2, base_channels=4).eval()
    path = tmp_path_factory.mktemp("weights") / "tiny.safetensors"
    save_weights(model, path)
    return path


def _predict(weights: Path, out: Path, *inputs: Path) -> int:
    argv = ["predict", "--model", "unet_bn", "--weights", str(weights), "--out", str(out), "--amp", "none"]
    return main([*argv, *map(str, inputs)])


# -- 1. 16-bit images: read at their depth, scaled by the 16-bit range -----------------------------------


def _sixteen_bit_copy(em_twin: Path, root: Path) -> Path:
    shutil.copytree(em_twin, root)
    for path in (root / "train" / "image").glob("*.png"):
        _sixteen(read_image(path)).save(path)
    assert Image.open(root / "train" / "image" / "0.png").mode == "I;16"
    return root


def test_a_16_bit_isbi_slice_loads_as_its_8_bit_original(em_twin: Path, tmp_path: Path) -> None:
    wide = ISBI2012Dataset(_sixteen_bit_copy(em_twin, tmp_path / "wide"))
    narrow = ISBI2012Dataset(em_twin)
    assert len(wide) == len(narrow) == 6
    for i in range(len(wide)):
        (image, mask), (image8, mask8) = wide[i], narrow[i]
        torch.testing.assert_close(image, image8, rtol=0, atol=0)  # v * 257 / 65535 == v / 255 exactly
        assert torch.equal(mask, mask8)


def test_a_16_bit_tiff_stack_reads_as_its_8_bit_original(tmp_path: Path) -> None:
    slices = np.random.default_rng(0).integers(0, 256, (3, 20, 30), dtype=np.uint8)
    pages = [_sixteen(s) for s in slices]
    pages[0].save(tmp_path / "wide.tif", save_all=True, append_images=pages[1:])
    write_stack(tmp_path / "narrow.tif", slices)
    np.testing.assert_array_equal(read_stack(tmp_path / "wide.tif"), slices)  # Pillow's own L would clip


def test_predict_gives_a_16_bit_image_the_mask_of_its_8_bit_original(weights: Path, tmp_path: Path) -> None:
    image = np.random.default_rng(3).integers(0, 256, (48, 40), dtype=np.uint8)
    write_image(tmp_path / "in8" / "x.png", image)
    (tmp_path / "in16").mkdir()
    _sixteen(image).save(tmp_path / "in16" / "x.png")
    assert _predict(weights, tmp_path / "o8", tmp_path / "in8" / "x.png") == 0
    assert _predict(weights, tmp_path / "o16", tmp_path / "in16" / "x.png") == 0
    np.testing.assert_array_equal(
        read_image(tmp_path / "o16" / "x_mask.png"), read_image(tmp_path / "o8" / "x_mask.png")
    )


def test_verify_accepts_16_bit_slices_and_says_so(em_twin: Path, tmp_path: Path) -> None:
    report = verify_dataset(_sixteen_bit_copy(em_twin, tmp_path / "wide"))
    assert report.ok, report.problems
    assert "6 image(s) are 16-bit: read scaled to 8 bits (v * 255 / 65535)" in report.notes


# -- 2. truncated files and the pixel limit ----------------------------------------------------------------


def test_a_png_with_fewer_rows_than_its_header_promises_is_refused(tmp_path: Path) -> None:
    image = np.random.default_rng(0).integers(0, 256, (32, 64), dtype=np.uint8)
    short = tmp_path / "short.png"
    short.write_bytes(_png(64, 64, _rows(image)))  # the header says 64 rows; the data holds 32
    with Image.open(short) as im:  # the case itself: Pillow decodes it, the missing rows black
        im.load()
        assert np.array(im)[32:].max() == 0
    before = short.read_bytes()
    with pytest.raises(
        DataError,
        match=r"short\.png: truncated: its header promises 64 rows of 64 pixels, the file holds 32; .*"
        r"re-export or re-download it",
    ):
        read_image(short)
    assert short.read_bytes() == before
    (tmp_path / "whole.png").write_bytes(_png(64, 32, _rows(image)))  # the same rows, a true header
    np.testing.assert_array_equal(read_image(tmp_path / "whole.png"), image)


@pytest.mark.parametrize("keep", [0.3, 0.6, 0.95])
def test_a_png_cut_short_is_refused_as_truncated(keep: float, tmp_path: Path) -> None:
    path = tmp_path / "cut.png"
    write_image(path, np.random.default_rng(1).integers(0, 256, (64, 64), dtype=np.uint8))
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(DataError, match=r"cut\.png: truncated: .*re-export or re-download it"):
        read_image(path)


def test_a_truncated_tiff_stack_is_refused_by_the_isbi_loader(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    write_stack(tmp_path / "train-volume.tif", rng.integers(0, 256, (4, 32, 32), dtype=np.uint8))
    write_stack(tmp_path / "train-labels.tif", rng.choice(np.array([0, 255], dtype=np.uint8), (4, 32, 32)))
    volume = tmp_path / "train-volume.tif"
    volume.write_bytes(volume.read_bytes()[:-100])  # the last page cut short
    before = _snapshot(tmp_path)
    with pytest.raises(DataError, match=r"train-volume\.tif: truncated: .*re-export or re-download it"):
        ISBI2012Dataset(tmp_path)
    assert _snapshot(tmp_path) == before


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_image_is_said_to_be_unreadable_not_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "locked.png"
    write_image(path, np.zeros((4, 4), dtype=np.uint8))
    path.chmod(0)
    try:
        with pytest.raises(DataError, match=r"locked\.png: permission denied .*make the file readable"):
            read_image(path)
    finally:
        path.chmod(0o644)


def _truncated_slice(root: Path) -> Path:
    bad = root / "train" / "image" / "2.png"
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    return bad


def test_verify_names_a_truncated_slice(
    em_twin: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "em"
    shutil.copytree(em_twin, root)
    bad = _truncated_slice(root)
    before = _snapshot(root)
    assert main(["data", "verify", str(root)]) == 1
    out = capsys.readouterr().out
    assert f"PROBLEM {bad}: truncated: " in out and "re-export or re-download it" in out
    assert "1 problem(s)" in out
    assert _snapshot(root) == before


def test_predict_refuses_a_truncated_png_and_writes_nothing_for_it(
    em_twin: Path, weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "in" / "2.png"
    bad.parent.mkdir()
    shutil.copy(em_twin / "train" / "image" / "2.png", bad)
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    assert _predict(weights, tmp_path / "out", bad) == 1  # predict: 1 when an input failed
    err = capsys.readouterr().err
    assert f"{bad}: truncated: " in err and "re-export or re-download it" in err
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())
    assert bad.read_bytes() == data[: len(data) // 2]


def test_a_huge_header_is_refused_by_the_pixel_limit_until_it_is_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png(20000, 20000, b"\0" * 100))  # 130 bytes promising 400 Mpx
    monkeypatch.delenv("UNET_ZOO_MAX_PIXELS", raising=False)
    with pytest.raises(
        DataError,
        match=r"bomb\.png: 20000x20000 = 400,000,000 pixels is above the limit of 268,435,456 .*"
        r"decompression bombs.*raise the limit: UNET_ZOO_MAX_PIXELS=400000000 \(an environment variable\)",
    ):
        read_image(bomb)
    monkeypatch.setenv("UNET_ZOO_MAX_PIXELS", "400000000")
    with pytest.raises(DataError, match=r"bomb\.png: truncated"):  # past the limit: the data is short
        read_image(bomb)


def test_predict_keeps_the_pixel_limit(
    weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png(20000, 20000, b"\0" * 100))
    assert _predict(weights, tmp_path / "out", bomb) == 1
    assert "raise the limit: UNET_ZOO_MAX_PIXELS=400000000" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_a_bad_pixel_limit_setting_is_one_line(
    em_twin: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("UNET_ZOO_MAX_PIXELS", "lots")
    assert main(["data", "verify", str(em_twin)]) == 2
    assert "UNET_ZOO_MAX_PIXELS='lots' is not a positive whole number of pixels" in _error_line(capsys)


# -- 3. files beside the ISBI slices -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("9.jpg", "not a .png slice; the ISBI layout holds only <N>.png here"),
        ("9.tif", "not a .png slice; the ISBI layout holds only <N>.png here"),
        ("9.PNG", "not a .png slice; the ISBI layout holds only <N>.png here"),
        ("extra.png", "name is not <N>.png (the slice's number)"),
    ],
)
def test_verify_flags_files_beside_the_isbi_slices(
    name: str, says: str, em_twin: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "em"
    shutil.copytree(em_twin, root)
    stray = root / "train" / "image" / name
    shutil.copy(root / "train" / "image" / "0.png", stray)
    before = _snapshot(root)
    assert main(["data", "verify", str(root)]) == 1
    out = capsys.readouterr().out
    assert f"PROBLEM {stray}: {says}" in out
    problems = [line for line in out.splitlines() if "PROBLEM" in line]
    assert all(f"PROBLEM {stray}: " in line for line in problems)  # extra.png also lacks a label
    assert _snapshot(root) == before


# -- 4. a non-finite loss ------------------------------------------------------------------------------


def test_a_non_finite_loss_is_one_line_and_the_run_failed_keeping_its_checkpoint(
    tmp_path: Path, store_template: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    workdir = tmp_path / "runs"
    workdir.mkdir()
    shutil.copy(store_template, workdir / "mlflow.db")
    # epoch 0's one step starts from sane weights (a finite loss) and leaves them ~1e30: epoch 1's loss
    # is not finite, after epoch 0's checkpoint
    assert main([*_tiny_train(workdir, "lr=1e30", "epochs=2"), "--experiment", "nan"]) == 2
    line = _error_line(capsys)
    assert "unet_bn-isbi2012-s0: non-finite loss (nan) at epoch 1, batch 0" in line
    assert "the run is marked FAILED and the checkpoint of the last good epoch kept" in line
    (run_dir,) = (workdir / "nan").iterdir()
    assert (run_dir / "checkpoint.pt").is_file()
    from zoo.harness.tracking import Tracker

    run_id = json.loads((run_dir / "run.json").read_text())["run_id"]
    assert Tracker("nan", workdir=workdir).run_status(run_id) == "FAILED"


# -- 5. two first uses of a store at once ---------------------------------------------------------------


def _open_tracker(workdir: str, barrier: multiprocessing.synchronize.Barrier) -> None:
    from zoo.harness.tracking import Tracker

    barrier.wait()
    Tracker("race", workdir=workdir)


def test_two_trackers_on_a_fresh_store_at_once_both_succeed(tmp_path: Path) -> None:
    import mlflow.tracking  # noqa: F401  (imported before the fork: the children start at once)

    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(2)
    workers = [ctx.Process(target=_open_tracker, args=(str(tmp_path), barrier)) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
    assert [w.exitcode for w in workers] == [0, 0]  # unlocked, one died: "table ... already exists"
    assert (tmp_path / "mlflow.db.lock").is_file()
    from zoo.harness.tracking import Tracker

    experiments = Tracker("race", workdir=tmp_path).client.search_experiments()
    assert sorted(e.name for e in experiments) == ["Default", "race"]  # made once


# -- 6. the CLI reports the project's errors, and only those ---------------------------------------------


def test_a_bug_keeps_its_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    import zoo.cli

    def broken(args: object) -> int:
        raise ValueError("a bug, not a bad input")

    monkeypatch.setattr(zoo.cli, "_cmd_recipes", broken)
    with pytest.raises(ValueError, match="a bug, not a bad input"):
        main(["recipes"])


def test_a_zoo_error_is_one_line_with_exit_code_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import zoo.cli

    def refuses(args: object) -> int:
        raise ConfigError("first line\nsecond line")

    monkeypatch.setattr(zoo.cli, "_cmd_recipes", refuses)
    assert main(["recipes"]) == 2
    assert _error_line(capsys) == "unet-zoo: error: first line second line"


def _user_errors() -> list[tuple[type[BaseException], type[BaseException]]]:
    from zoo.data.registry import UnknownDatasetError
    from zoo.harness.config import UnknownConfigKeyError
    from zoo.harness.recipes import UnknownRecipeError
    from zoo.harness.suites import UnknownSuiteError
    from zoo.harness.tracking import StoreError
    from zoo.models.base import InputSizeError
    from zoo.report.leaderboard import ExperimentError
    from zoo.report.render import ReportFolderError

    return [
        (DataError, ValueError),
        (ConfigError, ValueError),
        (UnknownConfigKeyError, TypeError),
        (UnknownDatasetError, ValueError),
        (UnknownRecipeError, ValueError),
        (UnknownSuiteError, FileNotFoundError),
        (ReportFolderError, ValueError),
        (ExperimentError, ValueError),
        (InputSizeError, ValueError),
        (StoreError, RuntimeError),
    ]


@pytest.mark.parametrize(("error", "builtin"), _user_errors(), ids=lambda c: c.__name__)
def test_user_errors_are_zoo_errors_keeping_their_builtin_base(
    error: type[BaseException], builtin: type[BaseException]
) -> None:
    assert issubclass(error, ZooError) and issubclass(error, builtin)


# -- 7. further bad input: one line, exit code 2, nothing written -----------------------------------------


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _damaged_run(root: Path) -> Path:
    """A run folder whose config.json was cut short."""
    _write(root / "run" / "best.safetensors", "weights")
    return _write(root / "run" / "config.json", '{"model": ').parent


# each: (id, argv from the test's folder, a part of the message); the folder must be left as it was
BAD_COMMANDS: list[tuple[str, Callable[[Path], list[str]], str]] = [
    (
        "resume-not-a-run",
        lambda t: ["train", "--resume", str(t / "notrun"), "--workdir", str(t / "runs")],
        "notrun: not a run folder (no run.json); pass the folder a run created",
    ),
    (
        "suite-unknown-name",
        lambda t: ["bench", "--suite", "smok", "--workdir", str(t / "runs")],
        "suite 'smok' not found. Did you mean 'smoke'? Known suites: ",
    ),
    (
        "suite-toml-syntax",
        lambda t: [
            "bench",
            "--suite",
            str(_write(t / "s.toml", 'name = "x"\nseeds = [0,\n')),
            "--workdir",
            str(t / "runs"),
        ],
        "s.toml: not a valid TOML suite file (",
    ),
    (
        "suite-key-typo",
        lambda t: [
            "bench",
            "--suite",
            str(_write(t / "s.toml", 'name = "x"\nseed = [0]\n')),
            "--workdir",
            str(t / "runs"),
        ],
        "s.toml: unknown suite key(s) ['seed']. 'seed' (did you mean 'seeds'?)",
    ),
    (
        "suite-model-for-models",
        lambda t: [
            "bench",
            "--suite",
            str(_write(t / "s.toml", 'model = ["unet"]\n')),
            "--workdir",
            str(t / "runs"),
        ],
        "s.toml: model = ['unet'] must be tables [model.NAME] with TrainConfig fields (the list is models = ",
    ),
    (
        "augment-key",
        lambda t: _tiny_train(t / "runs", 'augment={"rotaton": 15}'),
        "augment key 'rotaton' is unknown. Did you mean 'rotation'?",
    ),
    (
        "augment-type",
        lambda t: _tiny_train(t / "runs", 'augment={"hflip": "yes"}'),
        "augment hflip='yes': expected a bool",
    ),
    (
        "synthetic-key",
        lambda t: _tiny_train(t / "runs", 'synthetic={"cuont": 4}'),
        "synthetic={'cuont': 4}: the twin's settings are count, size and seed",
    ),
    (
        "resize-not-a-size",
        lambda t: _tiny_train(t / "runs", "resize=[1]"),
        "resize=[1]: expected [H, W], two whole numbers >= 1, or null",
    ),
    (
        "overrides-not-a-table",
        lambda t: _tiny_train(t / "runs", "overrides=3"),
        "overrides=3: expected a table of model arguments, e.g. --override base_channels=16",
    ),
    (
        "set-without-equals",
        lambda t: _tiny_train(t / "runs", "epochs"),
        "--set 'epochs': expected KEY=VALUE, e.g. --set epochs=5",
    ),
    (
        "recipe-for-another-dataset",
        lambda t: [
            "train",
            "--recipe",
            "unet_bn-isbi2012-cpu",
            "--dataset",
            "carvana",
            "--workdir",
            str(t / "runs"),
        ],
        "recipe 'unet_bn-isbi2012-cpu' is made for dataset 'isbi2012', not 'carvana'; pick a recipe for ",
    ),
    (
        "dataset-toml-syntax",
        lambda t: [
            "train",
            "--model",
            "unet_bn",
            "--dataset",
            str(_write(t / "my.toml", 'name = "x"\nimages = "i"\nmasks =\n')),
            "--workdir",
            str(t / "runs"),
        ],
        "my.toml: not a readable TOML file (Invalid value (at line 3, column 8)); fix it",
    ),
    (
        "dataset-toml-missing-folder",
        lambda t: [
            "train",
            "--model",
            "unet_bn",
            "--dataset",
            str(
                _write(t / "my.toml", 'name = "x"\nimages = "gone"\nmasks = "m"\n[classes]\nbg = 0\nfg = 1\n')
            ),
            "--workdir",
            str(t / "runs"),
        ],
        "my.toml: images = 'gone': folder ",
    ),
    (
        "data-init-empty-folder",
        lambda t: [
            "data",
            "init",
            "--images",
            str(t / "notrun"),
            "--masks",
            str(t / "notrun"),
            "--out",
            str(t / "my.toml"),
        ],
        "notrun: no files found (looked for .png, .jpg",
    ),
    (
        "data-init-out-exists",
        lambda t: [
            "data",
            "init",
            "--images",
            "i",
            "--masks",
            "m",
            "--out",
            str(_write(t / "kept.toml", "mine")),
        ],
        "kept.toml exists; choose another --out, or --force to replace it",
    ),
    (
        "data-verify-missing-folder",
        lambda t: ["data", "verify", str(t / "gone")],
        "gone: not a folder",
    ),
    (
        "report-no-store",
        lambda t: ["report", "--experiment", "suite-smoke", "--workdir", str(t / "runs")],
        "runs/mlflow.db: nothing has been recorded there; run `unet-zoo bench` or `unet-zoo train` first",
    ),
    (
        "evaluate-no-weights",
        lambda t: ["evaluate", str(_write(t / "run" / "config.json", "{}").parent)],
        "run: no best.safetensors; the run ended before its first validation",
    ),
    (
        "evaluate-damaged-config",
        lambda t: ["evaluate", str(_damaged_run(t)), "--workdir", str(t / "runs")],
        "run/config.json: not valid JSON (",
    ),
]


@pytest.mark.parametrize(("argv", "message"), [c[1:] for c in BAD_COMMANDS], ids=[c[0] for c in BAD_COMMANDS])
def test_bad_input_is_one_line_and_leaves_the_folder_as_it_was(
    argv: Callable[[Path], list[str]], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "notrun").mkdir()
    args = argv(tmp_path)
    before = _snapshot(tmp_path)
    assert main(args) == 2
    assert message in _error_line(capsys)
    assert _snapshot(tmp_path) == before
    assert not (tmp_path / "runs").exists()


def _runs_recorded(workdir: Path) -> int:
    from zoo.harness.tracking import open_client

    client = open_client(f"sqlite:///{workdir.resolve() / 'mlflow.db'}")
    return len(client.search_runs([e.experiment_id for e in client.search_experiments()]))


def test_more_folds_than_slices_fail_before_a_run_starts(
    tmp_path: Path, store_template: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    workdir = tmp_path / "runs"
    workdir.mkdir()
    shutil.copy(store_template, workdir / "mlflow.db")
    assert main([*_tiny_train(workdir, "folds=50"), "--experiment", "folds"]) == 2
    line = _error_line(capsys)
    assert "folds=50 must be between 2 and the number of samples (6); set folds (and fold) within it" in line
    assert not (workdir / "folds").exists() and _runs_recorded(workdir) == 0


def test_a_mask_of_the_wrong_size_fails_at_train_time_naming_both_files(
    tmp_path: Path, store_template: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = np.random.default_rng(0)
    for i in range(4):
        write_image(
            tmp_path / "data" / "images" / f"s{i}.png", rng.integers(0, 256, (40, 40), dtype=np.uint8)
        )
        side = 30 if i == 2 else 40
        write_image(
            tmp_path / "data" / "masks" / f"s{i}.png", rng.integers(0, 2, (side, side), dtype=np.uint8)
        )
    spec = _write(
        tmp_path / "data" / "my.toml",
        'name = "sq"\nimages = "images"\nmasks = "masks"\n[classes]\nbackground = 0\nfg = 1\n',
    )
    workdir = tmp_path / "runs"
    workdir.mkdir()
    shutil.copy(store_template, workdir / "mlflow.db")
    data = _snapshot(tmp_path / "data")
    argv = [
        "train",
        "--model",
        "unet_bn",
        "--dataset",
        str(spec),
        "--workdir",
        str(workdir),
        "--experiment",
        "sq",
    ]
    assert main([*argv, "--set", "epochs=1", "--set", "crop=32", "--override", "base_channels=4"]) == 2
    line = _error_line(capsys)
    assert f"{tmp_path / 'data' / 'masks' / 's2.png'}: mask is 30x30 but its image" in line
    assert f"{tmp_path / 'data' / 'images' / 's2.png'} is 40x40" in line
    assert _snapshot(tmp_path / "data") == data
    assert not (workdir / "sq").exists() and _runs_recorded(workdir) == 0


def test_masks_that_are_all_empty_are_refused_by_data_init(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for i in range(3):
        write_image(tmp_path / "images" / f"{i}.png", np.full((8, 8), 100 + i, dtype=np.uint8))
        write_image(tmp_path / "masks" / f"{i}.png", np.zeros((8, 8), dtype=np.uint8))
    out = tmp_path / "my.toml"
    argv = ["data", "init", "--images", str(tmp_path / "images"), "--masks", str(tmp_path / "masks")]
    assert main([*argv, "--out", str(out)]) == 2
    assert "every mask holds the single value [0]; a segmentation needs 2 classes" in _error_line(capsys)
    assert not out.exists()


@pytest.mark.parametrize("command", ["train", "report"])
def test_a_damaged_store_is_named_and_left_as_it_is(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    workdir = tmp_path / "runs"
    db = _write(workdir / "mlflow.db", "not a database, whatever it once was\n" * 40)
    argv = (
        _tiny_train(workdir)
        if command == "train"
        else ["report", "--experiment", "x", "--workdir", str(workdir)]
    )
    before = db.read_bytes()
    assert main(argv) == 2
    line = _error_line(capsys)
    assert f"{db}: the MLflow store cannot be read (file is not a database)" in line
    assert "Move it aside and run again for a fresh store" in line
    assert db.read_bytes() == before
    assert sorted(p.name for p in workdir.iterdir() if p.name != "synthetic") == [
        "mlflow.db",
        "mlflow.db.lock",
    ]


def test_report_on_an_unknown_experiment_suggests_the_close_ones(
    tmp_path: Path, store_template: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    workdir = tmp_path / "runs"
    workdir.mkdir()
    shutil.copy(store_template, workdir / "mlflow.db")
    (workdir / "mlflow.db.lock").touch()  # made by the first opening: the lock, not a record
    before = _snapshot(tmp_path)
    assert main(["report", "--experiment", "template-suit", "--workdir", str(workdir)]) == 2
    line = _error_line(capsys)
    assert "no MLflow experiment 'template-suit' at sqlite:///" in line
    assert "Did you mean 'template-suite'? Experiments there: Default, template-suite" in line
    assert _snapshot(tmp_path) == before


def test_predict_never_overwrites_an_input(
    weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "in"
    write_image(folder / "a.png", np.full((32, 32), 50, dtype=np.uint8))
    write_image(
        folder / "a_mask.png", np.full((32, 32), 200, dtype=np.uint8)
    )  # an input named like an output
    before = _snapshot(folder)
    assert _predict(weights, folder, folder / "a.png", folder / "a_mask.png") == 1
    assert "its mask would overwrite the input" in capsys.readouterr().err
    after = _snapshot(folder)
    assert {k: after[k] for k in before} == before  # both inputs as they were


def test_predict_refuses_a_text_file_named_png(
    weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = _write(tmp_path / "in" / "notes.png", "these are my notes, not an image\n")
    assert _predict(weights, tmp_path / "out", fake) == 1
    err = capsys.readouterr().err
    assert f"{fake}: cannot decode image (cannot identify image file" in err
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())
    assert fake.read_text() == "these are my notes, not an image\n"
