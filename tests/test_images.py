"""Image increments: a column of encoded images (PNG, JPEG) through kinds, validation, drift, the CNN and the pyfunc."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from lepton.config import StrategyConfig, TrainConfig
from lepton.models import columns
from lepton.models.network import NetworkError
from lepton.models.training import fine_tune
from tests.conftest import make_workspace


def encoded(pixels: np.ndarray, fmt: str = "PNG") -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format=fmt)
    return out.getvalue()


def digit_images(rows: slice | None = None, *, shift: int = 0) -> pd.DataFrame:
    """scikit-learn's 8x8 digits as PNG bytes (``shift`` added to every pixel: a brighter sensor), with a tabular column beside."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = [encoded(np.clip(x.reshape(8, 8) * 255 / 16 + shift, 0, 255).astype(np.uint8)) for x in digits.data]
    frame = pd.DataFrame({"image": images, "ink": digits.data.sum(axis=1), "digit": digits.target})
    return frame.iloc[rows] if rows is not None else frame


def test_encoded_images_are_an_image_column_with_the_first_increments_size():
    grey = pd.Series([encoded(np.full((5, 7), v, np.uint8)) for v in range(20)])
    colour = pd.Series([encoded(np.full((4, 4, 3), v, np.uint8), "JPEG") for v in range(20)])
    assert columns.infer_kind(grey, max_categories=31) == ("image", "encoded images, 5x7 with 1 channel(s)")
    assert columns.infer_kind(colour, max_categories=31)[0] == "image"
    assert columns.image_shape(colour) == [4, 4, 3]
    assert columns.infer_kind(pd.Series([b"\x00\x01", b"\x02\x03"] * 10), max_categories=31)[0] == "ignore"
    block = columns.image_block(pd.Series([grey[3], None]), [5, 7, 1])
    assert block.shape == (2, 36) and np.allclose(block[0, :35], 3 / 255) and block[0, 35] == 0
    assert np.isnan(block[1, :35]).all() and block[1, 35] == 1  # missing: imputed, and said so
    assert columns.image_problem(b"\x89PNG\r\n\x1a\nbroken", [5, 7, 1]) == "not a decodable image"
    assert columns.image_problem(colour[0], [5, 7, 1]) == "4x4, not 5x7"
    assert columns.image_problem(pd.NA, [5, 7, 1]) is None  # missing, as pandas' NA says it


