"""Weights on the Hugging Face Hub, against a fake Hub on 127.0.0.1 (tests/hub_server.py): loading
``hf-hub:ORG/REPO[@REVISION]`` through huggingface_hub and this project's own size + sha256 check, manifest
entries whose source is a Hub repository, and ``weights publish --push-to-hub``.

huggingface_hub reads its environment (``HF_ENDPOINT``, ``HF_HOME``, ``HF_HUB_OFFLINE``, the token file's
place) once, when it is imported, into ``huggingface_hub.constants``; timm imported it long before any
test runs. So the ``hub`` fixture sets those module values, as a process started with the variables
would have them, and sets the variables too; one test starts such a process to show that path works.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
import yaml
from huggingface_hub import constants

from zoo import create_model
from zoo.cli import main
from zoo.harness import Tracker, train
from zoo.harness.publish import write_hub_folder
from zoo.weights import (
    ChecksumError,
    DownloadError,
    OfflineError,
    TrainingScale,
    UploadError,
    WeightsEntry,
    WeightsError,
    WeightsMismatchError,
    fetch,
    file_sha256,
    load_manifest,
    local_copy,
    read_weights,
    save_weights,
)
from zoo.weights.hf_hub import CONFIG_FILE, WEIGHTS_FILE, download, push_folder

from .helpers import tiny_model, tiny_run
from .hub_server import FakeHub

REPO = "zoo-org/unet_bn-tiny"
SIDE = 64


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    """A fake Hub; huggingface_hub pointed at it, with its cache in ``tmp_path/hf``, no token, online."""
    home = tmp_path / "hf"
    with FakeHub() as server:
        for name in (
            "HF_TOKEN",
            "HUGGING_FACE_HUB_TOKEN",
            "HF_HUB_OFFLINE",
            "HF_HUB_CACHE",
            "HF_OIDC_RESOURCE",
        ):
            monkeypatch.delenv(name, raising=False)
        for name in ("UNET_ZOO_OFFLINE", "UNET_ZOO_MIRROR", "UNET_ZOO_MANIFEST"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
        monkeypatch.setenv("HF_HOME", str(home))
        monkeypatch.setenv("UNET_ZOO_HOME", str(tmp_path / "zoo-home"))
        # what constants.py derived from those variables at import time
        monkeypatch.setattr(constants, "ENDPOINT", server.endpoint)
        template = server.endpoint + "/{repo_id}/resolve/{revision}/{filename}"
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)
        monkeypatch.setattr(constants, "HF_HOME", str(home))
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
        monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
        monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(home / "stored_tokens"))
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        yield server


def go_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """``HF_HUB_OFFLINE=1``, as a process started with it sees it."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


@dataclasses.dataclass
class Published:
    entry: WeightsEntry
    file: Path
    model: torch.nn.Module


def make_published(folder: Path, *, seed: int = 0, tag: str = "tiny") -> Published:
    """A tiny unet_bn with its weights file and a complete manifest entry, as publish_run makes them."""
    folder.mkdir(parents=True, exist_ok=True)
    model = tiny_model("unet_bn")
    with torch.no_grad():
        for value in model.state_dict().values():
            if value.is_floating_point():
                value.add_(torch.randn(value.shape, generator=torch.Generator().manual_seed(seed)) * 0.01)
    scale = TrainingScale(resize=None, image_size=(96, 96))
    path = folder / f"unet_bn.{tag}.safetensors"
    metrics = {"dice": 0.61, "iou": 0.44, "misclassified": 0.2}
    save_weights(model, path, {"dataset": "isbi2012", "tag": tag, "metrics": metrics, **scale.as_record()})
    entry = WeightsEntry(
        model="unet_bn",
        tag=tag,
        model_args=dict(model.model_args),
        in_channels=1,
        num_classes=2,
        dataset="isbi2012",
        split={"method": "block_kfold", "detail": "folds=3 fold=2", "train_size": 4, "val_items": ["4", "5"]},
        evaluation={
            "dtype": "float32",
            "channels_last": False,
            "batch_size": 2,
            **scale.as_record(),
            "isbi": True,
        },
        metrics=metrics,
        params=sum(p.numel() for p in model.parameters()),
        file=path.name,
        size=path.stat().st_size,
        sha256=file_sha256(path),
        packaged=True,
        run_id="0" * 32,
        git_commit="1" * 40,
        recipe="unet_bn-isbi2012-cpu",
        train_config={"epochs": 3, "lr": 0.002, "optimizer": "adamw"},
        training={"device": "test CPU", "minutes": 1.5, "epochs": 3, "best_epoch": 2},
        extra={"git_dirty": "False", "seed": "0"},
    )
    return Published(entry, path, model)


