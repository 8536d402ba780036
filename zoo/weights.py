"""Pretrained weights: a manifest of the checkpoints the harness produced, verified files, a download cache.

A manifest entry (:class:`WeightsEntry`) says what a file is (model name and arguments, channels,
classes), what it was trained on (dataset and split, the exact validation items), what the harness
measured on it (metrics, with the dtype and memory format of that evaluation), what it costs
(parameters, file size) and where it comes from (a file shipped inside the package, or a URL; the suite,
run id and git commit that produced it). Its name is ``MODEL.TAG``, e.g. ``unet_bn.isbi2012-w16-s0``.

Files are safetensors: loading never executes code. Every file is checked against the manifest's size
and sha256 before use, whether shipped, cached or just downloaded. Downloads stream into a temporary file
inside the cache folder and are renamed into place only after the check passes, so the cache never holds
a partial or tampered file.

Environment:
    ``UNET_ZOO_HOME``      the cache folder (default: the platform's user cache, e.g. ``~/.cache/unet-zoo``).
    ``UNET_ZOO_MIRROR``    a URL or local folder that stands in for the source host (files by name).
    ``UNET_ZOO_OFFLINE``   ``1`` makes a missing file fail at once with the command that would fetch it.
    ``UNET_ZOO_MANIFEST``  extra manifest files (``os.pathsep``-separated) added to the shipped one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from http.client import HTTPException
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

__all__ = [
    "PACKAGED_DIR",
    "ChecksumError",
    "DownloadError",
    "OfflineError",
    "TrainingScale",
    "WeightsEntry",
    "WeightsError",
    "WeightsMismatchError",
    "build_model_with",
    "cache_dir",
    "check_tag",
    "create_pretrained",
    "fetch",
    "file_sha256",
    "find_weights",
    "list_weights",
    "load_entry",
    "load_manifest",
    "model_from_state",
    "read_metadata",
    "read_weights",
    "save_weights",
    "verify_file",
    "write_manifest",
]

log = logging.getLogger(__name__)

PACKAGED_DIR = Path(__file__).resolve().parent / "pretrained"
"""Files shipped inside the package, with their manifest (``manifest.json``)."""

MANIFEST_VERSION = 1
_CHUNK = 1 << 20
# Names become file names in the cache: one path component of plain characters, never "." or "..".
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,199}")
_SAFE_TAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,99}")
_HEX64 = re.compile(r"[0-9a-f]{64}")


class WeightsError(RuntimeError):
    """A weights file could not be found, fetched, verified or read; the message says what to do."""


class ChecksumError(WeightsError):
    """A file's size or sha256 differs from its manifest entry."""


class DownloadError(WeightsError):
    """A download failed (HTTP error, refused or stalled connection, truncated transfer)."""


class OfflineError(WeightsError):
    """The file is not in the cache and downloads are switched off."""


class WeightsMismatchError(ValueError):
    """The requested weights do not fit the requested model, arguments, channels or classes."""


def _size_pair(value: Any, name: str) -> tuple[int, int] | None:
    if value is None:
        return None
    if (
        isinstance(value, list | tuple)
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
    ):
        return (int(value[0]), int(value[1]))
    raise ValueError(f"{name}={value!r} is not null or [H, W] (two positive ints)")


