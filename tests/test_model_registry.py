"""MLflow's model registry: a harness run registered, loaded back as ``models:/NAME@ALIAS`` and served."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

import numpy as np
import pytest
import torch

from zoo.cli import main
from zoo.factory import create_model
from zoo.harness import Tracker, train
from zoo.harness.model_registry import RegistrationError, register_run
from zoo.harness.tracking import QUALITY_KEYS, open_client
from zoo.predict import predict_image
from zoo.runtime import Precision, resolve_device
from zoo.tiling import TiledInferer
from zoo.weights import ChecksumError, file_sha256, read_weights
from zoo.weights.mlflow_registry import RegistryError, download_registered

from .helpers import seed_store, tiny_run

NAME = "unet_bn-isbi2012"  # the default name of TINY_RUN's registrations: model-dataset


@dataclass(frozen=True)
class Store:
    """A tmp store holding two finished tiny runs (seeds 0 and 1) and one that is still running."""

    workdir: Path
    uri: str
    runs: tuple[str, str]
    weights: tuple[Path, Path]
    running: str


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, store_template: Path) -> Store:
    workdir = seed_store(store_template, tmp_path_factory.mktemp("registry") / "work")
    tracker = Tracker("registry-test", workdir=workdir)
    results = [train(tiny_run(seed=s), tracker=tracker, workdir=workdir, progress=False) for s in (0, 1)]
    running = tracker.start_run("still-running", tags={"zoo.kind": "run"})
    return Store(
        workdir,
        tracker.uri,
        (results[0].run_id, results[1].run_id),
        (results[0].run_dir / "best.safetensors", results[1].run_dir / "best.safetensors"),
        running,
    )


@pytest.fixture
def env(store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``models:/`` specs resolve in the store; the weights cache is empty and the test's own."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.uri)
    monkeypatch.setenv("UNET_ZOO_HOME", str(tmp_path / "home"))
    return tmp_path / "home" / "weights" / "mlflow"


def _local(uri: str) -> Path:
    parsed = urlparse(uri)
    assert parsed.scheme == "file", uri
    return Path(url2pathname(parsed.path))


def _images(channels: int = 1) -> np.ndarray:
    # odd sizes: tiling mirrors and crops them; uint8 (B, C, H, W), the pyfunc's input
    return np.random.default_rng(7).integers(0, 256, size=(2, channels, 37, 53), dtype=np.uint8)


def _reference(spec: str, images: np.ndarray, *, probabilities: bool = False) -> np.ndarray:
    """``predict_image`` of each image with the registered weights, where and how the pyfunc runs them."""
    device = resolve_device("auto")
    model = create_model("unet_bn", weights=spec).to(device)
    inferer = TiledInferer(precision=Precision.resolve("auto", device))
    inferer.precision.model(model)
    out: list[np.ndarray] = []
    for image in images:
        labels, probs = predict_image(
            model,  # type: ignore[arg-type]
            np.ascontiguousarray(image.transpose(1, 2, 0)),
            inferer=inferer,
            probabilities=probabilities,
        )
        out.append(labels if probs is None else probs)
    return np.stack(out)


def test_a_run_registers_with_its_metrics_and_loads_back_by_alias_and_version(
    store: Store, env: Path
) -> None:
    reg = register_run(store.runs[0][:8], tracking_uri=store.uri)
    assert (reg.name, reg.alias, reg.run_id) == (NAME, "champion", store.runs[0])
    assert reg.uri == f"models:/{NAME}@champion" and reg.version_uri == f"models:/{NAME}/{reg.version}"
    # the run's file, byte for byte
    assert (reg.size, reg.sha256) == (store.weights[0].stat().st_size, file_sha256(store.weights[0]))

    client = open_client(store.uri)
    version = client.get_model_version(NAME, reg.version)
    run = client.get_run(store.runs[0])
    tags = version.tags
    assert version.run_id == store.runs[0]
    assert {k: float(tags[k]) for k in QUALITY_KEYS} == {k: run.data.metrics[k] for k in QUALITY_KEYS}
    assert (tags["git_commit"], tags["git_dirty"]) == (
        run.data.tags["git_commit"],
        run.data.tags["git_dirty"],
    )
    recorded = {k: tags[k] for k in ("model", "dataset", "suite", "recipe")}
    assert recorded == {"model": "unet_bn", "dataset": "isbi2012", "suite": "-", "recipe": "-"}
    assert (tags["weights_size"], tags["weights_sha256"]) == (str(reg.size), reg.sha256)
    assert client.get_registered_model(NAME).aliases["champion"] == int(reg.version)

    run_state, _ = read_weights(store.weights[0])
    from_run = create_model("unet_bn", weights=store.weights[0]).eval()
    x = torch.rand(1, 1, 48, 64)
    for spec in (reg.uri, reg.version_uri):
        model = create_model("unet_bn", weights=spec).eval()
        assert model.pretrained_weights == spec
        assert all(torch.equal(v, run_state[k]) for k, v in model.state_dict().items())
        with torch.no_grad():
            assert torch.equal(model(x), from_run(x))
    # one download, kept under its sha256 and reused while it matches
    assert [p.name for p in env.iterdir()] == [f"{reg.sha256}.safetensors"]


def test_registering_again_reuses_the_runs_version_and_moves_the_alias(store: Store, env: Path) -> None:
    first = register_run(store.runs[0], tracking_uri=store.uri)
    second = register_run(store.runs[1], tracking_uri=store.uri)
    assert second.created and int(second.version) > int(first.version)
    client = open_client(store.uri)
    assert client.get_registered_model(NAME).aliases["champion"] == int(second.version)
    assert download_registered(f"models:/{NAME}@champion") != download_registered(first.version_uri)
    versions = len(client.search_model_versions(f"name = '{NAME}'"))

    again = register_run(store.runs[0], tracking_uri=store.uri)  # back to the first run: no duplicate
    assert (again.version, again.created) == (first.version, False)
    assert client.get_registered_model(NAME).aliases["champion"] == int(first.version)
    assert len(client.search_model_versions(f"name = '{NAME}'")) == versions
    assert file_sha256(download_registered(f"models:/{NAME}@champion")) == first.sha256


def test_a_tampered_artifact_is_refused_and_leaves_nothing_in_the_cache(store: Store, env: Path) -> None:
    import mlflow.pyfunc
    from mlflow.exceptions import MlflowException

    reg = register_run(store.runs[0], tracking_uri=store.uri, name="tampered", alias="c")
    client = open_client(store.uri)
    location = _local(client.get_model_version_download_uri("tampered", reg.version))
    weights = location / client.get_model_version("tampered", reg.version).tags["weights_file"]
    assert file_sha256(weights) == reg.sha256
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # the same size, another sha256
    weights.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match=rf"does not match models:/tampered@c \(version {reg.version}"):
        download_registered("models:/tampered@c")
    assert not env.exists() or not list(env.glob("*.safetensors"))
    # the served model checks its weights too, before reading them
    with pytest.raises((ChecksumError, MlflowException), match="do not match the sha256 recorded"):
        mlflow.pyfunc.load_model(location.as_uri())
    weights.write_bytes(data[:100])  # truncated: caught by its size
    with pytest.raises(ChecksumError, match=r"100 bytes, but models:/tampered@c"):
        download_registered("models:/tampered@c")


def test_a_cached_file_that_no_longer_matches_is_fetched_again(store: Store, env: Path) -> None:
    reg = register_run(store.runs[0], tracking_uri=store.uri)
    path = download_registered(reg.version_uri)
    path.write_bytes(b"not the weights")
    assert download_registered(reg.version_uri) == path and file_sha256(path) == reg.sha256


def test_unknown_names_aliases_and_versions_say_what_exists(
    store: Store, env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    register_run(store.runs[0], tracking_uri=store.uri)
    with pytest.raises(
        RegistryError, match=r"no registered model 'unet_bn-isbi2013'.*did you mean 'unet_bn-isbi2012'"
    ):
        create_model("unet_bn", weights="models:/unet_bn-isbi2013@champion")
    with pytest.raises(RegistryError, match=r"has no alias 'nope'; its aliases: .*@champion -> version \d+"):
        download_registered(f"models:/{NAME}@nope")
    with pytest.raises(RegistryError, match=r"has no version 999; .*its versions: 1"):
        download_registered(f"models:/{NAME}/999")
    for bad in ("models:/", f"models:/{NAME}", f"models:/{NAME}/Production", "models:/m-0123456789abcdef"):
        with pytest.raises(RegistryError, match=r"use models:/NAME@ALIAS .* or models:/NAME/VERSION"):
            download_registered(bad)
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.chdir(
        tmp_path
    )  # no runs/mlflow.db here: nothing is created, the message says where it looked
    with pytest.raises(RegistryError, match=r"no MLflow store at .*runs/mlflow\.db.*set MLFLOW_TRACKING_URI"):
        download_registered(f"models:/{NAME}@champion")
    assert not (tmp_path / "runs").exists()


def test_runs_that_cannot_be_registered_are_refused_by_name(store: Store, env: Path) -> None:
    with pytest.raises(RegistrationError, match=r"no run with an id starting 'feedface'.*finished run"):
        register_run("feedface", tracking_uri=store.uri)
    with pytest.raises(RegistrationError, match=r"still-running .* is RUNNING; only a finished run"):
        register_run(store.running, tracking_uri=store.uri)
    empty = Tracker("registry-test", workdir=store.workdir)
    bare = empty.start_run("no-weights", tags={"zoo.kind": "run"})
    empty.log_params(bare, {"cfg.dataset": "isbi2012"})
    empty.finish(bare)
    with pytest.raises(
        RegistrationError, match=r"no-weights .* has no weights artifact weights/best\.safetensors"
    ):
        register_run(bare, tracking_uri=store.uri)
    for alias in ("latest", "v3", "bad alias"):
        with pytest.raises(RegistrationError, match=r"alias .*: use letters, digits"):
            register_run(store.runs[0], tracking_uri=store.uri, alias=alias)
    with pytest.raises(RegistrationError, match=r"model name 'a/b'"):
        register_run(store.runs[0], tracking_uri=store.uri, name="a/b")


def test_cli_register_and_publish_register_print_how_to_load_and_serve(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the CLI finds the store by --workdir
    workdir = str(store.workdir)
    assert (
        main(["register", store.runs[1][:8], "--workdir", workdir, "--name", "cli-model", "--alias", "prod"])
        == 0
    )
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"registered cli-model version 1 (new) from run {store.runs[1]}, alias @prod"
    assert (
        lines[1]
        == f"weights: {store.weights[1].stat().st_size} bytes, sha256 {file_sha256(store.weights[1])}"
    )
    assert (
        lines[2] == f"load:  models:/cli-model@prod  (this version: models:/cli-model/1; store: {store.uri})"
    )
    assert lines[3] == (
        f"serve: MLFLOW_TRACKING_URI={store.uri} mlflow models serve -m models:/cli-model@prod "
        "--env-manager local -p 5000"
    )
    assert main(["register", store.runs[1], "--workdir", workdir, "--name", "cli-model"]) == 0
    assert "version 1 (the run's existing version)" in capsys.readouterr().out

    out = tmp_path / "published"
    args = ["weights", "publish", store.runs[0], "--out", str(out), "--tag", "tiny", "--workdir", workdir]
    assert main([*args, "--register", "--alias", "candidate"]) == 0
    printed = capsys.readouterr().out
    assert f"unet_bn.tiny: {out / 'unet_bn.tiny.safetensors'}" in printed
    assert "alias @candidate" in printed and f"load:  models:/{NAME}@candidate" in printed

    assert main(["register", "feedface", "--workdir", workdir]) == 2
    assert "unet-zoo: error: no run with an id starting 'feedface'" in capsys.readouterr().err
    assert main([*args, "--overwrite", "--register", "--alias", "v1"]) == 2  # refused before publishing
    assert "alias 'v1'" in capsys.readouterr().err


def test_cli_predict_takes_a_registered_version_without_model(
    store: Store, env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--model defaults to the model the version's weights name, as for a file or an hf-hub: repository."""
    from PIL import Image

    reg = register_run(store.runs[0], tracking_uri=store.uri)
    image = tmp_path / "slice.png"
    Image.fromarray(_images()[0, 0]).save(image)
    assert main(["predict", str(image), "--weights", reg.uri, "--out", str(tmp_path / "masks")]) == 0
    assert "predicted 1 of 1 input(s)" in capsys.readouterr().out
    mask = np.array(Image.open(tmp_path / "masks" / "slice_mask.png"))
    assert mask.shape == _images().shape[2:]


