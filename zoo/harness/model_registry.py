"""A finished harness run's best weights as a version of a model in MLflow's model registry.

:func:`register_run` turns the run's artifact ``weights/best.safetensors`` into a new version of the
registered model ``<model>-<dataset>`` (``unet_bn-isbi2012``; or a name given), points an alias at it
(``champion`` unless told otherwise) and tags the version with what the run measured and where it came
from (:func:`version_tags`). Loading it back is :func:`zoo.weights.mlflow_registry.download_registered`
(``create_model(name, weights="models:/unet_bn-isbi2012@champion")``), which verifies the file against
these tags; serving it is ``mlflow models serve -m models:/NAME@ALIAS --env-manager local``
(:mod:`zoo.serving`).

Each version is an MLflow 3 logged model (source run: the harness run) saved as a models-from-code
pyfunc: the code file :data:`zoo.serving.CODE_FILE` and the run's weights file, byte for byte (same
sha256 as the run's artifact), as the artifact ``weights``. Nothing is pickled.

Registering a run again does not add a duplicate: when the registered model already has a version made
from the same run with the same weights (run id and sha256), that version is reused and the alias moved
to it. A version made from the same run with other weights (a run resumed after it was registered) is a
new version.
"""

from __future__ import annotations

import logging
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zoo.data.registry import get_dataset
from zoo.errors import ZooError
from zoo.harness.publish import PublishError, find_run
from zoo.harness.tracking import open_client, quality_keys
from zoo.weights import file_sha256, read_metadata
from zoo.weights.mlflow_registry import FILE_TAG, SHA256_TAG, SIZE_TAG

__all__ = ["Registration", "RegistrationError", "check_alias", "check_name", "register_run", "version_tags"]

log = logging.getLogger(__name__)

WEIGHTS_ARTIFACT_PATH = "weights/best.safetensors"
"""The run artifact that is registered (:mod:`zoo.harness.tracking`'s schema)."""
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}")
_ALIAS = re.compile(r"[A-Za-z0-9_-]{1,255}")


class RegistrationError(ZooError, ValueError):
    """A run that cannot be registered (unknown, unfinished, without weights or final metrics) or a bad
    model name or alias; the message names the run or value and what to do."""


@dataclass(frozen=True)
class Registration:
    """A registered version: what ``unet-zoo register`` prints."""

    name: str
    version: str
    alias: str
    run_id: str
    size: int
    sha256: str
    created: bool
    """False when the run was registered already: its version was reused and got the alias."""

    @property
    def uri(self) -> str:
        """``models:/NAME@ALIAS``: what ``create_model(..., weights=...)`` and ``predict --weights`` take."""
        return f"models:/{self.name}@{self.alias}"

    @property
    def version_uri(self) -> str:
        """``models:/NAME/VERSION``: this version, whatever the alias points to later."""
        return f"models:/{self.name}/{self.version}"


def check_alias(alias: str) -> str:
    """``alias`` when MLflow accepts it as an alias.

    Raises:
        RegistrationError: other characters than letters, digits, ``_`` and ``-``; ``latest`` and
            ``v<number>``, which MLflow reserves.
    """
    if not _ALIAS.fullmatch(alias) or alias.lower() == "latest" or re.fullmatch(r"[vV]\d+", alias):
        raise RegistrationError(
            f"alias {alias!r}: use letters, digits, '_' and '-' (e.g. champion, candidate); 'latest' and "
            "'v<number>' are MLflow's own"
        )
    return alias


def check_name(name: str) -> str:
    """``name`` when it can name a registered model and be written in a ``models:/`` URI.

    Raises:
        RegistrationError: an empty name or one with other characters than letters, digits, ``.``,
            ``_`` and ``-``.
    """
    if not _NAME.fullmatch(name):
        raise RegistrationError(
            f"model name {name!r}: use letters, digits, '.', '_' and '-', starting with a letter or digit "
            "(e.g. unet_bn-isbi2012)"
        )
    return name


