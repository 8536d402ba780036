"""The download cache: a manifest entry's verified local file, fetched once.

Every file is checked against its entry's size and sha256 before use, whether shipped, cached or just
downloaded. Downloads stream into a temporary file inside the cache folder and are renamed into place
only after the check passes, so the cache never holds a partial or tampered file.

A download is abandoned when the connection is silent for ``timeout`` seconds, and when it trickles:
when the average rate over the last ``UNET_ZOO_RATE_WINDOW`` seconds falls under ``UNET_ZOO_MIN_RATE``
bytes per second (a server sending a byte now and then never goes silent, and would otherwise hold a
download forever).

An entry whose source is a Hugging Face Hub repository (``hf-hub:ORG/REPO@REVISION``) is transferred by
huggingface_hub into its own cache instead (:mod:`zoo.weights.hf_hub`), and checked the same way.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import deque
from http.client import HTTPException
from pathlib import Path
from typing import Any

from zoo.errors import ConfigError
from zoo.weights import hf_hub
from zoo.weights.errors import ChecksumError, DownloadError, OfflineError, WeightsError
from zoo.weights.files import CHUNK, file_sha256
from zoo.weights.manifest import PACKAGED_DIR, WeightsEntry, check_file_name

__all__ = [
    "DEFAULT_MIN_RATE",
    "DEFAULT_RATE_WINDOW",
    "MIN_RATE_ENV",
    "RATE_WINDOW_ENV",
    "cache_dir",
    "fetch",
    "local_copy",
    "verify_file",
]

log = logging.getLogger(__name__)

MIN_RATE_ENV = "UNET_ZOO_MIN_RATE"
RATE_WINDOW_ENV = "UNET_ZOO_RATE_WINDOW"
DEFAULT_MIN_RATE = 1024.0
"""Bytes per second a download must average over the window; 0 switches the floor off."""
DEFAULT_RATE_WINDOW = 60.0
"""Seconds the rate is averaged over (long enough that a slow but working link is never cut)."""


def cache_dir() -> Path:
    """``UNET_ZOO_HOME`` if set, else the platform's user cache folder; weights go in ``weights/``."""
    home = os.environ.get("UNET_ZOO_HOME")
    if home:
        base = Path(home).expanduser()
    elif sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local")) / "unet-zoo" / "Cache"
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches" / "unet-zoo"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "unet-zoo"
    return base / "weights"


def verify_file(path: str | Path, entry: WeightsEntry) -> None:
    """Check ``path`` against the entry's size and sha256.

    Raises:
        ChecksumError: naming the file, what was expected and what was found.
    """
    path = Path(path)
    size = path.stat().st_size
    if size != entry.size:
        raise ChecksumError(
            f"{path}: {size} bytes, but {entry.name} is {entry.size} bytes (truncated or a different file)"
        )
    digest = file_sha256(path)
    if digest != entry.sha256:
        raise ChecksumError(f"{path}: sha256 {digest} does not match {entry.name}'s {entry.sha256}")