def test_a_column_reads_every_image_with_its_channels_and_deep_grey_scaled():
    """One grey image among colour ones is read as colour (not rejected); 16-bit and float grey scale into 0-255."""
    mixed = pd.Series([encoded(np.full((4, 4, 3), 90, np.uint8)) for _ in range(9)] + [encoded(np.full((4, 4), 200, np.uint8))])
    assert columns.image_shape(mixed) == [4, 4, 3]
    block = columns.image_block(mixed, [4, 4, 3])
    assert np.allclose(block[-1, :48], 200 / 255)
    deep = io.BytesIO()
    Image.fromarray(np.full((3, 3), 65535 // 2, np.uint16)).save(deep, format="PNG")
    assert columns.decode_image(deep.getvalue()).max() == 127  # half of 16 bits is half of 8, not clipped to 255
    floats = io.BytesIO()
    Image.fromarray(np.full((3, 3), 0.5, np.float32)).save(floats, format="TIFF")
    assert columns.decode_image(floats.getvalue()).max() in (127, 128)
    bomb = io.BytesIO()
    Image.new("L", (13000, 15000)).save(bomb, format="PNG")
    assert columns.image_problem(bomb.getvalue(), [4, 4, 1]) == "not a decodable image"  # a decompression bomb is refused, not a crash


def test_the_cnn_learns_digits_from_their_images_and_rebuilds_from_its_arch(tmp_path):
    from lepton.models.bundle import Bundle
    from lepton.models.evaluation import score

    frame = digit_images()
    train, test = frame.iloc[:1200], frame.iloc[1200:1500]
    model, report = fine_tune(None, train, label="digit", train=TrainConfig(epochs=8, network="cnn"), strategy=StrategyConfig(name="replay"))
    # The defaults are written into the version, so a later change of them cannot rebuild it differently.
    assert model.network.name == "cnn" and model.network.arch["factory_args"] == {"channels": [32, 64], "hidden": 128, "image_start": 0, "image_shape": [8, 8, 1]}
    assert model.network.features.width == 128
    assert score(model, test, "digit").accuracy > 0.85
    model.save(tmp_path / "bundle")
    again = Bundle.load(tmp_path / "bundle")
    assert np.array_equal(again.predict(test), model.predict(test))
    # A warm start keeps the CNN and learns on.
    tuned, report = fine_tune(model, frame.iloc[1500:], label="digit", train=TrainConfig(epochs=2, network="cnn"), strategy=StrategyConfig(name="replay"))
    assert report.warm_start and tuned.network.name == "cnn"


def test_a_cnn_version_stored_without_its_widths_rebuilds_as_it_was_built():
    from lepton.models.network import build

    # Versions from before the defaults were written down hold only the image layout; they were built 256 wide.
    network = build({"n_features": 64, "n_classes": 10, "hidden": [], "factory": "cnn", "factory_args": {"image_start": 0, "image_shape": [8, 8, 1]}})
    assert network.features.width == 256 and network.head.in_features == 256


def test_the_cnn_needs_an_image_column():
    table = pd.DataFrame({"a": np.arange(40.0), "y": [0, 1] * 20})
    with pytest.raises(NetworkError, match="train.network=cnn needs an image column"):
        fine_tune(None, table, label="y", train=TrainConfig(epochs=1, network="cnn"), strategy=StrategyConfig(name="naive"))


def test_two_ddp_ranks_train_the_cnn_as_well_as_one(one_thread):
    from lepton.models.evaluation import score

    frame = digit_images()
    train, test = frame.iloc[:1000], frame.iloc[1000:1300]
    accuracy = {}
    for nproc in (1, 2):
        model, _ = fine_tune(None, train, label="digit", train=TrainConfig(epochs=6, network="cnn", nproc=nproc), strategy=StrategyConfig(name="naive"))
        accuracy[nproc] = score(model, test, "digit").accuracy
    assert accuracy[1] > 0.85 and abs(accuracy[2] - accuracy[1]) < 0.05, accuracy


def test_image_drift_compares_brightness_and_contrast():
    from lepton.models.drift import measure
    from lepton.models.settings import DriftConfig

    history, same, brighter = digit_images(slice(0, 600)), digit_images(slice(600, 900)), digit_images(slice(600, 900), shift=60)
    steady = measure(history, same, label="digit", config=DriftConfig())
    shifted = measure(history, brighter, label="digit", config=DriftConfig())
    assert {f.feature for f in steady.features} >= {"image brightness", "image contrast"}
    assert not any(f.drifted for f in steady.features if f.feature.startswith("image"))
    assert any(f.drifted for f in shifted.features if f.feature == "image brightness")


@pytest.mark.integration
def test_images_through_the_flow_rejected_when_broken_and_predicted_from_raw_bytes(tmp_path, prefect_api):
    """The real flow (DVC, GX, MLflow, Prefect) on image increments with the CNN: accepted and promoted; undecodable or
    resized images rejected with the row and the reason, quarantined; the champion's pyfunc predicts on raw bytes."""
    import mlflow

    from lepton.flows.continual import continual_training
    from lepton.server import in_process_flows

    ws = make_workspace(tmp_path / "ws", "digit", "images", {"train": {"network": "cnn", "epochs": 8}})
    frame = digit_images()
    broken = frame.iloc[1200:1300].copy()
    broken.loc[broken.index[:3], "image"] = [b"\x89PNG\r\n\x1a\nbroken"] * 3
    resized = frame.iloc[1300:1400].copy()
    resized.loc[resized.index[:2], "image"] = [encoded(np.zeros((6, 6), np.uint8))] * 2
    outcomes = []
    with in_process_flows():
        for i, part in enumerate([frame.iloc[:600], frame.iloc[600:1200], broken, resized]):
            path = tmp_path / f"increment-{i}.parquet"
            part.to_parquet(path, index=False)
            outcomes.append(continual_training(str(path), str(ws.root), []))
    assert [o.status for o in outcomes] == ["promoted", "promoted", "rejected", "rejected"], [o.message for o in outcomes]
    assert "column 'image': image (encoded images, 8x8 with 1 channel(s))" in outcomes[0].notes
    assert outcomes[2].reasons == ["column 'image': 3 of 100 value(s) are not decodable images (e.g. row(s) 0, 1, 2)"]
    assert outcomes[3].reasons[0].startswith("column 'image': 2 image(s) of another size (row 0: 6x6; row 1: 6x6); the column's images are 8x8 (1 channel(s)), as in its first increment")
    assert all((ws.root / o.file).exists() for o in outcomes[2:])
    assert {row["feature"] for row in outcomes[1].drift} >= {"image brightness", "image contrast", "ink"}

    mlflow.set_tracking_uri(ws.tracking_uri(None))
    model = mlflow.pyfunc.load_model("models:/images@champion")
    test = frame.iloc[1400:]
    predicted = np.asarray(model.predict(test.drop(columns=["digit"])))
    assert np.mean(predicted == test["digit"].to_numpy()) > 0.85
    assert len(model.predict(pd.DataFrame({"image": [None], "ink": [300.0]}))) == 1  # a missing image is imputed
    with pytest.raises(mlflow.exceptions.MlflowException, match="column 'image', row 0: not a decodable image"):
        model.predict(pd.DataFrame({"image": [b"not an image"], "ink": [1.0]}))
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_the_cnn_starts_with_no_weight_on_indicators_a_first_increment_never_lit():
    """A missing image (or any indicator beside the pixels) shifts nothing until data teaches it: its weights start at zero."""
    frame = digit_images(slice(0, 300))
    model, _ = fine_tune(None, frame, label="digit", train=TrainConfig(epochs=1, lr=1e-12, network="cnn"), strategy=StrategyConfig(name="naive"))
    cnn = model.network.features
    beside = cnn.mix[0].weight.detach()[:, cnn.mix[0].in_features - 3:]  # the image's missing indicator, ink and ink's indicator
    assert float(beside[:, 0].abs().max()) == 0.0 and float(beside[:, 2].abs().max()) == 0.0
    assert float(beside[:, 1].abs().max()) > 0.0  # ink itself is a standardised value: it keeps its weights


def test_an_image_column_can_be_declared_and_one_that_decodes_nothing_is_ignored():
    from lepton.config import DataConfig
    from lepton.models.schema import DataSchema

    assert DataConfig(label="digit", columns={"image": "image"}).columns == {"image": "image"}
    frame = digit_images(slice(0, 50))
    declared = DataSchema.infer(frame, "digit", declared={"image": "image"})
    assert declared.kind("image") == "image" and declared.shapes == {"image": [8, 8, 1]}
    junk = DataSchema.infer(frame.assign(image=[b"\x89PNG\r\n\x1a\nno"] * 50), "digit", declared={"image": "image"})
    assert junk.kind("image") == "ignore" and junk.why["image"].endswith("no value decodes as an image")


@pytest.mark.integration
def test_a_folder_of_images_and_a_csv_is_one_increment(tmp_path, prefect_api):
    """`lepton run FOLDER`: the CSV's file names become the images' bytes in one Parquet increment, trained and promoted;
    a file it names that is not there is refused (exit 2) before anything is ingested, and the folder is left as it was."""
    from tests.conftest import run_cli

    ws = make_workspace(tmp_path / "ws", "digit", "folders", {"train": {"epochs": 3}, "gate": {"bootstrap_samples": 200}})
    folder = tmp_path / "export-2026-12-01"
    (folder / "images").mkdir(parents=True)
    frame = digit_images(slice(0, 200))
    names = []
    for i, data in enumerate(frame["image"]):
        (folder / "images" / f"{i:03d}.png").write_bytes(data)
        names.append(f"images/{i:03d}.png")
    pd.DataFrame({"file": names, "ink": frame["ink"], "digit": frame["digit"]}).to_csv(folder / "labels.csv", index=False)
    done = run_cli(["run", str(folder), "--workspace", str(ws.root), "--json"], api_url=prefect_api)
    assert done.returncode == 0, done.stderr
    outcome = json.loads(done.stdout)
    assert outcome["status"] == "promoted" and "column 'file': image (encoded images, 8x8 with 1 channel(s))" in outcome["notes"]
    kept = pd.read_parquet(ws.root / outcome["file"])
    assert kept["file"].tolist() == frame["image"].tolist()  # the bytes themselves are versioned, not names

    (folder / "images" / "007.png").unlink()
    refused = run_cli(["run", str(folder), "--workspace", str(ws.root)], api_url=prefect_api)
    assert refused.returncode == 2 and "1 image file(s) named in column 'file' are not in" in refused.stderr and "images/007.png" in refused.stderr
    assert (folder / "labels.csv").exists() and len(list((folder / "images").iterdir())) == 199


@pytest.mark.integration
def test_lepton_serve_predicts_images_sent_as_base64_and_imputes_a_null_one(tmp_path, prefect_api):
    """Over HTTP, JSON carries an image as base64 text: the champion decodes it; a null image is a missing one; a corrupt one is a 400."""
    import base64
    import os

    from lepton.flows.continual import continual_training
    from lepton.server import in_process_flows
    from tests.conftest import LEPTON, free_port, invoke, start_process, stop_process, wait_for_http

    ws = make_workspace(tmp_path / "ws", "digit", "served", {"train": {"epochs": 5}})
    frame = digit_images(slice(0, 600))
    frame.to_parquet(tmp_path / "first.parquet", index=False)
    with in_process_flows():
        assert continual_training(str(tmp_path / "first.parquet"), str(ws.root), []).status == "promoted"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    server = start_process([LEPTON, "serve", "--port", str(port), "--workspace", str(ws.root)], log=tmp_path / "serve.log", env=env)

    def post(rows: list[list]) -> tuple[int, str]:
        return invoke(port, json.dumps({"dataframe_split": {"columns": ["image", "ink"], "data": rows}}).encode())

    try:
        wait_for_http(f"http://127.0.0.1:{port}/ping", server, tmp_path / "serve.log", timeout=180)
        test = digit_images(slice(1400, 1440))
        status, text = post([[base64.b64encode(image).decode(), float(ink)] for image, ink in zip(test["image"], test["ink"], strict=True)])
        assert status == 200, text
        assert np.mean(np.asarray(json.loads(text)["predictions"]) == test["digit"].to_numpy()) > 0.8
        status, text = post([[None, 300.0]])
        assert status == 200 and len(json.loads(text)["predictions"]) == 1, text
        status, text = post([[base64.b64encode(b"not an image").decode(), 1.0]])
        assert status == 400 and "column 'image', row 0: not a decodable image" in text
    finally:
        stop_process(server)
        shutil.rmtree(tmp_path, ignore_errors=True)
