"""Weights on the Hugging Face Hub: ``hf-hub:ORG/REPO[@REVISION]``, fetched, verified, and pushed.

A repository that unet-zoo publishes holds what segmentation_models_pytorch's hold:

* ``config.json``: the model's name and resolved arguments, channels, classes, the training scale,
  the unet-zoo version, and the size and sha256 of ``model.safetensors`` (:func:`hub_config`);
* ``model.safetensors``: the weights, with the metadata that rebuilds the model (:mod:`zoo.weights.files`);
* ``README.md``: the model card (written by :func:`zoo.harness.publish.write_hub_folder`).

huggingface_hub moves the bytes: its cache (``HF_HOME``, ``HF_HUB_CACHE``), ``HF_HUB_OFFLINE``,
``HF_ENDPOINT``, the token (``HF_TOKEN`` or ``hf auth login``) and revisions are all its own, read as it
reads them. It checks nothing against a recorded hash: a repository whose file changed after
publishing, or a transfer that went wrong in a way the client cannot see, gives a different file without
an error. So every file is checked here against the size and sha256 recorded beside it (the repository's
``config.json``, or the manifest entry), and a file that fails is removed from the Hugging Face cache and
never returned.

``config.json`` and ``model.safetensors`` are read from one commit: the revision named (a branch, a tag)
is resolved once, by the first download, and the second is pinned to that commit, so a push in between
cannot pair one commit's record with another's file.

This module is a leaf of the package: it imports neither the manifest nor the download cache, which
both call it (``zoo.weights.hub.fetch`` for manifest entries whose url is ``hf-hub:...``).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from zoo.weights.errors import ChecksumError, DownloadError, OfflineError, UploadError, WeightsError
from zoo.weights.files import TrainingScale, file_sha256

__all__ = [
    "CARD_FILE",
    "CONFIG_FILE",
    "CONFIG_FORMAT",
    "HUB_PREFIX",
    "WEIGHTS_FILE",
    "HubSpec",
    "cached_file",
    "check_token",
    "download",
    "fetch_file",
    "hub_config",
    "offline_mode",
    "push_folder",
    "read_hub_config",
    "repo_url",
]

log = logging.getLogger(__name__)

HUB_PREFIX = "hf-hub:"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "README.md"
CONFIG_FORMAT = "unet-zoo"
"""``config.json``'s ``format``: what tells a unet-zoo repository from another library's."""
CONFIG_VERSION = 1

# The Hub's own rules for a repository id (huggingface_hub's validate_repo_id), with the organisation
# required: a weights source names whose repository it is.
_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"
_REPO_ID = re.compile(rf"{_NAME}/{_NAME}")
_REVISION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,199}")
_COMMIT = re.compile(r"[0-9a-f]{40}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_FORM = (
    "hf-hub:ORG/REPO or hf-hub:ORG/REPO@REVISION (ORG and REPO: letters, digits, '-', '_', '.'; "
    "REVISION: a branch, tag or commit), e.g. hf-hub:my-org/unet_bn-isbi2012@main"
)


@dataclass(frozen=True)
class HubSpec:
    """A parsed ``hf-hub:ORG/REPO[@REVISION]``; ``revision`` None means the repository's default branch."""

    repo_id: str
    revision: str | None = None

    @classmethod
    def parse(cls, spec: str, *, where: str = "weights") -> HubSpec:
        """Read ``hf-hub:ORG/REPO[@REVISION]``.

        Raises:
            WeightsError: anything else, naming ``spec`` (in ``where``) and the form expected.
        """
        body = spec[len(HUB_PREFIX) :] if spec.startswith(HUB_PREFIX) else None
        repo_id, at, revision = (body or "").partition("@")
        bad_revision = at and (
            not _REVISION.fullmatch(revision) or ".." in revision or revision.endswith(("/", ".lock"))
        )
        if (
            body is None
            or not _REPO_ID.fullmatch(repo_id)
            or ".." in repo_id
            or "--" in repo_id
            or repo_id.endswith(".git")
            or bad_revision
        ):
            raise WeightsError(f"{where} {spec!r} is not a Hugging Face Hub source: expected {_FORM}")
        return cls(repo_id, revision if at else None)

    def __str__(self) -> str:
        return f"{HUB_PREFIX}{self.repo_id}" + (f"@{self.revision}" if self.revision else "")

    @property
    def pinned(self) -> bool:
        """Whether the revision is a full commit hash (what a branch or tag can never be moved under)."""
        return self.revision is not None and _COMMIT.fullmatch(self.revision) is not None

    def at(self, revision: str | None) -> HubSpec:
        """The same repository at ``revision``."""
        return replace(self, revision=revision)