def fetch(
    entry: WeightsEntry,
    *,
    cache: str | Path | None = None,
    mirror: str | None = None,
    offline: bool | None = None,
    timeout: float = 30.0,
    min_rate: float | None = None,
    rate_window: float | None = None,
    progress: bool = False,
) -> Path:
    """The verified local file of ``entry``: the shipped file, the cached one, or a fresh download.

    An entry whose url is ``hf-hub:ORG/REPO@REVISION`` is fetched by huggingface_hub into its own cache
    (``HF_HOME``; see :mod:`zoo.weights.hf_hub`) and checked against the entry the same way; a mirror,
    when set, serves it by file name as it serves any other entry. ``cache``, ``timeout`` and the rate
    floor are this module's transfer's; huggingface_hub has its own (``HF_HUB_DOWNLOAD_TIMEOUT``,
    ``HF_HUB_ETAG_TIMEOUT``).

    Args:
        cache: the cache folder (default :func:`cache_dir`).
        mirror: a URL or local folder holding the files by name, used instead of the entry's URL
            (default ``UNET_ZOO_MIRROR``).
        offline: never download; a missing file raises :class:`OfflineError` (default ``UNET_ZOO_OFFLINE``;
            for an ``hf-hub:`` entry, also ``HF_HUB_OFFLINE``).
        timeout: seconds a connection may stay silent before the download is abandoned.
        min_rate: bytes per second the download must average over ``rate_window`` seconds, or it is
            abandoned; 0 switches this off (default ``UNET_ZOO_MIN_RATE``, else 1024).
        rate_window: seconds the rate is averaged over (default ``UNET_ZOO_RATE_WINDOW``, else 60).

    Raises:
        ChecksumError, DownloadError, OfflineError: and nothing bad is left in the cache.
        ConfigError: a ``UNET_ZOO_MIN_RATE`` or ``UNET_ZOO_RATE_WINDOW`` that is not a number in range.
    """
    if entry.packaged:
        path = Path(entry.location or PACKAGED_DIR) / entry.file
        if not path.is_file():
            raise WeightsError(
                f"{entry.name}: shipped file {path} is missing; reinstall unet-zoo (pip install "
                "--force-reinstall unet-zoo) or install from a checkout that has zoo/pretrained/"
            )
        verify_file(path, entry)
        return path
    folder = Path(cache) if cache is not None else cache_dir()
    target = _target(folder, entry)
    if target.is_file():
        try:
            verify_file(target, entry)
            return target
        except ChecksumError as err:
            log.warning("%s; removing it and fetching it again", err)
            target.unlink()
    mirror = mirror if mirror is not None else os.environ.get("UNET_ZOO_MIRROR") or None
    if _on_hub(entry) and not mirror:
        # huggingface_hub's cache and transfer; this project's check (the client would accept any file)
        return hf_hub.fetch_file(
            _hub_spec(entry),
            size=entry.size,
            sha256=entry.sha256,
            label=entry.name,
            recorded_in="its manifest entry",
            fetch_command=f"unet-zoo weights download {entry.name}",
            offline=offline,
            progress=progress,
        )
    offline = _truthy(os.environ.get("UNET_ZOO_OFFLINE")) if offline is None else offline
    if offline:
        raise OfflineError(
            f"{entry.name} is not in the cache ({target}) and downloads are off (UNET_ZOO_OFFLINE). On a "
            f"machine with access run `unet-zoo weights download {entry.name}` and copy {entry.file} into "
            f"{folder}, or set UNET_ZOO_MIRROR to a folder that holds it"
        )
    floor = _RateFloor(
        _setting(min_rate, "min_rate", MIN_RATE_ENV, DEFAULT_MIN_RATE, positive=False),
        _setting(rate_window, "rate_window", RATE_WINDOW_ENV, DEFAULT_RATE_WINDOW, positive=True),
    )
    source = _source(entry, mirror)
    folder.mkdir(parents=True, exist_ok=True)
    _remove_stale_parts(folder, entry)
    _download(source, target, entry, timeout=timeout, floor=floor, progress=progress)
    return target


def local_copy(entry: WeightsEntry, *, cache: str | Path | None = None) -> Path | None:
    """Where ``entry``'s file already lies on this machine, unverified and without any download: the
    shipped file, the cached one, or for an ``hf-hub:`` entry the Hugging Face cache's; None if nowhere."""
    if entry.packaged:
        path = Path(entry.location or PACKAGED_DIR) / entry.file
        return path if path.is_file() else None
    target = _target(Path(cache) if cache is not None else cache_dir(), entry)
    if target.is_file():
        return target
    return hf_hub.cached_file(_hub_spec(entry)) if _on_hub(entry) else None


def _on_hub(entry: WeightsEntry) -> bool:
    return bool(entry.url and entry.url.startswith(hf_hub.HUB_PREFIX))


def _hub_spec(entry: WeightsEntry) -> hf_hub.HubSpec:
    assert entry.url is not None
    return hf_hub.HubSpec.parse(entry.url, where=f"{entry.name}: url")


def _setting(value: float | None, arg: str, env: str, default: float, *, positive: bool) -> float:
    """``value``, else the environment variable ``env``, else ``default``; checked to be in range."""
    name = arg if value is not None else env
    raw: Any = value if value is not None else os.environ.get(env, "").strip() or default
    try:
        number = float(raw)
    except ValueError:
        number = math.nan
    if not math.isfinite(number) or not (number > 0 if positive else number >= 0):
        bound = "> 0" if positive else ">= 0 (0: no floor)"
        raise ConfigError(f"{name}={raw!r} is not a finite number {bound}; e.g. {name}={default:g}")
    return number


class _RateFloor:
    """Tracks the average download rate over the last ``window`` seconds against ``floor`` bytes/s."""

    def __init__(self, floor: float, window: float) -> None:
        self.floor = floor
        self.window = window
        self.start()

    def start(self) -> None:
        """Start the clock (when the answer's headers are in: connecting is ``timeout``'s business)."""
        self._samples: deque[tuple[float, int]] = deque([(time.monotonic(), 0)])

    def too_slow(self, received: int) -> float | None:
        """The average rate over the last window when it is under the floor, else None."""
        if self.floor <= 0:
            return None
        now = time.monotonic()
        samples = self._samples
        if now - samples[-1][0] >= self.window / 64:  # a few dozen samples per window, whatever the rate
            samples.append((now, received))
        # keep the newest sample at or before the window's start: the average spans the whole window
        while len(samples) > 1 and samples[1][0] <= now - self.window:
            samples.popleft()
        since, base = samples[0]
        if now - since < self.window:
            return None  # not a full window yet
        rate = (received - base) / (now - since)  # ``received`` now, not as last sampled
        return rate if rate < self.floor else None


