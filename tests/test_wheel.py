"""The installed wheel works outside the repository: suites, recipes and shipped weights are package data.

The slow test builds the wheel from a copy of this checkout's files, installs it into a fresh virtual
environment that sees this environment's dependencies but not its editable install of the zoo, and runs
``unet-zoo recipes``, ``unet-zoo bench --suite smoke`` and ``unet-zoo predict`` from an empty folder.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from fnmatch import fnmatch
from pathlib import Path

import numpy as np
import pytest
import tomllib
from PIL import Image

from zoo.harness.suites import BUILTIN_SUITES_DIR, UnknownSuiteError, find_suite

ROOT = Path(__file__).resolve().parents[1]


def _git_files(root: Path) -> list[str]:
    """Tracked and untracked-but-not-ignored files of the checkout (what a build of it should see)."""
    if shutil.which("git") is None or not (root / ".git").exists():
        pytest.skip("not a git checkout: the wheel test builds from the checkout's files")
    out = subprocess.run(
        ["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        check=True,
        capture_output=True,
    ).stdout
    return sorted({name for name in out.decode().split("\0") if name and (root / name).is_file()})


# -- the lookup order -------------------------------------------------------------------------------------
def test_a_suite_is_found_by_path_then_in_the_users_folder_then_built_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert find_suite("smoke") == BUILTIN_SUITES_DIR / "smoke.toml"
    own = tmp_path / "benchmarks" / "suites"
    own.mkdir(parents=True)
    (own / "smoke.toml").write_text('name = "smoke"\n')
    (own / "mine.toml").write_text('name = "mine"\n')
    assert find_suite("smoke") == own / "smoke.toml"  # a user's suite shadows the built-in one
    assert find_suite("mine") == own / "mine.toml"
    elsewhere = tmp_path / "elsewhere.toml"
    elsewhere.write_text('name = "elsewhere"\n')
    assert find_suite(str(elsewhere)) == elsewhere
    with pytest.raises(UnknownSuiteError) as err:
        find_suite("mien")
    message = str(err.value)
    assert (
        "suite 'mien' not found. Did you mean 'mine'? Known suites: built-in cpu, default, gpu, smoke, "
        in (message)
    )
    assert "; yours: mine, smoke " in message
    assert f"(looked in {own}, then {BUILTIN_SUITES_DIR})" in message


def test_every_data_file_in_the_package_is_declared_as_package_data() -> None:
    """A file under zoo/ that is not Python must match a [tool.setuptools.package-data] pattern, or the
    wheel lacks it (as the suites once were)."""
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    data = [f for f in _git_files(ROOT) if f.startswith("zoo/") and not f.endswith(".py")]
    assert any(f.startswith("zoo/suites/") for f in data)
    missing = [
        f
        for f in data
        if not any(
            fnmatch(f, f"{package.replace('.', '/')}/{pattern}")
            for package, patterns in declared.items()
            for pattern in patterns
        )
    ]
    assert missing == [], f"add these to [tool.setuptools.package-data] in pyproject.toml: {missing}"


# -- the wheel, installed elsewhere ---------------------------------------------------------------------
def _run(argv: list[str | Path], *, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"{argv} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.mark.slow
def test_the_wheel_runs_recipes_bench_and_predict_from_an_empty_folder(tmp_path: Path) -> None:
    # no network, no user site, nothing from this checkout on the path, caches and stores in tmp_path
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MLFLOW_TRACKING_URI")}
    env |= {
        "PIP_NO_INDEX": "1",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PYTHONNOUSERSITE": "1",
        "UNET_ZOO_HOME": str(tmp_path / "home"),
        "UNET_ZOO_OFFLINE": "1",
        "UNET_ZOO_MANIFEST": "",
        "HF_HUB_OFFLINE": "1",
        "MPLCONFIGDIR": str(tmp_path / "mpl"),
    }
    # build from a copy: an in-tree build leaves build/lib behind, whose stale files would enter later wheels
    src = tmp_path / "src"
    for name in _git_files(ROOT):
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, src / name)
    dist = tmp_path / "dist"
    pip = [sys.executable, "-m", "pip"]
    _run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", dist, src], cwd=tmp_path, env=env)
    (wheel,) = dist.glob("unet_zoo-*.whl")

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", venv], cwd=tmp_path, env=env)
    bin_dir = venv / ("Scripts" if os.name == "nt" else "bin")
    python = bin_dir / "python"
    _run([python, "-m", "pip", "install", "--no-deps", "--no-index", wheel], cwd=tmp_path, env=env)
    # the dependencies come from this environment's site-packages as a plain path line, which (unlike a
    # site dir) does not run that folder's .pth files: the editable install's import hook stays out
    fresh_site = _run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp_path, env=env
    ).stdout.strip()
    ours = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
    Path(fresh_site, "deps.pth").write_text("".join(f"{p}\n" for p in ours))

    empty = tmp_path / "empty"
    empty.mkdir()
    where = _run(
        [
            python,
            "-c",
            "import zoo, zoo.harness.suites as s; print(zoo.__file__); print(s.find_suite('smoke'))",
        ],
        cwd=empty,
        env=env,
    ).stdout.split()
    assert [Path(p).is_relative_to(fresh_site) for p in where] == [True, True], where

    unet_zoo = bin_dir / "unet-zoo"
    recipes = _run([unet_zoo, "recipes"], cwd=empty, env=env).stdout
    listed = {line.split()[0] for line in recipes.splitlines() if line.strip()}
    for shipped in ("recipes.toml", "tuned.toml"):
        names = tomllib.loads((src / "zoo" / "harness" / shipped).read_text())
        assert set(names) <= listed, f"{shipped}: {sorted(set(names) - listed)} not listed"

    bench = _run(
        [
            unet_zoo,
            "bench",
            "--suite",
            "smoke",
            "--models",
            "unet_bn",
            "--datasets",
            "isbi2012",
            "--workdir",
            "W",
        ],
        cwd=empty,
        env=env,
    )
    (row,) = [line for line in bench.stdout.splitlines() if line.startswith("unet_bn-isbi2012-s0 ")]
    assert 0.0 <= float(row.split()[1]) <= 1.0  # its Dice
    assert "leaderboard: W/reports/suite-smoke/leaderboard.html" in bench.stdout
    board = (empty / "W" / "reports" / "suite-smoke" / "leaderboard.md").read_text()
    assert "unet_bn" in board and "isbi2012" in board
    assert "synthetic isbi2012 twin to W/synthetic/" in bench.stderr  # built-in synthetic data

    image = (np.random.default_rng(0).random((80, 96)) * 255).astype(np.uint8)
    Image.fromarray(image).save(empty / "slice.png")
    predict = _run(
        [
            unet_zoo,
            "predict",
            "--model",
            "unet_bn",
            "--weights",
            "isbi2012-w16-s0",
            "slice.png",
            "--out",
            "masks",
        ],
        cwd=empty,
        env=env,
    )
    assert "predicted 1 of 1 input(s)" in predict.stdout
    with Image.open(empty / "masks" / "slice_mask.png") as mask:
        assert mask.size == (96, 80)
        assert set(np.unique(np.asarray(mask)).tolist()) <= {0, 1}
    # everything the commands wrote is in the empty folder's W/ and masks/, none of it beside the checkout
    assert sorted(p.name for p in empty.iterdir()) == ["W", "masks", "slice.png"]