def offline_mode() -> bool:
    """Whether downloads are off: ``UNET_ZOO_OFFLINE`` or ``HF_HUB_OFFLINE`` (read now, and as
    huggingface_hub read it when imported)."""
    from huggingface_hub import constants

    return (
        _truthy(os.environ.get("UNET_ZOO_OFFLINE"))
        or _truthy(os.environ.get("HF_HUB_OFFLINE"))
        or bool(constants.HF_HUB_OFFLINE)
    )


def download(spec: str, *, offline: bool | None = None, progress: bool = False) -> Path:
    """The verified local ``model.safetensors`` of a unet-zoo repository on the Hub.

    ``config.json`` is fetched first (it records the weights' size and sha256), then the weights from
    the same commit; both land in the Hugging Face cache, and a cached pair is used without a download.

    Args:
        spec: ``hf-hub:ORG/REPO`` (the default branch) or ``hf-hub:ORG/REPO@REVISION``.
        offline: use the cache only (default :func:`offline_mode`).
        progress: show huggingface_hub's progress bars.

    Raises:
        WeightsError: a malformed spec, or a repository that unet-zoo did not publish.
        OfflineError: downloads are off and the files are not cached.
        DownloadError: no such repository, revision or file, or the Hub could not be reached.
        ChecksumError: the weights differ from what ``config.json`` records (the file is removed from
            the cache).
    """
    ref = HubSpec.parse(spec)
    offline = offline_mode() if offline is None else offline
    fetch_command = f"unet-zoo weights download {ref}"
    config_path = _hub_download(
        ref, CONFIG_FILE, offline=offline, label=str(ref), fetch_command=fetch_command, progress=progress
    )
    commit = _snapshot_commit(config_path) or ref.revision
    config = read_hub_config(config_path, origin=f"{ref.at(commit)} {CONFIG_FILE}")
    size, sha256 = config["files"][WEIGHTS_FILE]["size"], config["files"][WEIGHTS_FILE]["sha256"]
    return fetch_file(
        ref,
        commit=commit,
        size=size,
        sha256=sha256,
        label=str(ref),
        recorded_in=f"its {CONFIG_FILE}",
        fetch_command=fetch_command,
        offline=offline,
        progress=progress,
    )