def seed_repo(server: FakeHub, tmp_path: Path, published: Published, repo: str = REPO, **commit: str) -> str:
    """``published`` as ``write_hub_folder`` lays it out, committed to ``repo`` (created if absent)."""
    folder = (
        tmp_path / f"layout-{len(server.requests)}-{published.entry.tag}-{file_sha256(published.file)[:8]}"
    )
    write_hub_folder(published.entry, published.file, folder, repo_id=repo)
    if repo not in server.repos:
        server.create(repo)
    return server.commit(repo, {p.name: p.read_bytes() for p in folder.iterdir()}, **commit)


def outputs(model: torch.nn.Module) -> torch.Tensor:
    x = torch.randn(2, 1, SIDE, SIDE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return model.eval()(x)


def hf_cache_files(tmp_path: Path) -> list[Path]:
    return sorted(p for p in (tmp_path / "hf" / "hub").rglob("*") if p.is_file() and ".locks" not in p.parts)


# -- loading hf-hub:ORG/REPO ---------------------------------------------------------------------------------


def test_a_hub_repository_downloads_verified_and_loads_the_same_model(hub: FakeHub, tmp_path: Path) -> None:
    published = make_published(tmp_path / "pub")
    commit = seed_repo(hub, tmp_path, published)
    model = create_model("unet_bn", weights=f"hf-hub:{REPO}")
    assert torch.equal(outputs(model), outputs(published.model))
    assert model.pretrained_weights == f"hf-hub:{REPO}"  # type: ignore[attr-defined]
    assert model.training_scale == published.entry.training_scale  # type: ignore[attr-defined]
    # the file is the Hub cache's, at the commit main named, and it is the published file
    path = download(f"hf-hub:{REPO}")
    assert path.parent.name == commit and path.parents[1].name == "snapshots"
    assert path.read_bytes() == published.file.read_bytes()
    # as huggingface_hub fetches from the Hub: a HEAD on resolve, the weights redirected to the CDN
    assert ("HEAD", f"/{REPO}/resolve/main/{CONFIG_FILE}") in hub.requests
    assert ("GET", f"/{published.entry.sha256}") in hub.requests


def test_a_cached_repository_loads_with_hf_hub_offline_and_the_hub_gone(
    hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    published = make_published(tmp_path / "pub")
    commit = seed_repo(hub, tmp_path, published)
    first = create_model("unet_bn", weights=f"hf-hub:{REPO}")
    hub.stop()
    go_offline(monkeypatch)
    for spec in (f"hf-hub:{REPO}", f"hf-hub:{REPO}@main", f"hf-hub:{REPO}@{commit}"):
        again = create_model("unet_bn", weights=spec)
        assert torch.equal(outputs(again), outputs(first)), spec
    # offline and never fetched: the error names what is missing and the command that fetches it
    with pytest.raises(OfflineError) as err:
        create_model("unet_bn", weights="hf-hub:zoo-org/never-fetched@v2")
    message = str(err.value)
    assert "config.json of zoo-org/never-fetched at revision v2" in message
    assert "HF_HUB_OFFLINE" in message and str(tmp_path / "hf" / "hub") in message
    assert "`unet-zoo weights download hf-hub:zoo-org/never-fetched@v2`" in message
    # UNET_ZOO_OFFLINE means the same for a Hub source
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("UNET_ZOO_OFFLINE", "1")
    assert torch.equal(outputs(create_model("unet_bn", weights=f"hf-hub:{REPO}")), outputs(first))
    with pytest.raises(OfflineError, match="UNET_ZOO_OFFLINE"):
        download("hf-hub:zoo-org/never-fetched")


@pytest.mark.parametrize("change", ["same size", "appended"])
def test_a_changed_file_on_the_hub_is_refused_and_removed_from_the_cache(
    hub: FakeHub, tmp_path: Path, change: str
) -> None:
    published = make_published(tmp_path / "pub")
    commit = seed_repo(hub, tmp_path, published)
    data = bytearray(published.file.read_bytes())
    if change == "same size":
        data[-8:] = bytes(8)  # the last tensor's last values: still a readable safetensors file
    else:
        data += b"\0" * 16
    hub.tamper(REPO, WEIGHTS_FILE, bytes(data))  # with headers that fit it: huggingface_hub takes it
    with pytest.raises(ChecksumError) as err:
        create_model("unet_bn", weights=f"hf-hub:{REPO}")
    message = str(err.value)
    assert f"{WEIGHTS_FILE} of hf-hub:{REPO}@{commit}" in message
    found = f"sha256 {hashlib.sha256(data).hexdigest()}" if change == "same size" else f"{len(data)} bytes"
    assert found in message
    assert f"{published.entry.size} bytes, sha256 {published.entry.sha256}" in message
    assert "removed from the Hugging Face cache" in message and f"hf-hub:{REPO}@COMMIT" in message
    # nothing of it stays where a later call (offline, too) would find it
    assert not any(p.read_bytes() == bytes(data) for p in hf_cache_files(tmp_path))
    assert not any(p.name == WEIGHTS_FILE for p in (tmp_path / "hf" / "hub").rglob("*"))


def test_a_revision_pins_the_files_of_that_commit(hub: FakeHub, tmp_path: Path) -> None:
    old = make_published(tmp_path / "old", seed=1)
    new = make_published(tmp_path / "new", seed=2)
    branch = make_published(tmp_path / "branch", seed=3)
    first = seed_repo(hub, tmp_path, old)
    second = seed_repo(hub, tmp_path, new)
    seed_repo(hub, tmp_path, branch, branch="experiment")
    hub.repos[REPO].branches["v1"] = first  # a tag
    for revision, expected in (
        (first, old),
        ("v1", old),
        (second, new),
        ("main", new),
        (None, new),
        ("experiment", branch),
    ):
        spec = f"hf-hub:{REPO}" + (f"@{revision}" if revision else "")
        got = create_model("unet_bn", weights=spec)
        assert torch.equal(outputs(got), outputs(expected.model)), revision
    with pytest.raises(DownloadError) as err:
        create_model("unet_bn", weights=f"hf-hub:{REPO}@no-such-branch")
    assert f"{REPO} has no revision 'no-such-branch'" in str(err.value)
    assert f"hf-hub:{REPO}@REVISION" in str(err.value)


def test_unknown_repositories_and_malformed_specs_say_what_to_do(hub: FakeHub, tmp_path: Path) -> None:
    with pytest.raises(DownloadError) as err:
        create_model("unet_bn", weights="hf-hub:zoo-org/no-such-repo")
    message = str(err.value)
    assert f"no repository zoo-org/no-such-repo on {hub.endpoint}" in message
    assert "HF_TOKEN" in message and "hf-hub:ORG/REPO" in message
    for bad in (
        "hf-hub:just-a-name",
        "hf-hub:a/b/c",
        "hf-hub:org/repo@",
        "hf-hub:org/re po",
        "hf-hub:o/r@../x",
    ):
        with pytest.raises(WeightsError, match=r"is not a Hugging Face Hub source: expected hf-hub:ORG/REPO"):
            create_model("unet_bn", weights=bad)
    # another library's repository: no config.json, or one that is not unet-zoo's
    hub.create("other/smp-model")
    hub.commit("other/smp-model", {"model.safetensors": b"x" * 10})
    with pytest.raises(
        DownloadError, match=r"config\.json of other/smp-model at revision main: no such file"
    ):
        download("hf-hub:other/smp-model")
    hub.commit("other/smp-model", {CONFIG_FILE: json.dumps({"_model_class": "Unet"}).encode()})
    with pytest.raises(WeightsError, match="not a unet-zoo repository"):
        download("hf-hub:other/smp-model")
    # a unet-zoo repository holding another model's weights
    seed_repo(hub, tmp_path, make_published(tmp_path / "pub"))
    with pytest.raises(WeightsMismatchError, match="holds weights for model 'unet_bn', not 'attention_unet'"):
        create_model("attention_unet", weights=f"hf-hub:{REPO}")


def test_hf_endpoint_and_hf_home_from_the_environment_of_a_fresh_process(
    hub: FakeHub, tmp_path: Path
) -> None:
    """Without the fixture's patching: the variables, read by huggingface_hub when the process imports it."""
    published = make_published(tmp_path / "pub")
    seed_repo(hub, tmp_path, published)
    env = {**os.environ, "HF_ENDPOINT": hub.endpoint, "HF_HOME": str(tmp_path / "fresh-hf")}
    done = subprocess.run(
        [sys.executable, "-m", "zoo.cli", "weights", "download", f"hf-hub:{REPO}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    path = Path(done.stdout.split(": ", 1)[1].split(" (")[0])
    assert (
        path.is_relative_to(tmp_path / "fresh-hf" / "hub")
        and path.read_bytes() == published.file.read_bytes()
    )
    assert "size, sha256 verified against its config.json" in done.stdout


# -- manifest entries whose source is a Hub repository ------------------------------------------------------


def test_a_manifest_entry_on_the_hub_is_fetched_and_checked_against_the_entry(
    hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    published = make_published(tmp_path / "pub")
    commit = seed_repo(hub, tmp_path, published)
    entry = dataclasses.replace(published.entry, packaged=False, url=f"hf-hub:{REPO}@{commit}")
    entry.check()
    assert local_copy(entry) is None
    path = fetch(entry)
    assert path.read_bytes() == published.file.read_bytes() and local_copy(entry) == path
    assert not (tmp_path / "zoo-home").exists()  # huggingface_hub's cache holds it, not unet-zoo's
    # downloads off: the cached copy, checked again
    monkeypatch.setenv("UNET_ZOO_OFFLINE", "1")
    assert fetch(entry) == path
    # an entry whose record differs from the repository's file
    wrong = dataclasses.replace(entry, sha256="0" * 64)
    with pytest.raises(
        ChecksumError, match=r"unet_bn\.tiny: model\.safetensors .* its manifest entry records"
    ):
        fetch(wrong)
    with pytest.raises(OfflineError, match=r"`unet-zoo weights download unet_bn\.tiny`"):
        fetch(wrong)  # the bad copy was removed, and downloads are off
    # an entry must name the revision it was published at
    with pytest.raises(WeightsError, match="names no revision"):
        dataclasses.replace(entry, url=f"hf-hub:{REPO}").check()
    with pytest.raises(WeightsError, match="is not a Hugging Face Hub source"):
        dataclasses.replace(entry, url="hf-hub:nope").check()
    # a mirror stands in for the Hub as for any source: files by name, into unet-zoo's cache
    monkeypatch.delenv("UNET_ZOO_OFFLINE")
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / entry.file).write_bytes(published.file.read_bytes())
    hub.stop()
    mirrored = fetch(entry, mirror=str(mirror))
    assert mirrored == tmp_path / "zoo-home" / "weights" / entry.file


# -- publishing to the Hub ----------------------------------------------------------------------------------


def test_the_repository_layout_states_the_entry(hub: FakeHub, tmp_path: Path) -> None:
    published = make_published(tmp_path / "pub")
    entry = published.entry
    folder = write_hub_folder(entry, published.file, tmp_path / "repo", repo_id=REPO, revision="v1")
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert (folder / WEIGHTS_FILE).read_bytes() == published.file.read_bytes()
    check_layout(folder, entry, source=f"hf-hub:{REPO}@v1")
    with pytest.raises(ValueError, match="is not empty"):
        write_hub_folder(entry, published.file, folder, repo_id=REPO)
    with pytest.raises(ChecksumError):
        write_hub_folder(
            dataclasses.replace(entry, sha256="0" * 64), published.file, tmp_path / "r2", repo_id=REPO
        )
    # a licence of the Hub's own list is the card's; "other" names the training data's terms
    card = card_of(write_hub_folder(entry, published.file, tmp_path / "mit", repo_id=REPO, license="mit"))
    assert card["license"] == "mit" and "license_name" not in card


def card_of(folder: Path) -> dict:
    text = (folder / "README.md").read_text()
    assert text.startswith("---\n")
    front, _, _ = text[4:].partition("\n---\n")
    return yaml.safe_load(front)


def check_layout(folder: Path, entry: WeightsEntry, *, source: str) -> None:
    """config.json and README.md of a repository, against the entry they were written from."""
    config = json.loads((folder / CONFIG_FILE).read_text())
    assert config["format"] == "unet-zoo" and config["unet_zoo_version"]
    assert config["model_name"] == entry.model and config["model_args"] == entry.model_args
    assert (config["in_channels"], config["num_classes"]) == (entry.in_channels, entry.num_classes)
    assert config["class_names"] == ["cell", "membrane"]  # the dataset registry's
    assert config["training_scale"] == entry.training_scale.as_record()
    assert config["files"][WEIGHTS_FILE] == {"size": entry.size, "sha256": entry.sha256}
    provenance = config["provenance"]
    assert provenance["weights"] == entry.name and provenance["metrics"] == entry.metrics
    assert provenance["split"] == entry.split and provenance["train_config"] == entry.train_config
    assert provenance["training"] == entry.training and provenance["run_id"] == entry.run_id

    card = card_of(folder)
    assert card["library_name"] == "unet-zoo" and card["pipeline_tag"] == "image-segmentation"
    assert card["license"] == "other" and card["license_name"] == "training-data-terms"
    assert card["datasets"] == [entry.dataset] and card["metrics"] == sorted(entry.metrics)
    assert {"unet-zoo", "image-segmentation", entry.model} <= set(card["tags"])
    [index] = card["model-index"]
    assert index["name"] == entry.name
    measured = {m["type"]: m["value"] for r in index["results"] for m in r["metrics"]}
    assert measured == pytest.approx(entry.metrics)
    assert {r["dataset"]["split"] for r in index["results"]} == {"validation"}

    text = (folder / "README.md").read_text()
    assert f'zoo.create_model("{entry.model}", weights="{source}")' in text
    for value in entry.metrics.values():
        assert f"{value:.4f}" in text
    assert entry.split["method"] in text and f"{len(entry.split['val_items'])} validation images" in text
    assert (
        f"Recipe `{entry.recipe}`" in text
        and json.dumps(entry.train_config, indent=2, sort_keys=True) in text
    )
    cost = entry.training
    assert f"{cost['minutes']} minutes on {cost['device']} for {cost['epochs']} epochs" in text
    assert "Research use; cite Cardona et al. 2010" in text  # the ISBI 2012 data's terms
    assert entry.run_id in text and entry.git_commit in text


def test_push_folder_needs_a_token_and_names_the_failure(
    hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    published = make_published(tmp_path / "pub")
    folder = write_hub_folder(published.entry, published.file, tmp_path / "repo", repo_id=REPO)
    with pytest.raises(UploadError, match="needs a token with write access: set HF_TOKEN"):
        push_folder(folder, REPO, commit_message="x")
    assert not hub.requests  # refused before any call
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    with pytest.raises(WeightsError, match="--push-to-hub 'hf-hub:not a repo'"):
        push_folder(folder, "not a repo", commit_message="x")
    pushed = push_folder(folder, REPO, revision="candidate", private=True, commit_message="first push")
    assert pushed.repo_id == REPO and pushed.pinned
    assert hub.repos[REPO].private and hub.repos[REPO].branches["candidate"] == pushed.revision
    assert hub.repos[REPO].messages[pushed.revision] == "first push"
    assert hub.files(REPO, "candidate")[WEIGHTS_FILE] == published.file.read_bytes()
    assert WEIGHTS_FILE not in hub.files(REPO, "main")  # the branch, not main
    # the Hub checks the card's metadata, and a licence it does not know is refused
    odd = write_hub_folder(published.entry, published.file, tmp_path / "odd", repo_id=REPO, license="mine")
    with pytest.raises(UploadError, match=r"refused the model card's metadata .*\"license\" must be one of"):
        push_folder(odd, REPO, commit_message="x")


def test_weights_publish_push_to_hub_and_load_it_back(
    hub: FakeHub,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fresh_store: Callable[[Path], Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    workdir = fresh_store(tmp_path / "work")
    result = train(tiny_run(), tracker=Tracker("hub-test", workdir=workdir), workdir=workdir, progress=False)
    out = tmp_path / "published"
    publish = ["weights", "publish", result.run_id[:8], "--workdir", str(workdir), "--out", str(out)]
    # no token: refused before anything is written
    assert main([*publish, "--tag", "tiny", "--push-to-hub", REPO]) == 2
    assert "needs a token with write access" in capsys.readouterr().err
    assert not out.exists() and not hub.requests
    assert main([*publish, "--push-to-hub", REPO, "--url-base", "http://x"]) == 2
    assert "not both" in capsys.readouterr().err

    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    assert main([*publish, "--tag", "tiny", "--push-to-hub", REPO, "--commit-message", "tiny run"]) == 0
    printed = capsys.readouterr().out
    [entry] = load_manifest([out / "manifest.json"])
    commit = hub.repos[REPO].branches["main"]
    assert entry.url == f"hf-hub:{REPO}@{commit}" and not entry.packaged
    assert f"to {hub.endpoint}/{REPO} (commit {commit})" in printed
    assert f'zoo.create_model("unet_bn", weights="hf-hub:{REPO}")' in printed
    assert hub.repos[REPO].messages[commit] == "tiny run"
    files = hub.files(REPO)
    assert files[WEIGHTS_FILE] == (out / entry.file).read_bytes()
    # what was pushed is write_hub_folder's layout of the entry the manifest holds
    layout = tmp_path / "layout"
    layout.mkdir()
    for name in (CONFIG_FILE, "README.md"):
        (layout / name).write_bytes(files[name])
    check_layout_of_run(layout, entry)

    # loaded back through the Hub: the run's own tensors
    model = create_model("unet_bn", weights=f"hf-hub:{REPO}")
    state, _ = read_weights(result.run_dir / "best.safetensors")
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    # and through the manifest entry, which names the commit
    monkeypatch.setenv("UNET_ZOO_MANIFEST", str(out / "manifest.json"))
    assert fetch(entry).read_bytes() == (out / entry.file).read_bytes()
    assert main(["weights", "list", "unet_bn.tiny"]) == 0
    assert "cached" in capsys.readouterr().out

    # predict and export take the same form (predict finds the model in the file)
    image = tmp_path / "in" / "slice.png"
    image.parent.mkdir()
    from PIL import Image

    Image.fromarray((torch.rand(40, 48) * 255).to(torch.uint8).numpy()).save(image)
    assert main(["predict", "--weights", f"hf-hub:{REPO}", "--out", str(tmp_path / "masks"), str(image)]) == 0
    assert (tmp_path / "masks" / "slice_mask.png").is_file()
    exported = tmp_path / "tiny.pt2"
    args = ["export", "unet_bn", "--weights", f"hf-hub:{REPO}", "--format", "pt2", "--out", str(exported)]
    assert main([*args, "--size", "32", "32"]) == 0
    assert exported.is_file() and f"hf-hub:{REPO} -> {exported}" in capsys.readouterr().out


def check_layout_of_run(folder: Path, entry: WeightsEntry) -> None:
    config = json.loads((folder / CONFIG_FILE).read_text())
    assert config["model_name"] == entry.model and config["model_args"] == entry.model_args
    assert config["files"][WEIGHTS_FILE] == {"size": entry.size, "sha256": entry.sha256}
    assert config["training_scale"] == entry.training_scale.as_record()
    assert config["provenance"]["metrics"] == entry.metrics and config["provenance"]["run_id"] == entry.run_id
    card = card_of(folder)
    [index] = card["model-index"]
    assert {m["type"]: m["value"] for r in index["results"] for m in r["metrics"]} == pytest.approx(
        entry.metrics
    )
    text = (folder / "README.md").read_text()
    assert f'zoo.create_model("{entry.model}", weights="hf-hub:{REPO}")' in text
    assert f"{entry.training['epochs']} epochs" in text and entry.training["device"] in text


def test_the_cli_help_names_the_hub_form() -> None:
    from zoo.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices  # type: ignore[union-attr]
    for command in ("predict", "export"):
        assert "hf-hub:ORG/REPO" in sub[command].format_help(), command
    weights = next(a for a in sub["weights"]._actions if a.dest == "weights_command").choices  # type: ignore[union-attr]
    assert "hf-hub:ORG/REPO" in weights["download"].format_help()
    publish = weights["publish"].format_help()
    for option in (
        "--push-to-hub ORG/REPO",
        "--revision BRANCH",
        "--private",
        "--commit-message",
        "--license",
    ):
        assert option in publish, option