def version_tags(
    *, model: str, dataset: str, run: Any, quality: dict[str, float], size: int, sha256: str
) -> dict[str, str]:
    """The tags of a registered version: the run's quality metrics (:func:`zoo.harness.tracking.quality_keys`,
    under their own names), the zoo model, dataset, suite, recipe ("-" for none), git commit and dirty flag
    of the run, and the weights file's size and sha256, which loading verifies (with its path in the model,
    :data:`~zoo.weights.mlflow_registry.FILE_TAG`, added once the model is saved)."""
    params, tags = run.data.params, run.data.tags
    recipe = params.get("cfg.recipe", "")
    return {
        **{key: repr(float(value)) for key, value in quality.items()},
        "model": model,
        "dataset": dataset,
        "suite": tags.get("suite") or "-",
        "recipe": "-" if recipe in ("", "None") else recipe,
        "git_commit": tags.get("git_commit", "unknown"),
        "git_dirty": tags.get("git_dirty", "unknown"),
        SIZE_TAG: str(size),
        SHA256_TAG: sha256,
    }


def register_run(
    run_id: str,
    *,
    tracking_uri: str,
    name: str | None = None,
    alias: str = "champion",
    description: str | None = None,
) -> Registration:
    """Register a finished harness run's best weights as a version of ``name`` and point ``alias`` at it.

    Args:
        run_id: the run's id, or a unique prefix of at least 8 characters.
        tracking_uri: the store holding the run; the model is registered in the same store.
        name: the registered model (default ``<model>-<dataset>``, e.g. ``unet_bn-isbi2012``).
        alias: moved to the new (or reused) version.
        description: of a new version (default: the run it came from).

    Raises:
        RegistrationError: an unknown, ambiguous or unfinished run, a run without a weights artifact or
            final metrics, a bad name or alias.
    """
    check_alias(alias)
    if name is not None:
        check_name(name)
    client = open_client(tracking_uri)
    try:
        run = find_run(client, run_id)
    except PublishError as err:
        raise RegistrationError(
            f"{err}; give the id of a finished run in that store (--workdir or MLFLOW_TRACKING_URI picks it)"
        ) from None
    label = f"run {run.info.run_name or run.info.run_id} ({run.info.run_id})"
    if run.info.status != "FINISHED":
        raise RegistrationError(
            f"{label} is {run.info.status}; only a finished run can be registered: wait for it to finish, "
            "or resume it (`unet-zoo train --resume`)"
        )
    params, metrics = run.data.params, run.data.metrics
    if "cfg.dataset" not in params:
        raise RegistrationError(f"{label} is not a harness run (no cfg.dataset): register a run of one model")
    weights = {
        a.path for a in client.list_artifacts(run.info.run_id, Path(WEIGHTS_ARTIFACT_PATH).parent.name)
    }
    if WEIGHTS_ARTIFACT_PATH not in weights:
        raise RegistrationError(
            f"{label} has no weights artifact {WEIGHTS_ARTIFACT_PATH} (a suite's parent run, or a run that "
            "ended before its first evaluation): register one of the suite's runs, or train it again"
        )
    data = get_dataset(params["cfg.dataset"])
    quality = {
        k: metrics[k] for k in quality_keys(isbi=data.isbi, class_names=data.class_names) if k in metrics
    }
    if "dice" not in quality:
        raise RegistrationError(f"{label} has no final metrics (dice): it did not complete; train it again")

    with tempfile.TemporaryDirectory(prefix="unet-zoo-register-") as tmp:
        local = Path(client.download_artifacts(run.info.run_id, WEIGHTS_ARTIFACT_PATH, tmp))
        metadata = read_metadata(local)
        model_name = metadata.get("model_name") or params.get("cfg.model", "")
        name = check_name(name or f"{model_name}-{data.name}")
        size, sha256 = local.stat().st_size, file_sha256(local)
        reused = _same_weights(client, name, run.info.run_id, sha256)
        if reused is not None:
            version, created = str(reused.version), False
            log.info("%s is version %s of %s already; moving @%s to it", label, version, name, alias)
        else:
            tags = version_tags(
                model=model_name, dataset=data.name, run=run, quality=quality, size=size, sha256=sha256
            )
            in_channels = int(metadata.get("in_channels", data.in_channels))
            about = description or f"unet-zoo {label}"
            version, created = _new_version(client, run, name, local, tags, in_channels, about), True
    client.set_registered_model_alias(name, alias, version)
    log.info("%s: version %s of %s (@%s), sha256 %s", label, version, name, alias, sha256)
    return Registration(name, version, alias, run.info.run_id, size, sha256, created)