def fetch_file(
    ref: HubSpec,
    *,
    size: int,
    sha256: str,
    label: str,
    recorded_in: str,
    fetch_command: str,
    filename: str = WEIGHTS_FILE,
    commit: str | None = None,
    offline: bool | None = None,
    progress: bool = False,
) -> Path:
    """``filename`` of ``ref``, from the Hugging Face cache or the Hub, checked against ``size``, ``sha256``.

    Args:
        ref: the repository at the revision asked for.
        commit: the commit that revision was resolved to (by an earlier file): the one fetched from.
        label: what error messages call it (``hf-hub:ORG/REPO``, or a manifest entry's ``MODEL.TAG``).
        recorded_in: where ``size`` and ``sha256`` come from, for messages (``"its config.json"``).
        fetch_command: the command that fetches it where the Hub is reachable, for the offline message.

    Raises:
        OfflineError, DownloadError: see :func:`download`.
        ChecksumError: the file differs; it is removed from the cache, and nothing of it is returned.
    """
    offline = offline_mode() if offline is None else offline
    source = ref.at(commit) if commit else ref
    path = _hub_download(
        source, filename, offline=offline, label=label, fetch_command=fetch_command, progress=progress
    )
    problem = _mismatch(path, size, sha256)
    if problem is None:
        return path
    _discard(path)
    where = ref.at(_snapshot_commit(path) or source.revision)
    fix = (
        f"pin the revision that was published (hf-hub:{ref.repo_id}@COMMIT, {ref.repo_id}'s history on "
        "the Hub lists the commits)"
        if not ref.pinned
        else "tell the repository's owner: its file is not the one published"
    )
    raise ChecksumError(
        f"{label}: {filename} of {where} is {problem}, not the file {recorded_in} records ({size} bytes, "
        f"sha256 {sha256}); it was removed from the Hugging Face cache and not used. Try again (a transfer "
        f"gone wrong); if it fails again the repository changed after it was published: {fix}"
    )


def cached_file(ref: HubSpec, filename: str = WEIGHTS_FILE) -> Path | None:
    """The cached copy of ``filename`` at ``ref`` (unverified), or None; never touches the network."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(ref.repo_id, filename, revision=ref.revision)
    return Path(found) if isinstance(found, str) else None


def repo_url(repo_id: str) -> str:
    """The repository's page on the Hub (``HF_ENDPOINT``'s)."""
    from huggingface_hub import constants

    return f"{constants.ENDPOINT}/{repo_id}"


# -- config.json ------------------------------------------------------------------------------------------


def hub_config(
    *,
    model_name: str,
    model_args: Mapping[str, Any],
    in_channels: int,
    num_classes: int,
    class_names: Sequence[str] | None,
    training_scale: TrainingScale,
    weights: str | Path,
    provenance: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``config.json`` of a repository holding the file ``weights`` (as ``model.safetensors``).

    ``provenance``: where the weights come from (dataset, metrics, recipe, run): kept under that key.
    """
    from zoo import __version__

    weights = Path(weights)
    return {
        "format": CONFIG_FORMAT,
        "format_version": CONFIG_VERSION,
        "unet_zoo_version": __version__,
        "model_name": model_name,
        "model_args": dict(model_args),
        "in_channels": in_channels,
        "num_classes": num_classes,
        "class_names": list(class_names) if class_names is not None else None,
        "training_scale": training_scale.as_record(),
        "files": {WEIGHTS_FILE: {"size": weights.stat().st_size, "sha256": file_sha256(weights)}},
        "provenance": dict(provenance or {}),
    }


def read_hub_config(path: str | Path, *, origin: str) -> dict[str, Any]:
    """A repository's ``config.json``, checked to be unet-zoo's and to record the weights' size and sha256.

    Raises:
        WeightsError: unreadable, another library's, or without a well-formed record, naming ``origin``.
    """
    try:
        config = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise WeightsError(f"{origin}: not a readable JSON file ({err})") from None
    if not isinstance(config, dict) or config.get("format") != CONFIG_FORMAT:
        raise WeightsError(
            f'{origin}: not a unet-zoo repository (config.json has no "format": "{CONFIG_FORMAT}"). '
            "Repositories of other libraries load with their own loaders; an smp folder converts with "
            "`unet-zoo weights import`"
        )
    record = config.get("files", {}).get(WEIGHTS_FILE) if isinstance(config.get("files"), dict) else None
    size = record.get("size") if isinstance(record, dict) else None
    sha256 = record.get("sha256") if isinstance(record, dict) else None
    if not (
        isinstance(size, int) and not isinstance(size, bool) and size > 0 and _HEX64.fullmatch(str(sha256))
    ):
        raise WeightsError(
            f"{origin}: files.{WEIGHTS_FILE} must record its size (bytes) and sha256 (64 lowercase hex "
            f"digits), found {record!r}; re-publish it with `unet-zoo weights publish --push-to-hub`"
        )
    return config