@dataclass(frozen=True)
class TrainingScale:
    """The pixel scale weights were trained at: what ``unet-zoo predict`` brings its inputs to.

    The rule, defined here once: a run that resized its images (the training config's ``resize``,
    ``(H, W)``, aspect ratio not kept) made a model that expects every input resized to ``resize``;
    a run without one saw its images at their stored pixel scale, and its model expects inputs at that
    scale, whatever their size. ``image_size`` is the training images' ``(H, W)`` as the model saw them
    (``resize`` when there is one): nothing is resampled by it, it only lets predict warn about inputs
    far from the training images' size. Either may be None when it was not recorded.

    Recorded in a manifest entry's ``evaluation`` and in the metadata of the files the harness writes,
    both as :meth:`as_record` gives it; read back by :meth:`from_record`.
    """

    resize: tuple[int, int] | None = None
    image_size: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        resize, image_size = _size_pair(self.resize, "resize"), _size_pair(self.image_size, "image_size")
        object.__setattr__(self, "resize", resize)
        object.__setattr__(self, "image_size", image_size or resize)

    @classmethod
    def from_record(cls, record: Mapping[str, Any], *, origin: str = "weights") -> TrainingScale:
        """Read ``resize`` and ``image_size`` from a manifest entry's ``evaluation`` (lists) or a file's
        metadata (JSON text); absent keys are None.

        Raises:
            WeightsError: a value that is not null or ``[H, W]``, naming ``origin``.
        """
        values = {}
        try:
            for key in ("resize", "image_size"):
                value = record.get(key)
                if isinstance(value, str):
                    try:
                        value = json.loads(value)
                    except ValueError:
                        raise ValueError(f"{key}={value!r} is not JSON null or [H, W]") from None
                values[key] = value
            return cls(**values)
        except ValueError as err:
            raise WeightsError(f"{origin}: {err}; fix the manifest entry or re-publish the weights") from None

    def as_record(self) -> dict[str, list[int] | None]:
        """``{"resize": [H, W] | None, "image_size": [H, W] | None}``, as manifests and files store it."""
        return {
            "resize": list(self.resize) if self.resize else None,
            "image_size": list(self.image_size) if self.image_size else None,
        }