def _same_weights(client: Any, name: str, run_id: str, sha256: str) -> Any | None:
    """The earliest version of ``name`` made from ``run_id`` with weights of ``sha256``, if any."""
    quoted = name.replace("'", "\\'")
    found = [
        v
        for v in client.search_model_versions(f"name = '{quoted}' and run_id = '{run_id}'")
        if (v.tags or {}).get(SHA256_TAG) == sha256
    ]
    return min(found, key=lambda v: int(v.version)) if found else None


def _new_version(
    client: Any,
    run: Any,
    name: str,
    weights: Path,
    tags: dict[str, str],
    in_channels: int,
    description: str,
) -> str:
    """A new version of ``name``: a logged model of the run holding the pyfunc with ``weights``; ``tags``
    gain the weights file's path in the model (:data:`~zoo.weights.mlflow_registry.FILE_TAG`)."""
    import numpy as np
    from mlflow.entities import LoggedModelStatus
    from mlflow.exceptions import MlflowException
    from mlflow.models import Model
    from mlflow.pyfunc import save_model

    from zoo import __version__
    from zoo.serving import CODE_FILE, WEIGHTS_ARTIFACT, signature

    logged = client.create_logged_model(
        run.info.experiment_id, name=name, source_run_id=run.info.run_id, tags=tags, model_type="unet-zoo"
    )
    try:
        with tempfile.TemporaryDirectory(prefix="unet-zoo-pyfunc-") as tmp:
            folder = Path(tmp) / "model"
            save_model(
                str(folder),
                python_model=str(CODE_FILE),  # models from code: the file is copied, nothing is pickled
                artifacts={WEIGHTS_ARTIFACT: str(weights)},
                model_config={"weights_sha256": tags[SHA256_TAG]},
                signature=signature(in_channels),
                input_example=np.zeros((1, in_channels, 8, 8), dtype=np.uint8),
                # given, not inferred: inference would load the model in a subprocess
                pip_requirements=[f"unet-zoo=={__version__}"],
                mlflow_model=Model(
                    artifact_path=logged.artifact_location,
                    model_uuid=logged.model_id,
                    model_id=logged.model_id,
                    run_id=run.info.run_id,
                ),
            )
            saved = Model.load(str(folder)).flavors["python_function"]["artifacts"][WEIGHTS_ARTIFACT]
            tags[FILE_TAG] = str(saved["path"])
            client.log_model_artifacts(logged.model_id, str(folder))
    except BaseException:
        client.finalize_logged_model(logged.model_id, LoggedModelStatus.FAILED)
        raise
    client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
    try:
        client.get_registered_model(name)
    except MlflowException as err:
        if err.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        client.create_registered_model(name, description="unet-zoo weights (unet-zoo register)")
    # the logged model's own location, not models:/<id>: a SQLite registry resolves that through the
    # process-wide default tracking URI, which need not be this store
    version = client.create_model_version(
        name,
        source=logged.artifact_location,
        run_id=run.info.run_id,
        tags=tags,
        description=description,
        model_id=logged.model_id,
    )
    return str(version.version)