# -- pushing ----------------------------------------------------------------------------------------------


def push_folder(
    folder: str | Path,
    repo_id: str,
    *,
    revision: str | None = None,
    private: bool = False,
    commit_message: str,
    token: str | None = None,
) -> HubSpec:
    """Commit the files of ``folder`` to the model repository ``repo_id`` (created if absent, private
    if ``private``), on branch ``revision`` (created from the default branch if absent; default: the
    default branch), in one commit. Returns the repository pinned to the new commit.

    ``token`` defaults to huggingface_hub's (``HF_TOKEN``, else the one ``hf auth login`` saved).

    Raises:
        WeightsError: ``repo_id`` or ``revision`` malformed.
        UploadError: no token, or the Hub refused (no write access, no such organisation, ...).
    """
    from huggingface_hub import CommitOperationAdd, HfApi, constants, get_token
    from huggingface_hub.errors import BadRequestError, HfHubHTTPError

    spec = f"{HUB_PREFIX}{repo_id}" + (f"@{revision}" if revision else "")
    target = HubSpec.parse(spec, where="--push-to-hub")
    check_token(token)
    files = sorted(p for p in Path(folder).iterdir() if p.is_file())
    api = HfApi(token=token or get_token(), library_name="unet-zoo", library_version=_version())
    where = repo_url(repo_id)
    step = "creating the repository"
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        if target.revision and target.revision != constants.DEFAULT_REVISION:
            step = f"creating branch {target.revision}"
            api.create_branch(repo_id, branch=target.revision, exist_ok=True)
        step = "committing " + ", ".join(p.name for p in files)
        info = api.create_commit(
            repo_id,
            [CommitOperationAdd(path_in_repo=p.name, path_or_fileobj=str(p)) for p in files],
            commit_message=commit_message,
            revision=target.revision,
        )
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else "?"
        fix = (
            "the token lacks write access to it: use a token with the write role (HF_TOKEN or `hf auth "
            "login`), and check that its organisation exists and lets you create repositories"
            if status in (401, 403, 404)
            else "try again"
        )
        raise UploadError(f"{where}: {step} failed (HTTP {status}: {_first_line(err)}); {fix}") from None
    except ValueError as err:
        if not isinstance(err.__cause__, BadRequestError):  # the Hub's verdict on README.md's metadata
            raise
        raise UploadError(
            f"{where}: the Hub refused the model card's metadata ({' '.join(str(err).split())}); check "
            "--license (a licence id of the Hub's list, or other)"
        ) from None
    commit = str(info.oid)
    log.info("pushed %s to %s (commit %s)", ", ".join(p.name for p in files), where, commit)
    return target.at(commit)


def check_token(token: str | None = None) -> None:
    """Fail early when there is no token to push with (``token``, ``HF_TOKEN`` or a saved login).

    Raises:
        UploadError: no token, saying how to give one.
    """
    from huggingface_hub import get_token

    if not (token or get_token()):
        raise UploadError(
            "pushing to the Hugging Face Hub needs a token with write access: set HF_TOKEN or run "
            "`hf auth login` (https://huggingface.co/settings/tokens)"
        )


# -- internals --------------------------------------------------------------------------------------------