def test_the_registered_pyfunc_predicts_as_zoo_predict(store: Store, env: Path) -> None:
    import mlflow.pyfunc

    reg = register_run(store.runs[0], tracking_uri=store.uri, name="pyfunc", alias="c")
    client = open_client(store.uri)
    folder = _local(client.get_model_version_download_uri("pyfunc", reg.version))
    # models from code: the code file and the weights, nothing pickled
    assert not list(folder.rglob("*.pkl")) and (folder / "serving_entry.py").is_file()
    model = mlflow.pyfunc.load_model(folder.as_uri())
    images = _images()
    masks = model.predict(images)
    assert masks.shape == (2, 37, 53) and masks.dtype == np.uint8
    np.testing.assert_array_equal(masks, _reference("models:/pyfunc@c", images))
    probs = model.predict(images, params={"output": "probabilities"})
    assert probs.shape == (2, 2, 37, 53) and probs.dtype == np.float32
    np.testing.assert_array_equal(probs, _reference("models:/pyfunc@c", images, probabilities=True))
    with pytest.raises(Exception, match=r"output='labels': use one of mask, probabilities"):
        model.predict(images, params={"output": "labels"})


# -- serving: `mlflow models serve` in a subprocess -------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def served(store: Store, env: Path, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """``(url, spec)``: ``mlflow models serve`` of a registered version, ready (answers /ping)."""
    reg = register_run(store.runs[0], tracking_uri=store.uri, name="served", alias="champion")
    port = _free_port()
    bin_dir = str(Path(sys.executable).parent)  # the scoring server's uvicorn is a script beside python
    environ = {
        **os.environ,
        "MLFLOW_TRACKING_URI": store.uri,
        "PATH": bin_dir + os.pathsep + os.environ["PATH"],
    }
    log = tmp_path / "serve.log"
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", reg.uri, "--env-manager", "local"]
    with open(log, "wb") as out:
        server = subprocess.Popen(
            [*command, "-p", str(port)],
            env=environ,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300  # generous: imports and model loading on a busy machine
        while True:
            if server.poll() is not None:
                pytest.fail(f"the server exited ({server.returncode}):\n{log.read_text()}")
            try:
                with urllib.request.urlopen(f"{url}/ping", timeout=5) as answer:
                    if answer.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the server did not answer /ping within 300 s:\n{log.read_text()}")
            time.sleep(0.5)
        yield url, reg.uri
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # its own session: the server and the uvicorn it starts
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


@pytest.mark.slow
def test_mlflow_models_serve_answers_as_zoo_predict(served: tuple[str, str]) -> None:
    url, spec = served
    images = _images()
    request = urllib.request.Request(
        f"{url}/invocations",
        data=json.dumps({"inputs": images.tolist()}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=120) as answer:
        predictions = np.array(json.load(answer)["predictions"])
    assert predictions.shape == (2, 37, 53)
    np.testing.assert_array_equal(predictions, _reference(spec, images))
