"""Synthetic twins are generated once per settings and appear whole, even when two runs race for one."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from zoo.data.registry import get_dataset
from zoo.harness.config import TrainConfig
from zoo.harness.data import _synthetic_root as synthetic_root


def _config(dataset: str) -> TrainConfig:
    settings = {"model": "unet_bn", "dataset": dataset, "synthetic": {"count": 4, "size": 64}}
    return TrainConfig.from_dict(settings)


def _synthetic_root(cfg: TrainConfig, workdir: Path) -> Path:
    return synthetic_root(get_dataset(cfg.dataset), cfg.synthetic, workdir)


def test_two_runs_generating_one_twin_at_once_both_get_it_whole(tmp_path: Path) -> None:
    for dataset in ("isbi2012", "carvana"):
        with ThreadPoolExecutor(2) as pool:
            configs = [_config(dataset), _config(dataset)]
            roots = list(pool.map(lambda c: _synthetic_root(c, tmp_path), configs))
        assert roots[0] == roots[1] and (roots[0] / ".complete").is_file()
    leftovers = [p.name for p in (tmp_path / "synthetic").iterdir() if p.name.startswith(".")]
    assert leftovers == []  # the losing copy is removed
    assert len(list((tmp_path / "synthetic").iterdir())) == 2


def test_a_twin_cut_short_is_never_used_under_its_real_name(tmp_path: Path) -> None:
    root = _synthetic_root(_config("isbi2012"), tmp_path)
    files = sorted(p.relative_to(root) for p in root.rglob("*.png"))
    # what an older version killed mid-way left behind: the folder without its completion mark
    (root / ".complete").unlink()
    (root / "train" / "image" / "0.png").write_bytes(b"truncated")
    again = _synthetic_root(_config("isbi2012"), tmp_path)
    assert again == root and (root / ".complete").is_file()
    assert sorted(p.relative_to(root) for p in root.rglob("*.png")) == files
    assert (root / "train" / "image" / "0.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_temp_folders_of_killed_writers_are_cleared_after_an_hour(tmp_path: Path) -> None:
    import os
    import time

    root = _synthetic_root(_config("isbi2012"), tmp_path)
    stale = root.parent / f".{root.name}.dead.tmp"
    fresh = root.parent / f".{root.name}.busy.tmp"
    stale.mkdir()
    fresh.mkdir()
    hours_ago = time.time() - 7200
    os.utime(stale, (hours_ago, hours_ago))
    (root / ".complete").unlink()  # forces generation, which first sweeps old temp folders
    _synthetic_root(_config("isbi2012"), tmp_path)
    assert not stale.exists() and fresh.exists()  # another writer may still be filling that one