def _hub_download(
    ref: HubSpec, filename: str, *, offline: bool, label: str, fetch_command: str, progress: bool = False
) -> Path:
    """``hf_hub_download``, its failures turned into this package's errors (each naming the repository,
    revision and file, and what to do)."""
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    revision = ref.revision or constants.DEFAULT_REVISION
    what = f"{label}: {filename} of {ref.repo_id} at revision {revision}"
    try:
        path = hf_hub_download(
            ref.repo_id,
            filename,
            revision=ref.revision,
            local_files_only=offline,
            library_name="unet-zoo",
            library_version=_version(),
            tqdm_class=None if progress else _quiet_bar(),
        )
    except GatedRepoError:
        raise DownloadError(
            f"{what}: the repository is gated; accept its conditions on {constants.ENDPOINT}/{ref.repo_id} "
            "and set HF_TOKEN (or run `hf auth login`) with that account"
        ) from None
    except RepositoryNotFoundError:
        raise DownloadError(
            f"{what}: no repository {ref.repo_id} on {constants.ENDPOINT} (or it is private and no token "
            "with access was sent). Check the name (hf-hub:ORG/REPO); for a private repository set "
            "HF_TOKEN or run `hf auth login`"
        ) from None
    except RevisionNotFoundError:
        raise DownloadError(
            f"{what}: {ref.repo_id} has no revision {revision!r}; name a branch, tag or commit of it "
            f"(hf-hub:{ref.repo_id}@REVISION), or leave the revision out for the default branch"
        ) from None
    except LocalEntryNotFoundError as err:
        cache = constants.HF_HUB_CACHE
        if offline:
            raise OfflineError(
                f"{what} is not in the Hugging Face cache ({cache}) and downloads are off (UNET_ZOO_OFFLINE "
                f"or HF_HUB_OFFLINE). Where the Hub is reachable run `{fetch_command}` with the same HF_HOME "
                "and copy its cache here, or switch downloads on"
            ) from None
        cause = err.__cause__ or err.__context__
        raise DownloadError(
            f"{what}: {constants.ENDPOINT} could not be reached ({_first_line(cause or err)}) and the file "
            f"is not in the Hugging Face cache ({cache}). Check the connection and HF_ENDPOINT, and try again"
        ) from None
    except EntryNotFoundError:
        raise DownloadError(
            f"{what}: no such file in the repository. A unet-zoo repository holds {CONFIG_FILE} and "
            f"{WEIGHTS_FILE} (`unet-zoo weights publish RUN_ID --push-to-hub ORG/REPO` writes them); is "
            f"{ref.repo_id} another library's, or is the revision older than the upload?"
        ) from None
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else "?"
        raise DownloadError(
            f"{what}: HTTP {status} from {constants.ENDPOINT} ({_first_line(err)}); try again, or use a "
            "token with access (HF_TOKEN) for a private repository"
        ) from None
    return Path(path)


def _mismatch(path: Path, size: int, sha256: str) -> str | None:
    """How the file at ``path`` differs from ``size`` and ``sha256`` (None: it matches); the size first,
    so a file of the wrong size is not hashed."""
    found = path.stat().st_size
    if found != size:
        return f"{found} bytes"
    digest = file_sha256(path)
    return None if digest == sha256 else f"sha256 {digest}"


def _discard(path: Path) -> None:
    """Remove a cached file that failed its check: the snapshot's link and the blob it points to (the
    cache's layout: ``snapshots/COMMIT/FILE`` -> ``blobs/ETAG``), or the copy where there are no links."""
    blob = path.resolve() if path.is_symlink() else None
    path.unlink(missing_ok=True)
    if blob is not None:
        blob.unlink(missing_ok=True)
    log.warning("removed %s from the Hugging Face cache: it failed its size/sha256 check", path)


def _snapshot_commit(path: Path) -> str | None:
    """The commit a cached file belongs to, from its place in the cache (``snapshots/COMMIT/FILE``)."""
    commit = path.parent.name
    return commit if path.parent.parent.name == "snapshots" and _COMMIT.fullmatch(commit) else None


@functools.cache
def _quiet_bar() -> Any:
    """A progress bar class that shows nothing (library code does not draw on the terminal unasked)."""
    from tqdm.auto import tqdm

    return functools.partial(tqdm, disable=True)


def _version() -> str:
    from zoo import __version__

    return __version__


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")
