"""Pretrained weights: a manifest of the checkpoints the harness produced, verified files, a download cache.

One module per job:

* :mod:`zoo.weights.manifest`: :class:`WeightsEntry` (what a checkpoint is, where it comes from, what
  it scored) and finding entries by model and tag;
* :mod:`zoo.weights.hub`: the download cache (:func:`fetch`: stream, verify the sha256, rename into place);
* :mod:`zoo.weights.hf_hub`: Hugging Face Hub repositories (``hf-hub:ORG/REPO[@REVISION]``): downloaded
  by huggingface_hub, verified against the size and sha256 their ``config.json`` (or a manifest entry)
  records; and pushing a published checkpoint to one;
* :mod:`zoo.weights.files`: safetensors read and write with the metadata that rebuilds a model;
* :mod:`zoo.weights.errors`: what goes wrong, each a :class:`zoo.errors.ZooError`.

Building a model and loading weights into it is :mod:`zoo.factory`'s (``zoo.create_model(name,
weights=...)``): this package never imports the model registry, nor the registry this package.

Environment:
    ``UNET_ZOO_HOME``         the cache folder (default: the user cache, e.g. ``~/.cache/unet-zoo``).
    ``UNET_ZOO_MIRROR``       a URL or local folder that stands in for the source host (files by name).
    ``UNET_ZOO_OFFLINE``      ``1`` makes a missing file fail at once with the command that would fetch it.
    ``UNET_ZOO_MANIFEST``     extra manifest files (``os.pathsep``-separated) added to the shipped one.
    ``UNET_ZOO_MIN_RATE``     bytes/s a download must average over the rate window (default 1024; 0: off).
    ``UNET_ZOO_RATE_WINDOW``  seconds that average is taken over (default 60).

    For ``hf-hub:`` sources, huggingface_hub's own, read as it reads them (most when it is imported):
    ``HF_HOME`` / ``HF_HUB_CACHE`` (its cache), ``HF_HUB_OFFLINE`` (cache only; ``UNET_ZOO_OFFLINE`` does
    the same for them), ``HF_ENDPOINT`` (another Hub or a mirror of it), ``HF_TOKEN`` (private
    repositories, and pushing; else the token ``hf auth login`` saved).
"""

from __future__ import annotations

from zoo.weights.errors import (
    ChecksumError,
    DownloadError,
    OfflineError,
    UploadError,
    WeightsError,
    WeightsMismatchError,
)
from zoo.weights.files import TrainingScale, file_sha256, read_metadata, read_weights, save_weights
from zoo.weights.hub import cache_dir, fetch, local_copy, verify_file
from zoo.weights.manifest import (
    PACKAGED_DIR,
    WeightsEntry,
    check_tag,
    find_weights,
    list_weights,
    load_manifest,
    write_manifest,
)

__all__ = [
    "PACKAGED_DIR",
    "ChecksumError",
    "DownloadError",
    "OfflineError",
    "TrainingScale",
    "UploadError",
    "WeightsEntry",
    "WeightsError",
    "WeightsMismatchError",
    "cache_dir",
    "check_tag",
    "fetch",
    "file_sha256",
    "find_weights",
    "list_weights",
    "load_manifest",
    "local_copy",
    "read_metadata",
    "read_weights",
    "save_weights",
    "verify_file",
    "write_manifest",
]
