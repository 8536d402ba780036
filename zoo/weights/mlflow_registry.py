"""Weights from MLflow's model registry: ``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` to a verified file.

``unet-zoo register`` (:mod:`zoo.harness.model_registry`) makes a harness run's best weights a version
of a registered model: an MLflow pyfunc model whose artifacts hold the run's ``best.safetensors``
unchanged, with the file's path in the model, size and sha256 as tags of the version (:data:`FILE_TAG`,
:data:`SIZE_TAG`, :data:`SHA256_TAG`). :func:`download_registered` resolves a spec to its version, downloads
that one file (never the rest of the model, never through ``mlflow.pyfunc.load_model``: nothing is
unpickled), checks its size and sha256 against the version's tags, and keeps it in the weights cache
under its sha256 (``UNET_ZOO_HOME``/weights/mlflow/), where a verified copy is reused without a download.

Which store: ``MLFLOW_TRACKING_URI`` when set (a team's server), else the zoo's default SQLite store of
the workdir, ``runs/mlflow.db`` of the current folder unless told otherwise
(:func:`zoo.mlflow_store.default_tracking_uri`).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zoo.errors import close_names
from zoo.mlflow_store import default_tracking_uri, open_client, sqlite_path
from zoo.weights.errors import ChecksumError, DownloadError, WeightsError
from zoo.weights.files import file_sha256
from zoo.weights.hub import cache_dir

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion
    from mlflow.tracking import MlflowClient

__all__ = [
    "FILE_TAG",
    "SHA256_TAG",
    "SIZE_TAG",
    "RegistryError",
    "RegistrySpec",
    "download_registered",
    "parse_spec",
    "registry_uri",
    "resolve_version",
]

log = logging.getLogger(__name__)

SHA256_TAG = "weights_sha256"
"""The version tag holding the sha256 of its weights file (64 lowercase hex digits)."""
SIZE_TAG = "weights_size"
"""The version tag holding the size of its weights file in bytes."""
FILE_TAG = "weights_file"
"""The version tag holding the weights file's path inside the version's model artifacts."""

_SPEC = re.compile(r"models:/(?P<name>[^/@]+)(?:@(?P<alias>[\w-]+)|/(?P<version>[1-9][0-9]*|latest))")
_FORMS = "models:/NAME@ALIAS (e.g. models:/unet_bn-isbi2012@champion) or models:/NAME/VERSION"


class RegistryError(WeightsError):
    """A ``models:/`` spec that names no version of a registered model, or a version that is not a
    unet-zoo registration; the message says what exists."""


@dataclass(frozen=True)
class RegistrySpec:
    """A parsed ``models:/`` spec: the registered model's name and either an alias or a version (a
    number, or ``latest``: the highest)."""

    name: str
    alias: str | None = None
    version: str | None = None

    def __str__(self) -> str:
        return f"models:/{self.name}@{self.alias}" if self.alias else f"models:/{self.name}/{self.version}"


def parse_spec(spec: str) -> RegistrySpec:
    """``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` or ``models:/NAME/latest`` as a :class:`RegistrySpec`.

    Raises:
        RegistryError: any other form (a logged model's ``models:/m-...``, a stage, a missing part).
    """
    found = _SPEC.fullmatch(spec.strip())
    if found is None:
        raise RegistryError(f"weights {spec!r}: not a registered model version; use {_FORMS}")
    return RegistrySpec(found["name"], alias=found["alias"], version=found["version"])


def registry_uri(tracking_uri: str | None = None, *, workdir: str | Path = "runs") -> str:
    """The store a ``models:/`` spec is looked up in: ``tracking_uri``, else ``MLFLOW_TRACKING_URI``, else
    ``<workdir>/mlflow.db``.

    Raises:
        RegistryError: a SQLite store whose file does not exist (opening it would make an empty one).
    """
    uri = tracking_uri or default_tracking_uri(workdir)
    db = sqlite_path(uri)
    if db is not None and not db.is_file():
        raise RegistryError(
            f"no MLflow store at {db}: models:/ weights are looked up in MLFLOW_TRACKING_URI when it is set, "
            f"else in {Path(workdir) / 'mlflow.db'} of the current folder; set MLFLOW_TRACKING_URI to the "
            "store that holds the registered model (e.g. sqlite:////path/to/runs/mlflow.db or http://host:5000)"
        )
    return uri


def download_registered(
    spec: str,
    *,
    tracking_uri: str | None = None,
    workdir: str | Path = "runs",
    cache: str | Path | None = None,
) -> Path:
    """The local, verified weights file of a registered model version (``models:/NAME@ALIAS``,
    ``models:/NAME/VERSION``): downloaded once into ``cache`` (default: the weights cache), checked
    against the version's size and sha256 tags, reused while it still matches them.

    Args:
        tracking_uri: the store; default ``MLFLOW_TRACKING_URI``, else ``<workdir>/mlflow.db``.

    Raises:
        RegistryError: a malformed spec; an unknown model, alias or version (naming those that exist); a
            version that unet-zoo did not register; no such store.
        ChecksumError: the downloaded file differs from the version's recorded size or sha256 (nothing is
            kept).
        DownloadError: the file could not be fetched from the version's artifacts.
    """
    parsed = parse_spec(spec)
    uri = registry_uri(tracking_uri, workdir=workdir)
    client = open_client(uri)
    version = resolve_version(client, parsed)
    label = f"{parsed} (version {version.version} of {parsed.name})"
    tags = dict(version.tags or {})
    missing = [t for t in (SHA256_TAG, SIZE_TAG, FILE_TAG) if not tags.get(t)]
    if missing:
        raise RegistryError(
            f"{label} has no {' or '.join(missing)} tag: it was not registered by unet-zoo, so its weights "
            "cannot be verified; register a harness run with `unet-zoo register RUN_ID`"
        )
    sha256, relative = tags[SHA256_TAG].lower(), tags[FILE_TAG]
    try:
        size = int(tags[SIZE_TAG])
    except ValueError:
        raise RegistryError(f"{label}: tag {SIZE_TAG}={tags[SIZE_TAG]!r} is not a size in bytes") from None
    folder = Path(cache) if cache is not None else cache_dir() / "mlflow"
    target = folder / f"{sha256}.safetensors"
    if target.is_file():
        try:
            _verify(target, size, sha256, label)
            log.info("%s: the cached %s matches its sha256", label, target)
            return target
        except ChecksumError as err:
            log.warning("%s; downloading it again", err)
            target.unlink(missing_ok=True)
    folder.mkdir(parents=True, exist_ok=True)
    location = client.get_model_version_download_uri(parsed.name, str(version.version))
    with tempfile.TemporaryDirectory(dir=folder, prefix=".download-") as tmp:
        part = Path(tmp) / target.name
        _download(f"{location.rstrip('/')}/{relative}", part, uri=uri, label=label)
        _verify(part, size, sha256, label)  # a mismatch leaves nothing in the cache
        os.replace(part, target)
    log.info("%s: %s (%d bytes, sha256 %s)", label, target, size, sha256)
    return target


def resolve_version(client: MlflowClient, spec: RegistrySpec) -> ModelVersion:
    """The model version ``spec`` names in ``client``'s registry.

    Raises:
        RegistryError: an unknown model (with the registered names), alias or version (with the model's
            aliases and versions).
    """
    from mlflow.exceptions import MlflowException

    try:
        model = client.get_registered_model(spec.name)
    except MlflowException as err:
        if err.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise RegistryError(
                f"{spec}: cannot read the model registry at {client.tracking_uri}: {err}"
            ) from err
        names = sorted(m.name for m in client.search_registered_models(max_results=1000))
        hint = close_names([spec.name], names)
        raise RegistryError(
            f"{spec}: no registered model {spec.name!r} in {client.tracking_uri}. "
            + (f"{hint}. " if hint else "")
            + (
                f"Registered models: {', '.join(names)}"
                if names
                else "No model is registered there yet: `unet-zoo register RUN_ID` registers a run's weights"
            )
        ) from None
    aliases = dict(model.aliases or {})
    versions = sorted(
        (v for v in client.search_model_versions(f"name = '{_quoted(spec.name)}'", max_results=10_000)),
        key=lambda v: int(v.version),
    )
    if spec.alias is not None:
        if spec.alias not in aliases:
            raise RegistryError(
                f"{spec}: {spec.name} has no alias {spec.alias!r}; {_what_exists(aliases, versions)}"
            )
        return client.get_model_version(spec.name, str(aliases[spec.alias]))
    if not versions:
        raise RegistryError(f"{spec}: {spec.name} has no versions")
    if spec.version == "latest":
        return versions[-1]
    found = [v for v in versions if str(v.version) == spec.version]
    if not found:
        raise RegistryError(
            f"{spec}: {spec.name} has no version {spec.version}; {_what_exists(aliases, versions)}"
        )
    return found[0]


def _what_exists(aliases: dict[str, Any], versions: list[Any]) -> str:
    named = ", ".join(f"@{a} -> version {v}" for a, v in sorted(aliases.items())) or "none"
    numbers = ", ".join(str(v.version) for v in versions) or "none"
    return f"its aliases: {named}; its versions: {numbers}"


def _quoted(name: str) -> str:
    return name.replace("'", "\\'")  # MLflow's filter strings quote with single quotes


def _download(artifact_uri: str, part: Path, *, uri: str, label: str) -> None:
    """The one file at ``artifact_uri`` copied to ``part``."""
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException

    staging = part.parent / "staging"
    try:
        got = Path(mlflow.artifacts.download_artifacts(artifact_uri, dst_path=str(staging), tracking_uri=uri))
        # a local store may hand back its own file rather than a copy: copy it, never move it
        shutil.copyfile(got, part)
    except (MlflowException, OSError) as err:
        raise DownloadError(f"{label}: cannot fetch its weights file {artifact_uri}: {err}") from err


def _verify(path: Path, size: int, sha256: str, label: str) -> None:
    found = path.stat().st_size
    if found != size:
        raise ChecksumError(
            f"{path}: {found} bytes, but {label} records {size} bytes for its weights (a truncated or "
            "replaced file in the registry's artifacts); register the run again"
        )
    digest = file_sha256(path)
    if digest != sha256:
        raise ChecksumError(
            f"{path}: sha256 {digest} does not match {label}'s recorded {sha256} (the registry's artifact "
            "was changed after registration); register the run again"
        )