@dataclass(frozen=True)
class WeightsEntry:
    """One checkpoint. ``name`` is ``MODEL.TAG``; ``file`` is the file's name in the package or cache."""

    model: str
    tag: str
    model_args: dict[str, Any]
    """The model's fully resolved arguments (``model.model_args``), defaults included."""
    in_channels: int
    num_classes: int
    dataset: str
    split: dict[str, Any]
    """How the validation set was chosen, and ``val_items``: the names of the images evaluated."""
    evaluation: dict[str, Any]
    """How the metrics were measured: ``dtype``, ``channels_last``, ``batch_size``, ``resize``, ``isbi``;
    ``resize`` and ``image_size`` are also the training scale (:attr:`training_scale`)."""
    metrics: dict[str, float]
    params: int
    file: str
    size: int
    sha256: str
    url: str | None = None
    packaged: bool = False
    suite: str = ""
    run_id: str = ""
    git_commit: str = ""
    default: bool = False
    notes: str = ""
    recipe: str = ""
    """The training recipe's name (``zoo/harness/recipes.toml``); empty for runs made without one."""
    train_config: dict[str, Any] = field(default_factory=dict)
    """The run's resolved training config (every ``TrainConfig`` field but the machine's data path)."""
    training: dict[str, Any] = field(default_factory=dict)
    """What training cost: ``device`` (its name), ``minutes`` (the run's wall time, validation included),
    ``epochs`` (run) and ``best_epoch``."""
    extra: dict[str, Any] = field(default_factory=dict)
    location: str | None = field(default=None, compare=False, repr=False)
    """Folder of a packaged file: its manifest's folder (set when read; not stored in the manifest)."""

    @property
    def name(self) -> str:
        return f"{self.model}.{self.tag}"

    @property
    def training_scale(self) -> TrainingScale:
        """The scale the weights were trained at (:class:`TrainingScale`), from ``evaluation``."""
        return TrainingScale.from_record(self.evaluation, origin=self.name)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, origin: str = "manifest") -> WeightsEntry:
        """Build and check an entry (``origin`` names the manifest in errors)."""
        known = {f for f in cls.__dataclass_fields__} - {"location"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise WeightsError(
                f"{origin}: unknown field(s) {unknown} in entry {data.get('model')}.{data.get('tag')}"
            )
        try:
            entry = cls(**data)
        except TypeError as err:
            raise WeightsError(
                f"{origin}: incomplete entry {data.get('model')}.{data.get('tag')}: {err}"
            ) from None
        entry.check(origin)
        return entry

    def check(self, origin: str = "manifest") -> None:
        """Reject entries whose names could escape the cache folder or whose hash is malformed."""
        where = f"{origin}: entry {self.model!r}.{self.tag!r}"
        if not _SAFE_TAG.fullmatch(self.model):
            raise WeightsError(f"{where}: model must be letters, digits, '_' or '-'")
        check_tag(self.tag, f"{where}: tag")
        _check_file_name(self.file, where)
        if not _HEX64.fullmatch(self.sha256):
            raise WeightsError(f"{where}: sha256 must be 64 lowercase hex digits, got {self.sha256!r}")
        if not self.packaged and not self.url:
            raise WeightsError(f"{where}: neither packaged nor a url; say where the file comes from")
        if self.url and urllib.parse.urlparse(self.url).scheme not in ("http", "https", "file"):
            raise WeightsError(f"{where}: url {self.url!r} is not http(s) or file")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        del data["location"]
        return data


def check_tag(tag: str, where: str = "tag") -> None:
    """A weights tag names a file (``MODEL.TAG.safetensors``): letters, digits, '_' and '-' only, so that
    it can never reach outside the folder it is written to or cached in."""
    if not _SAFE_TAG.fullmatch(tag):
        raise WeightsError(
            f"{where} {tag!r}: a tag is 1 to 100 letters, digits, '_' or '-' (it names the file "
            "MODEL.TAG.safetensors, inside the output folder); choose another"
        )


def _check_file_name(name: str, where: str) -> None:
    if not _SAFE_NAME.fullmatch(name) or ".." in name:
        raise WeightsError(
            f"{where}: file name {name!r} is not a plain file name (letters, digits, '_', '-', '.'; no "
            "folders, no '..'); it would escape the cache folder"
        )


# -- manifest --------------------------------------------------------------------------------------


def _manifest_paths() -> list[Path]:
    paths = [PACKAGED_DIR / "manifest.json"]
    extra = os.environ.get("UNET_ZOO_MANIFEST", "")
    paths += [Path(p) for p in extra.split(os.pathsep) if p]
    return paths


def _read_manifest(path: Path) -> list[WeightsEntry]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise WeightsError(f"{path}: manifest not found (check UNET_ZOO_MANIFEST)") from None
    except (OSError, ValueError) as err:
        raise WeightsError(f"{path}: not a readable JSON manifest ({err})") from None
    if not isinstance(data, dict) or data.get("version") != MANIFEST_VERSION:
        raise WeightsError(f"{path}: expected a manifest object with version {MANIFEST_VERSION}")
    entries = [WeightsEntry.from_dict(e, origin=str(path)) for e in data.get("weights", [])]
    folder = str(path.resolve().parent)
    return [replace(e, location=folder) for e in entries]


def load_manifest(paths: Iterable[str | Path] | None = None) -> list[WeightsEntry]:
    """Entries of the shipped manifest plus ``UNET_ZOO_MANIFEST``'s (or of ``paths``), in order.

    Raises:
        WeightsError: an unreadable manifest, a malformed entry, or one name defined twice.
    """
    chosen = [Path(p) for p in paths] if paths is not None else _manifest_paths()
    seen: dict[str, Path] = {}
    entries: list[WeightsEntry] = []
    for path in chosen:
        if path == PACKAGED_DIR / "manifest.json" and not path.is_file():
            continue  # a package built without weights
        for entry in _read_manifest(path):
            if entry.name in seen:
                raise WeightsError(f"{entry.name} is defined twice: in {seen[entry.name]} and in {path}")
            seen[entry.name] = path
            entries.append(entry)
    return entries


def write_manifest(path: str | Path, entries: Iterable[WeightsEntry]) -> None:
    """Write a manifest file atomically, entries sorted by name."""
    path = Path(path)
    body = {
        "version": MANIFEST_VERSION,
        "weights": [e.to_dict() for e in sorted(entries, key=lambda e: e.name)],
    }
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(body, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


def list_weights(pattern: str = "*", *, manifest: list[WeightsEntry] | None = None) -> list[WeightsEntry]:
    """Entries whose ``MODEL.TAG`` name matches a shell wildcard pattern."""
    import fnmatch

    entries = manifest if manifest is not None else load_manifest()
    return [e for e in entries if fnmatch.fnmatchcase(e.name, pattern)]


def find_weights(
    model: str, tag: str | None = None, *, manifest: list[WeightsEntry] | None = None
) -> WeightsEntry:
    """The entry for ``model`` and ``tag`` (``tag`` may also be a full ``MODEL.TAG`` name); ``tag=None``
    gives the model's default entry (marked ``default``, or its only one).

    Raises:
        WeightsMismatchError: no such tag for this model, listing the tags that exist.
    """
    entries = manifest if manifest is not None else load_manifest()
    if tag is not None and "." in tag:
        named_model, _, tag = tag.partition(".")
        if named_model != model:
            raise WeightsMismatchError(
                f"weights {named_model}.{tag} are for model {named_model!r}, not {model!r}; use "
                f"create_model({named_model!r}, weights={tag!r})"
            )
    own = [e for e in entries if e.model == model]
    if tag is None:
        defaults = [e for e in own if e.default] or (own if len(own) == 1 else [])
        if len(defaults) == 1:
            return defaults[0]
    else:
        for e in own:
            if e.tag == tag:
                return e
    available = ", ".join(_describe(e) for e in own) or "none"
    others = sorted({e.model for e in entries} - {model})
    what = f"tag {tag!r}" if tag is not None else "a default tag"
    raise WeightsMismatchError(
        f"no weights with {what} for model {model!r}. Tags for {model}: {available}. "
        f"Models with weights: {', '.join(others) or 'none'} (see `unet-zoo weights list`)"
    )


def _describe(e: WeightsEntry) -> str:
    return f"{e.tag} ({e.dataset}, in_channels={e.in_channels}, num_classes={e.num_classes}, {_args_text(e)})"


def _args_text(e: WeightsEntry) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in sorted(e.model_args.items()))


# -- files -----------------------------------------------------------------------------------------


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


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


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


def _target(cache: Path, entry: WeightsEntry) -> Path:
    _check_file_name(entry.file, entry.name)
    target = (cache / entry.file).resolve()
    if target.parent != cache.resolve():
        raise WeightsError(f"{entry.name}: file {entry.file!r} would land outside the cache folder {cache}")
    return target


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def fetch(
    entry: WeightsEntry,
    *,
    cache: str | Path | None = None,
    mirror: str | None = None,
    offline: bool | None = None,
    timeout: float = 30.0,
    progress: bool = False,
) -> Path:
    """The verified local file of ``entry``: the shipped file, the cached one, or a fresh download.

    Args:
        cache: the cache folder (default :func:`cache_dir`).
        mirror: a URL or local folder holding the files by name, used instead of the entry's URL
            (default ``UNET_ZOO_MIRROR``).
        offline: never download; a missing file raises :class:`OfflineError` (default ``UNET_ZOO_OFFLINE``).
        timeout: seconds a connection may stay silent before the download is abandoned.

    Raises:
        ChecksumError, DownloadError, OfflineError: and nothing bad is left in the cache.
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
    offline = _truthy(os.environ.get("UNET_ZOO_OFFLINE")) if offline is None else offline
    if offline:
        raise OfflineError(
            f"{entry.name} is not in the cache ({target}) and downloads are off (UNET_ZOO_OFFLINE). On a "
            f"machine with access run `unet-zoo weights download {entry.name}` and copy {entry.file} into "
            f"{folder}, or set UNET_ZOO_MIRROR to a folder that holds it"
        )
    mirror = mirror if mirror is not None else os.environ.get("UNET_ZOO_MIRROR") or None
    source = _source(entry, mirror)
    folder.mkdir(parents=True, exist_ok=True)
    _remove_stale_parts(folder, entry)
    _download(source, target, entry, timeout=timeout, progress=progress)
    return target


def _remove_stale_parts(folder: Path, entry: WeightsEntry, max_age_s: float = 3600.0) -> None:
    # A process killed mid-download leaves its temporary file; it is never used, and once nobody can
    # still be writing it (an hour without change), it is removed.
    import time

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


def _download(url: str, target: Path, entry: WeightsEntry, *, timeout: float, progress: bool) -> None:
    """Stream ``url`` into a temporary file beside ``target``, verify it, rename it into place."""
    log.info("downloading %s from %s", entry.name, url)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{entry.file}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        received = 0
        with os.fdopen(fd, "wb") as out, _open(url, entry, timeout) as response:
            announced = response.headers.get("Content-Length") if hasattr(response, "headers") else None
            bar = _progress_bar(entry, progress)
            try:
                while True:
                    try:
                        chunk = response.read(_CHUNK)
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


# -- safetensors I/O -------------------------------------------------------------------------------


def save_weights(model: nn.Module, path: str | Path, metadata: Mapping[str, Any] | None = None) -> None:
    """Write ``model``'s state as safetensors with its name, arguments, channels and classes as metadata
    (plus ``metadata``; non-strings as JSON). Written to a temporary file and renamed: never half a file."""
    path = Path(path)
    meta = {
        "format": "unet-zoo",
        "model_name": str(getattr(model, "model_name", "")),
        "model_args": json.dumps(getattr(model, "model_args", {}), sort_keys=True),
    }
    for key in ("in_channels", "num_classes"):
        if hasattr(model, key):
            meta[key] = str(getattr(model, key))
    meta.update(
        {k: v if isinstance(v, str) else json.dumps(v, sort_keys=True) for k, v in (metadata or {}).items()}
    )
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    tmp = path.with_name(path.name + ".tmp")
    try:
        save_file(state, str(tmp), metadata=meta)
        tmp.chmod(0o644)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file (never executes code).

    Raises:
        WeightsError: a missing, truncated or non-safetensors file, naming it.
    """
    return _read(Path(path), tensors=True)


def read_metadata(path: str | Path) -> dict[str, str]:
    """The metadata of a safetensors file (model name and arguments, training scale ...), from its
    header alone.

    Raises:
        WeightsError: a missing or non-safetensors file, naming it.
    """
    return _read(Path(path), tensors=False)[1]


def _read(path: Path, *, tensors: bool) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
        return (load_file(str(path)) if tensors else {}), metadata
    except (SafetensorError, OSError, ValueError) as err:
        raise WeightsError(
            f"{path}: not a readable safetensors file ({err}); it may be truncated — download it again "
            "(`unet-zoo weights download NAME.TAG`) or re-export it"
        ) from None


def _normalise(value: Any) -> Any:
    # JSON round trip: tuples become lists, so recorded and requested arguments compare equal
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def _entry_from_file(path: Path, metadata: Mapping[str, str], name: str) -> WeightsEntry:
    """A minimal entry describing a local file (no hash to check: the user pointed at it)."""
    stored = metadata.get("model_name")
    if not stored:
        raise WeightsError(
            f"{path}: no model_name in the file's metadata; it was not written by unet-zoo. Import it "
            "with `unet-zoo weights import` (milesial or smp checkpoints)"
        )
    if stored != name:
        raise WeightsMismatchError(
            f"{path} holds weights for model {stored!r}, not {name!r}; use create_model({stored!r}, ...)"
        )
    try:
        args = json.loads(metadata.get("model_args", "{}"))
        in_ch = int(metadata["in_channels"]) if "in_channels" in metadata else -1
        classes = int(metadata["num_classes"]) if "num_classes" in metadata else -1
    except ValueError as err:
        raise WeightsError(f"{path}: malformed metadata ({err})") from None
    return WeightsEntry(
        model=stored,
        tag=path.stem,
        model_args=args,
        in_channels=in_ch,
        num_classes=classes,
        dataset=metadata.get("dataset", ""),
        split={},
        evaluation=TrainingScale.from_record(metadata, origin=str(path)).as_record(),
        metrics={},
        params=0,
        file=path.name,
        size=path.stat().st_size,
        sha256="0" * 64,
        url=path.resolve().as_uri(),
    )


def _looks_like_path(weights: str | Path) -> bool:
    text = str(weights)
    return isinstance(weights, Path) or text.endswith(".safetensors") or os.sep in text or "/" in text


def create_pretrained(
    name: str,
    weights: str | Path | None,
    *,
    in_channels: int | None = None,
    num_classes: int | None = None,
    **overrides: Any,
) -> nn.Module:
    """Build ``name`` and load verified weights into it (what ``create_model(name, weights=...)`` does).

    Args:
        weights: a tag of ``name`` in the manifest (``"isbi2012-w16-s0"`` or ``"unet_bn.isbi2012-w16-s0"``),
            ``None`` for the model's default tag, or a path to a ``.safetensors`` file written by unet-zoo.
        in_channels, num_classes, overrides: optional; when given they must equal the weights' own.

    Raises:
        WeightsMismatchError: the weights do not fit (listing the tags and arguments that would).
        WeightsError: a missing, corrupt or unverifiable file.
    """
    from zoo.registry import get_entry

    get_entry(name)  # an unknown name fails here, with the closest names
    if weights is not None and _looks_like_path(weights):
        path = Path(weights).expanduser()
        state, metadata = read_weights(path)
        entry = _entry_from_file(path, metadata, name)
        if entry.in_channels < 0 or entry.num_classes < 0:
            if in_channels is None or num_classes is None:
                raise WeightsError(
                    f"{path}: the file does not record in_channels/num_classes; pass them to create_model"
                )
            entry = WeightsEntry(
                **{**entry.to_dict(), "in_channels": in_channels, "num_classes": num_classes}
            )
    else:
        entry = find_weights(name, None if weights is None else str(weights))
        path = fetch(entry)
        state, _ = read_weights(path)
    _check_fit(entry, in_channels, num_classes, overrides)
    return build_model_with(entry, state, source=str(path))


def load_entry(entry: WeightsEntry, **fetch_options: Any) -> nn.Module:
    """The model of a manifest entry with its verified weights loaded (``fetch_options`` go to
    :func:`fetch`): for entries of manifests other than the installed ones."""
    path = fetch(entry, **fetch_options)
    state, _ = read_weights(path)
    return build_model_with(entry, state, source=str(path))


def build_model_with(entry: WeightsEntry, state: Mapping[str, torch.Tensor], *, source: str) -> nn.Module:
    """Build ``entry.model`` with the entry's recorded arguments and load ``state`` strictly.

    Raises:
        WeightsMismatchError: arguments this version of the zoo cannot build, or tensors that do not fit.
    """
    model = model_from_state(
        entry.model, entry.model_args, entry.in_channels, entry.num_classes, state, source=source
    )
    model.pretrained_weights = entry.name  # type: ignore[assignment]
    # beside the name, the scale predict brings inputs to (read as predict's scale="auto")
    model.training_scale = entry.training_scale  # type: ignore[assignment]
    return model


def model_from_state(
    name: str,
    model_args: Mapping[str, Any],
    in_channels: int,
    num_classes: int,
    state: Mapping[str, torch.Tensor],
    *,
    source: str,
) -> nn.Module:
    """``name`` built with recorded (fully resolved) arguments and loaded strictly with ``state``.

    Raises:
        WeightsMismatchError: arguments this version of the zoo cannot build, or tensors that do not fit.
    """
    from zoo.registry import accepted_overrides, create_model

    # Pass only the arguments that the name lets a user change and that differ from its recipe.
    with torch.device("meta"):
        probe = create_model(name, in_channels=in_channels, num_classes=num_classes)
    accepted = set(accepted_overrides(type(probe)))
    recipe = _normalise(probe.model_args)
    stored = _normalise(dict(model_args))
    fixed_diff = sorted(k for k, v in stored.items() if k not in accepted and recipe.get(k, v) != v)
    if fixed_diff:
        raise WeightsMismatchError(
            f"{source}: recorded arguments {fixed_diff} differ from what {name!r} fixes in this "
            "version of unet-zoo; the weights belong to an incompatible model definition"
        )
    build = {k: model_args[k] for k in stored if k in accepted and recipe.get(k) != stored[k]}
    model = create_model(name, in_channels=in_channels, num_classes=num_classes, **build)
    try:
        model.load_state_dict(dict(state), strict=True)
    except RuntimeError as err:
        args = ", ".join(f"{k}={v!r}" for k, v in sorted(model_args.items()))
        raise WeightsMismatchError(f"{source}: the tensors do not fit {name} with {args}: {err}") from None
    return model


def _check_fit(
    entry: WeightsEntry, in_channels: int | None, num_classes: int | None, overrides: Mapping[str, Any]
) -> None:
    problems = []
    if in_channels is not None and in_channels != entry.in_channels:
        problems.append(f"in_channels={in_channels} (weights: {entry.in_channels})")
    if num_classes is not None and num_classes != entry.num_classes:
        problems.append(f"num_classes={num_classes} (weights: {entry.num_classes})")
    stored = _normalise(entry.model_args)
    for key, value in overrides.items():
        if key not in stored:
            problems.append(f"{key}={value!r} (not an argument of {entry.model})")
        elif _normalise(value) != stored[key]:
            problems.append(f"{key}={value!r} (weights: {stored[key]!r})")
    if not problems:
        return
    try:
        fits = [e for e in load_manifest() if e.model == entry.model]
    except WeightsError:
        fits = []
    choices = "; ".join(_describe(e) for e in fits) or "none in the manifest"
    raise WeightsMismatchError(
        f"weights {entry.name} do not fit the request: {', '.join(problems)}. Leave those arguments out to "
        f"get the weights' own, or pick a tag that fits. Tags for {entry.model}: {choices}"
    )
