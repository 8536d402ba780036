"""The weights manifest: one :class:`WeightsEntry` per published checkpoint, and how to find one.

An entry says what a file is (model name and arguments, channels, classes), what it was trained on
(dataset and split, the exact validation items), what the harness measured on it (metrics, with the
dtype and memory format of that evaluation), what it costs (parameters, file size) and where it comes
from (a file shipped inside the package, a URL, or a Hugging Face Hub repository at a revision,
``hf-hub:ORG/REPO@REVISION``; the suite, run id and git commit that produced it).
Its name is ``MODEL.TAG``, e.g. ``unet_bn.isbi2012-w16-s0``.

The installed manifest is ``zoo/pretrained/manifest.json`` plus the files named by ``UNET_ZOO_MANIFEST``
(``os.pathsep``-separated).
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from zoo.weights.errors import WeightsError, WeightsMismatchError
from zoo.weights.files import TrainingScale
from zoo.weights.hf_hub import HUB_PREFIX, HubSpec

__all__ = [
    "MANIFEST_VERSION",
    "PACKAGED_DIR",
    "WeightsEntry",
    "check_file_name",
    "check_tag",
    "find_weights",
    "list_weights",
    "load_manifest",
    "write_manifest",
]

PACKAGED_DIR = Path(__file__).resolve().parents[1] / "pretrained"
"""Files shipped inside the package, with their manifest (``manifest.json``)."""

MANIFEST_VERSION = 1
# Names become file names in the cache: one path component of plain characters, never "." or "..".
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,199}")
_SAFE_TAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,99}")
_HEX64 = re.compile(r"[0-9a-f]{64}")


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
    """Where the file is served: ``http(s)://...`` or ``file://...`` (the file itself), or
    ``hf-hub:ORG/REPO@REVISION`` (the repository's ``model.safetensors`` at that revision)."""
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

    def describe(self) -> str:
        """``TAG (dataset, in_channels=..., num_classes=..., arguments)``: what error messages offer."""
        args = ", ".join(f"{k}={v!r}" for k, v in sorted(self.model_args.items()))
        return (
            f"{self.tag} ({self.dataset}, in_channels={self.in_channels}, num_classes={self.num_classes}, "
            f"{args})"
        )

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
        check_file_name(self.file, where)
        if not _HEX64.fullmatch(self.sha256):
            raise WeightsError(f"{where}: sha256 must be 64 lowercase hex digits, got {self.sha256!r}")
        if not self.packaged and not self.url:
            raise WeightsError(f"{where}: neither packaged nor a url; say where the file comes from")
        if self.url and self.url.startswith(HUB_PREFIX):
            if HubSpec.parse(self.url, where=f"{where}: url").revision is None:
                raise WeightsError(
                    f"{where}: url {self.url!r} names no revision; an entry records the one it was published "
                    "at (hf-hub:ORG/REPO@COMMIT)"
                )
        elif self.url and urllib.parse.urlparse(self.url).scheme not in ("http", "https", "file"):
            raise WeightsError(f"{where}: url {self.url!r} is not http(s), file or hf-hub:ORG/REPO@REVISION")

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


def check_file_name(name: str, where: str) -> None:
    """An entry's ``file`` is one plain path component: it can never name a place outside the cache."""
    if not _SAFE_NAME.fullmatch(name) or ".." in name:
        raise WeightsError(
            f"{where}: file name {name!r} is not a plain file name (letters, digits, '_', '-', '.'; no "
            "folders, no '..'); it would escape the cache folder"
        )


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
    available = ", ".join(e.describe() for e in own) or "none"
    others = sorted({e.model for e in entries} - {model})
    what = f"tag {tag!r}" if tag is not None else "a default tag"
    raise WeightsMismatchError(
        f"no weights with {what} for model {model!r}. Tags for {model}: {available}. "
        f"Models with weights: {', '.join(others) or 'none'} (see `unet-zoo weights list`)"
    )