def _target(cache: Path, entry: WeightsEntry) -> Path:
    check_file_name(entry.file, entry.name)
    target = (cache / entry.file).resolve()
    if target.parent != cache.resolve():
        raise WeightsError(f"{entry.name}: file {entry.file!r} would land outside the cache folder {cache}")
    return target


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def _remove_stale_parts(folder: Path, entry: WeightsEntry, max_age_s: float = 3600.0) -> None:
    # A process killed mid-download leaves its temporary file; it is never used, and once nobody can
    # still be writing it (an hour without change), it is removed.
    for part in folder.glob(f".{entry.file}.*.part"):
        with contextlib.suppress(FileNotFoundError):
            if time.time() - part.stat().st_mtime > max_age_s:
                part.unlink()


def _source(entry: WeightsEntry, mirror: str | None) -> str:
    if mirror:
        if "://" in mirror:
            return mirror.rstrip("/") + "/" + urllib.parse.quote(entry.file)
        return Path(mirror).expanduser().resolve().joinpath(entry.file).as_uri()
    if not entry.url:
        raise WeightsError(f"{entry.name}: no url in its manifest entry; set UNET_ZOO_MIRROR to where it is")
    return entry.url


def _download(
    url: str, target: Path, entry: WeightsEntry, *, timeout: float, floor: _RateFloor, progress: bool
) -> None:
    """Stream ``url`` into a temporary file beside ``target``, verify it, rename it into place."""
    log.info("downloading %s from %s", entry.name, url)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{entry.file}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        received = 0
        with os.fdopen(fd, "wb") as out, _open(url, entry, timeout) as response:
            announced = response.headers.get("Content-Length") if hasattr(response, "headers") else None
            # read1: whatever has arrived, at most one system call. read(n) would wait for all n bytes,
            # so bytes that came before a stall were lost to the count and a trickle was never seen.
            read = getattr(response, "read1", response.read)
            bar = _progress_bar(entry, progress)
            floor.start()
            try:
                while True:
                    try:
                        chunk = read(CHUNK)
                    except TimeoutError:
                        raise DownloadError(
                            f"{entry.name}: {url} stalled (no data for {timeout:g} s after {received} of "
                            f"{entry.size} bytes); try again or use UNET_ZOO_MIRROR"
                        ) from None
                    except (HTTPException, OSError) as err:
                        raise DownloadError(
                            f"{entry.name}: transfer from {url} broke after {received} of {entry.size} bytes "
                            f"({err}); try again"
                        ) from None
                    if not chunk:
                        break
                    received += len(chunk)
                    if received > entry.size:
                        raise ChecksumError(
                            f"{entry.name}: {url} sent more than the expected {entry.size} bytes; "
                            "it is not the file the manifest names"
                        )
                    digest.update(chunk)
                    out.write(chunk)
                    if bar is not None:
                        bar.update(len(chunk))
                    rate = floor.too_slow(received)
                    if rate is not None:
                        raise DownloadError(
                            f"{entry.name}: {url} is too slow: {rate:.0f} bytes/s over the last "
                            f"{floor.window:g} s, under the floor of {floor.floor:g} bytes/s, after "
                            f"{received} of {entry.size} bytes; try again, use UNET_ZOO_MIRROR, or lower "
                            f"{MIN_RATE_ENV} (0: no floor)"
                        )
            finally:
                if bar is not None:
                    bar.close()
        if announced is not None and announced.isdigit() and int(announced) != received:
            raise DownloadError(
                f"{entry.name}: truncated transfer from {url}: {received} of {announced} announced bytes"
            )
        if received != entry.size:
            raise ChecksumError(
                f"{entry.name}: got {received} bytes from {url}, expected {entry.size} (truncated or a "
                "different file); nothing was cached"
            )
        if digest.hexdigest() != entry.sha256:
            raise ChecksumError(
                f"{entry.name}: sha256 of the file from {url} is {digest.hexdigest()}, expected "
                f"{entry.sha256}; the file was tampered with or replaced. Nothing was cached"
            )
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def _open(url: str, entry: WeightsEntry, timeout: float) -> Any:
    try:
        return urllib.request.urlopen(url, timeout=timeout)
    except urllib.error.HTTPError as err:
        raise DownloadError(f"{entry.name}: HTTP {err.code} {err.reason} from {url}") from None
    except urllib.error.URLError as err:
        reason = err.reason
        if isinstance(reason, TimeoutError):
            raise DownloadError(f"{entry.name}: {url} did not answer within {timeout:g} s") from None
        raise DownloadError(
            f"{entry.name}: cannot reach {url} ({reason}); check the address, or set UNET_ZOO_MIRROR / "
            "UNET_ZOO_OFFLINE"
        ) from None
    except TimeoutError:
        raise DownloadError(f"{entry.name}: {url} did not answer within {timeout:g} s") from None
    except (HTTPException, OSError) as err:
        raise DownloadError(f"{entry.name}: cannot read {url} ({err})") from None


def _progress_bar(entry: WeightsEntry, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=entry.size, unit="B", unit_scale=True, desc=entry.name, leave=False)
