"""The errors of the weights hub: each says which file or entry, what was wrong and what to do."""

from __future__ import annotations

from zoo.errors import ZooError

__all__ = [
    "ChecksumError",
    "DownloadError",
    "OfflineError",
    "UploadError",
    "WeightsError",
    "WeightsMismatchError",
]


class WeightsError(ZooError, RuntimeError):
    """A weights file could not be found, fetched, verified or read; the message says what to do."""


class ChecksumError(WeightsError):
    """A file's size or sha256 differs from its record (a manifest entry, a Hub repository's config.json)."""


class DownloadError(WeightsError):
    """A download failed (HTTP error, refused, stalled or too slow connection, truncated transfer)."""


class OfflineError(WeightsError):
    """The file is not in the cache and downloads are switched off."""


class UploadError(WeightsError):
    """Pushing weights to the Hugging Face Hub failed (no token, no write access, the Hub refused)."""


class WeightsMismatchError(ZooError, ValueError):
    """The requested weights do not fit the requested model, arguments, channels or classes."""
