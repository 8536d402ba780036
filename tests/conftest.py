"""Shared fixtures. Every test runs with the network closed except the loopback interface, and with one
torch thread per process."""

from __future__ import annotations

import functools
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from zoo.data.synthetic import write_car_twin, write_em_twin
from zoo.harness.tracking import default_tracking_uri, open_client, sqlite_path, store_lock

from .helpers import real_data_root, seed_store

# One torch thread here and in the subprocesses tests start, unless OMP_NUM_THREADS says otherwise: the
# tests' networks are tiny, and where the cores are shared (other jobs, a test's own subprocesses) a
# thread that has to wait for a core holds up every operation: the suite ran several times slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

_LOOPBACK = {"127.0.0.1", "::1", "localhost"}


def _host(address: Any) -> str | None:
    return address[0] if isinstance(address, tuple) and address else None


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Refuse any connection or name lookup that leaves this machine (tests must never touch a hub)."""
    real_connect = socket.socket.connect
    real_getaddrinfo = socket.getaddrinfo

    def guarded_connect(self: socket.socket, address: Any) -> Any:
        host = _host(address)
        if host is not None and host not in _LOOPBACK:
            raise OSError(f"tests may not reach the network (connect to {address!r} refused)")
        return real_connect(self, address)

    def guarded_getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host not in _LOOPBACK and host is not None:
            raise socket.gaierror(f"tests may not reach the network (lookup of {host!r} refused)")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    monkeypatch.setattr(socket, "getaddrinfo", guarded_getaddrinfo)


@pytest.fixture(autouse=True)
def _seeded() -> Iterator[None]:
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def real_data() -> Path:
    """The real data folder; tests that use it skip cleanly where it is absent."""
    root = real_data_root()
    if root is None:
        pytest.skip("real data not found at ../shared/data (set UNET_ZOO_DATA to its path)")
    return root


@pytest.fixture(scope="session")
def em_twin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic ISBI twin (6 labelled slices of 128 px), shared by the tests."""
    return write_em_twin(tmp_path_factory.mktemp("em"), count=6, seed=3, size=128)


@pytest.fixture(scope="session")
def car_twin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic Carvana twin (3 cars, 40 images of 96x144)."""
    return write_car_twin(tmp_path_factory.mktemp("car"), count=40, seed=5, height=96, width=144)


@pytest.fixture(scope="session")
def store_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty MLflow SQLite store, built once: MLflow creates a new store's tables through its schema
    migrations, seconds each time, so tests whose subject is not that step start from a copy. Under
    pytest-xdist the workers share one, built by whichever comes first (the others wait on its lock)."""
    base = tmp_path_factory.getbasetemp()
    workdir = (base.parent if "PYTEST_XDIST_WORKER" in os.environ else base) / "store-template"
    uri = default_tracking_uri(workdir)
    path = sqlite_path(uri)
    assert path is not None, uri
    with store_lock(workdir / "template"):  # not the store's own lock: opening the store takes that
        if not (workdir / "ready").exists():
            open_client(uri).search_experiments()  # the store exists once its tables answer
            (workdir / "ready").touch()
    assert path.is_file(), uri
    return path


@pytest.fixture
def fresh_store(store_template: Path) -> Callable[[Path], Path]:
    """``fresh_store(workdir)``: ``workdir`` (created) holding a copy of the empty store where a Tracker,
    the CLI or a subprocess finds its default store (``workdir/mlflow.db``); returns ``workdir``."""

    return functools.partial(seed_store, store_template)
