"""Opening an MLflow store: the tracking URI, the lock beside a SQLite file, and the locked client.

Everything that reads or writes MLflow opens it through :func:`open_client`: the harness's record
(:mod:`zoo.harness.tracking`, which re-exports these names), the report, tuning, and the weights that
come from MLflow's model registry (:mod:`zoo.weights.mlflow_registry`). The last is why this module
sits outside the harness package: the factory resolves ``models:/NAME@ALIAS`` weights through it, and
importing anything under ``zoo.harness`` runs the harness package, which imports the factory.

Default store: a SQLite file (embedded; nothing to start), ``sqlite:///<workdir>/mlflow.db``;
``MLFLOW_TRACKING_URI`` points everything at a server instead (:func:`default_tracking_uri`). MLflow
creates and migrates a SQLite store's tables as a client first opens it; two processes doing that at
once race ("table ... already exists"), so :func:`open_client` holds an exclusive lock on the file
``<db>.lock`` beside the store meanwhile (:func:`store_lock`). A file that is not an SQLite database
(damaged, or something else) is a :class:`StoreError` naming it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.request import url2pathname

from zoo.errors import ZooError

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

__all__ = ["StoreError", "default_tracking_uri", "open_client", "sqlite_path", "store_lock"]

log = logging.getLogger(__name__)


class StoreError(ZooError, RuntimeError):
    """The MLflow store cannot be used: its file is damaged or not an SQLite database."""


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` tracking URI (SQLAlchemy's form: ``sqlite:///relative`` or
    ``sqlite:////absolute``), else None (a server, a ``file:`` store, an in-memory database)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri.removeprefix("sqlite:///").partition("?")[0]
    return None if path in ("", ":memory:") else Path(url2pathname(path))


def open_client(uri: str) -> MlflowClient:
    """An ``MlflowClient`` on ``uri``, opened under :func:`store_lock` (MLflow creates or migrates a
    SQLite store's tables as it opens it).

    Raises:
        StoreError: a SQLite store whose file is damaged or not a database.
    """
    from mlflow.tracking import MlflowClient  # imported late: mlflow takes seconds to import

    db = sqlite_path(uri)
    with store_lock(db):
        try:
            return MlflowClient(tracking_uri=uri)
        except Exception as err:
            damage = _is_damaged(err)
            if damage is None:
                raise
            raise StoreError(
                f"{db}: the MLflow store cannot be read ({damage}): the file is damaged or not an SQLite "
                "database. Move it aside and run again for a fresh store (its runs are lost unless "
                f"`sqlite3 {db} .recover` saves them), or use another --workdir"
            ) from err


@contextlib.contextmanager
def store_lock(db: Path | None, *, wait: bool = True) -> Iterator[None]:
    """Hold an exclusive lock on ``<db>.lock`` (a file beside the SQLite store ``db``) for the block: one
    process at a time creates or migrates the store. No lock for None, nor where ``fcntl`` is missing
    (not POSIX) or the lock file cannot be made (then MLflow's own error about the store says more).
    With ``wait=False`` a lock another process holds raises BlockingIOError at once."""
    try:
        import fcntl
    except ImportError:  # Windows: the suite's own ordering (Tracker before workers) has to do
        yield
        return
    if db is None:
        yield
        return
    try:
        db.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(db.with_name(db.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as err:
        log.debug("%s: no lock file beside it (%s); opening the store unlocked", db, err)
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)  # freed when closed or dead
        yield
    finally:
        os.close(fd)


def _is_damaged(err: BaseException) -> sqlite3.DatabaseError | None:
    """The SQLite error behind ``err`` when the file itself is bad ("file is not a database", "database
    disk image is malformed"); a locked or busy database is an OperationalError, not this."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, sqlite3.DatabaseError) and not isinstance(seen, sqlite3.OperationalError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def default_tracking_uri(workdir: str | Path) -> str:
    """``MLFLOW_TRACKING_URI`` when it is set, else the zoo's default store: the SQLite file
    ``<workdir>/mlflow.db`` (an absolute URI, whatever the current folder becomes)."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{(Path(workdir).resolve() / 'mlflow.db').as_posix()}"
