"""Tests of the spatio-temporal prior: encoding, reading places, training, combining with predictions, CLI, kernel."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from inatcomp.cli import main
from inatcomp.formats.predictions import PredictionWriter, ScoreKind, open_predictions
from inatcomp.models.checkpoints import save_checkpoint
from inatcomp.predict.geocombine import apply_prior, evaluate_prior
from inatcomp.predict.geodata import (
    Observations,
    day_fraction,
    encode_inputs,
    load_locations,
    load_observations,
    sample_sphere,
)
from inatcomp.predict.geomap import plot_prior_map
from inatcomp.predict.geoprior import GeoPrior, PriorConfig, load_prior, save_prior, train_prior

ROOT = Path(__file__).resolve().parents[1]
#: Category id: (latitude, longitude, peak of the season as a fraction of the year).
SPECIES = {
    3: (47.0, 10.0, 0.5),  # Europe, summer
    5: (47.0, 10.0, 0.0),  # the same place in winter
    8: (-40.0, 179.0, 0.3),  # New Zealand: its range crosses the antimeridian
    13: (38.0, -100.0, 0.7),  # North America
}
FAST = PriorConfig(hidden=32, layers=2, dropout=0.0, epochs=8, batch_size=128, min_steps_per_epoch=25, lr=3e-3)


def _points(rng: np.random.Generator, per_species: int) -> tuple[np.ndarray, ...]:
    ids = np.repeat(np.array(list(SPECIES)), per_species)
    centre = np.array([SPECIES[c] for c in ids])
    lat = np.clip(centre[:, 0] + rng.normal(0, 3, len(ids)), -89, 89)
    lon = (centre[:, 1] + rng.normal(0, 4, len(ids)) + 180) % 360 - 180
    day = (centre[:, 2] + rng.normal(0, 0.04, len(ids))) % 1.0
    return ids, lat, lon, day


def _date(day: float) -> str:
    return str(np.datetime64("2019-01-01") + np.timedelta64(int(day * 365), "D"))


def _write_split(root: Path, name: str, *, per_species: int, seed: int, first_id: int = 0) -> tuple[Path, Path]:
    """A 2018-style labelled JSON and its location file (every place valid) under ``root``."""
    ids, lat, lon, day = _points(np.random.default_rng(seed), per_species)
    image_ids = np.arange(first_id, first_id + len(ids))
    data = {
        "images": [{"id": int(i), "file_name": f"{i}.jpg", "width": 8, "height": 8} for i in image_ids],
        "annotations": [{"id": int(i), "image_id": int(i), "category_id": int(c)} for i, c in zip(image_ids, ids)],
        "categories": [{"id": c, "name": f"species {c}"} for c in SPECIES],
    }
    records = [
        {"id": int(i), "lat": float(a), "lon": float(o), "user_id": 1, "date": _date(d)}
        for i, a, o, d in zip(image_ids, lat, lon, day)
    ]
    (root / f"{name}.json").write_text(json.dumps(data))
    (root / f"{name}_locations.json").write_text(json.dumps(records))
    return root / f"{name}.json", root / f"{name}_locations.json"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("geo")
    train, _ = _write_split(root, "train2018", per_species=60, seed=0)
    val, _ = _write_split(root, "val2018", per_species=10, seed=1, first_id=10_000)
    return root, train, val


@pytest.fixture(scope="module")
def prior(data):
    return train_prior(data[1], config=FAST)


def _write_predictions(path: Path, image_ids, category_ids, scores, kind: ScoreKind = ScoreKind.PROB) -> Path:
    with PredictionWriter(path, image_ids=image_ids, category_ids=category_ids, score_kind=kind) as writer:
        writer.write(scores)
    return path


def _random_probabilities(rng: np.random.Generator, rows: int, classes: int) -> np.ndarray:
    p = rng.gamma(1.0, size=(rows, classes))
    return p / p.sum(axis=1, keepdims=True)


# --------------------------------------------------------------------------------------------------------------------
# Encoding


def test_encoding_is_continuous_across_the_antimeridian_and_the_new_year():
    east, west = encode_inputs(lat=[-40.0], lon=[180.0]), encode_inputs(lat=[-40.0], lon=[-180.0])
    np.testing.assert_allclose(east, west, atol=1e-6)
    across = np.linalg.norm(encode_inputs(lat=[10.0], lon=[179.9]) - encode_inputs(lat=[10.0], lon=[-179.9]))
    same_side = np.linalg.norm(encode_inputs(lat=[10.0], lon=[179.9]) - encode_inputs(lat=[10.0], lon=[179.5]))
    assert across < same_side < 0.01
    new_year = encode_inputs(lat=[0.0], lon=[0.0], day=[364 / 365]) - encode_inputs(lat=[0.0], lon=[0.0], day=[0.0])
    assert np.linalg.norm(new_year) < 0.02
    assert encode_inputs(lat=[1.0, 2.0], lon=[3.0, 4.0]).shape == (2, 4)
    assert encode_inputs(lat=[1.0], lon=[3.0], day=[0.5]).dtype == np.float32


def test_day_fraction_reads_iso_dates_with_or_without_a_time():
    assert day_fraction("2018-01-01") == 0.0
    assert day_fraction("2018-12-31") == pytest.approx(364 / 365)
    assert day_fraction("2020-12-31 23:59:00+00:00") == pytest.approx(365 / 366)
    assert day_fraction("2018-02-30") is None and day_fraction("soon") is None


def test_background_points_are_uniform_on_the_sphere():
    lat, lon = sample_sphere(200_000, np.random.default_rng(0))
    assert abs(np.mean(np.abs(lat) > 30) - 0.5) < 0.01  # the caps above ±30° hold half the sphere's area
    assert abs(np.mean(lon > 0) - 0.5) < 0.01 and lat.min() >= -90 and lat.max() <= 90


# --------------------------------------------------------------------------------------------------------------------
# Reading places


def test_missing_and_absurd_places_and_dates_are_counted_not_fatal(tmp_path, caplog):
    records = [
        {"id": 1, "lat": 10.5, "lon": 20.0, "user_id": 1, "date": "2018-06-01"},
        {"id": 2, "lat": None, "lon": 20.0, "user_id": 1, "date": "2018-06-01"},
        {"id": 3, "lon": 20.0, "user_id": 1, "date": "2018-06-01"},
        {"id": 4, "lat": 95.0, "lon": 20.0, "user_id": 1, "date": "2018-06-01"},
        {"id": 5, "lat": 10.0, "lon": -181.0, "user_id": 1, "date": "2018-06-01"},
        {"id": 6, "lat": "10", "lon": 20.0, "user_id": 1, "date": "2018-06-01"},
        {"id": 7, "lat": 0, "lon": 0, "user_id": 1, "date": "2018-06-01"},
        {"id": 8, "lat": True, "lon": 20.0, "user_id": 1, "date": "2018-06-01"},
        {"id": 9, "lat": -33.0, "lon": 151.0, "user_id": 1, "date_c": "2017-01-15"},
        {"id": 10, "lat": -33.0, "lon": 151.0, "user_id": 1, "date": None},
        {"id": 11, "lat": -33.0, "lon": 151.0, "user_id": 1, "date": "2017-13-45"},
    ]
    path = tmp_path / "train2018_locations.json"
    path.write_text(json.dumps(records))
    caplog.set_level("INFO")
    table = load_locations(path)
    assert table.counts == {
        "records": 11,
        "with_location": 4,
        "missing_location": 2,
        "absurd_location": 5,
        "missing_date": 1,
        "absurd_date": 1,
    }
    assert "7 of 11 images without a usable location (2 missing, 5 absurd)" in caplog.text
    lat, lon, day = table.lookup(np.array([9, 4, 1, 999]))
    assert lat[0] == -33.0 and lon[0] == 151.0 and day[0] == pytest.approx(14 / 365)
    assert np.isnan(lat[1:2]).all() and lat[2] == 10.5 and np.isnan([lat[3], day[3]]).all()

    train = tmp_path / "train2018.json"
    annotations = [{"id": i, "image_id": i, "category_id": 100 + i % 2} for i in range(1, 13)]
    train.write_text(json.dumps({"images": [], "annotations": annotations, "categories": []}))
    observations = load_observations(train)  # the location file beside it
    assert observations.counts["with_location"] == 4
    assert observations.counts["no_location_record"] == 1  # image 12
    assert observations.counts["missing_location"] == 7
    assert observations.counts["without_date"] == 2
    assert observations.category_ids.tolist() == [100, 101]


@pytest.mark.parametrize(
    ("content", "where"),
    [
        ('[{"id": 1, "lat": 1, "lon": 2}, 7]', r"\$\[1\]: expected an object"),
        ('[{"id": "a", "lat": 1, "lon": 2}]', r"\$\[0\]\.id: expected a non-negative integer"),
        ('[{"id": 1, "lat": 1, "lon": 2}, {"id": 1, "lat": 1, "lon": 2}]', r"\$\[1\]\.id: image id 1 repeated"),
        ('{"images": [{"id": 1, "file_name": "a.jpg"}]}', r"\$\.images: no latitude/longitude"),
        ('{"images": [{"id": 1, "latitude": 1, "longitude": 2}, []]}', r"\$\.images\[1\]: expected an object"),
        ("[{]", "malformed JSON"),
        ('"text"', r"\$: expected a location list"),
    ],
)
def test_bad_location_files_name_the_file_and_the_json_path(tmp_path, content, where):
    path = tmp_path / "x_locations.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=rf"x_locations\.json: {where}"):
        load_locations(path)


def test_2021_image_fields_give_the_places(tmp_path):
    images = [
        {"id": 1, "date": "2021-03-02 10:00:00+00:00", "latitude": 12.0, "longitude": -70.0},
        {"id": 2, "date": None, "latitude": None, "longitude": None, "location_uncertainty": 106807033},
        {"id": 3, "date": "2021-07-01", "latitude": -12.0, "longitude": 30.0, "location_uncertainty": -80},
    ]
    annotations = [{"id": i, "image_id": i, "category_id": 7} for i in (1, 2, 3)]
    path = tmp_path / "train.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": [{"id": 7}]}))
    observations = load_observations(path)
    assert observations.lat.tolist() == [12.0, -12.0] and observations.lon.tolist() == [-70.0, 30.0]
    assert observations.day[0] == pytest.approx(60 / 365)
    assert observations.counts["missing_location"] == 1 and observations.sources["locations"] == str(path)


# --------------------------------------------------------------------------------------------------------------------
# Training


def test_prior_is_high_in_the_range_and_low_at_the_antipode(prior):
    columns = {int(c): i for i, c in enumerate(prior.category_ids)}
    assert set(columns) == set(SPECIES)
    for category, (lat, lon, day) in SPECIES.items():
        here = prior.scores(lat=[lat], lon=[lon], day=[day])[0, columns[category]]
        antipode = prior.scores(lat=[-lat], lon=[lon - 180.0], day=[day])[0, columns[category]]
        assert here > 0.5 and antipode < 0.1 and here > 10 * antipode, (category, here, antipode)
    # New Zealand's species is as present just across the antimeridian as just before it.
    near = prior.scores(lat=[-40.0, -40.0, -40.0], lon=[178.0, -179.0, 0.0])[:, columns[8]]
    assert near[1] > 0.5 * near[0] and near[1] > 10 * near[2]


def test_dates_separate_two_species_of_one_place(prior):
    col = {int(c): i for i, c in enumerate(prior.category_ids)}
    summer, winter = prior.scores(lat=[47.0, 47.0], lon=[10.0, 10.0], day=[0.5, 0.0])
    assert summer[col[3]] > 2 * summer[col[5]] and winter[col[5]] > 2 * winter[col[3]]
    year = prior.scores(lat=[47.0], lon=[10.0], day=[np.nan])[0]  # no date: the mean over the year
    assert min(summer[col[3]], winter[col[3]]) <= year[col[3]] <= max(summer[col[3]], winter[col[3]])


def test_training_is_deterministic_and_survives_a_save(data, prior, tmp_path):
    tiny = PriorConfig(hidden=16, layers=1, epochs=2, batch_size=64, min_steps_per_epoch=5)
    first, again = train_prior(data[1], config=tiny), train_prior(data[1], config=tiny)
    for key, tensor in first.net.state_dict().items():
        assert torch.equal(tensor, again.net.state_dict()[key]), key
    weights = save_prior(prior, tmp_path / "prior")
    assert weights == tmp_path / "prior.safetensors" and (tmp_path / "prior.json").is_file()
    loaded = load_prior(tmp_path / "prior")
    assert loaded.use_dates and loaded.category_ids.tolist() == prior.category_ids.tolist()
    assert loaded.metadata["counts"]["with_location"] == 240 and loaded.metadata["config"]["pos_weight"] == 4.0
    places = {"lat": [47.0, -40.0], "lon": [10.0, -179.0], "day": [0.5, np.nan]}
    np.testing.assert_array_equal(loaded.scores(**places), prior.scores(**places))


def test_a_checkpoint_that_is_not_a_prior_is_refused(tmp_path):
    save_checkpoint(tmp_path / "model", torch.nn.Linear(2, 2), {"model": "resnet10t"})
    with pytest.raises(ValueError, match=r"model\.json: \$\.format: expected 'inatcomp-geoprior-1'"):
        load_prior(tmp_path / "model")
    with pytest.raises(ValueError, match="no checkpoint"):
        load_prior(tmp_path / "absent")


def test_bad_options_and_undated_data_fail_before_training():
    observations = Observations(
        lat=np.zeros(3), lon=np.ones(3), day=np.full(3, np.nan), label=np.zeros(3, dtype=np.int64),
        category_ids=np.array([4]),
    )  # fmt: skip
    with pytest.raises(ValueError, match="no located image has a date"):
        train_prior(observations, config=PriorConfig(epochs=1))
    with pytest.raises(ValueError, match="batch_size must be ≥ 1"):
        train_prior(observations, config=PriorConfig(use_dates=False, batch_size=0))
    place_only = train_prior(
        observations, config=PriorConfig(use_dates=False, hidden=8, layers=1, epochs=1, min_steps_per_epoch=1)
    )
    assert not place_only.use_dates and place_only.scores(lat=[0.0], lon=[1.0], day=[0.3]).shape == (1, 1)


# --------------------------------------------------------------------------------------------------------------------
# Combining with predictions


def test_apply_multiplies_renormalises_and_leaves_images_without_a_place_unchanged(prior, tmp_path):
    image_ids = np.array([1, 2, 3, 4, 5, 6, 7])
    records = [
        {"id": 1, "lat": 47.0, "lon": 10.0, "user_id": 1, "date": "2019-07-02"},
        {"id": 2, "lat": None, "lon": None, "user_id": 1, "date": "2019-07-02"},
        {"id": 3, "lat": 200.0, "lon": 10.0, "user_id": 1, "date": "2019-07-02"},
        {"id": 5, "lat": -40.0, "lon": -179.5, "user_id": 1, "date": None},
        {"id": 6, "lat": 38.0, "lon": -100.0, "user_id": 1, "date": "2019-09-12"},
        {"id": 7, "lat": 0.0, "lon": 0.0, "user_id": 1, "date": "2019-09-12"},
    ]  # image 4 has no record at all
    locations = tmp_path / "test_locations.json"
    locations.write_text(json.dumps(records))
    category_ids = np.array([13, 3, 99, 8, 5])  # another order, and a category the prior does not know
    scores = _random_probabilities(np.random.default_rng(0), len(image_ids), len(category_ids))
    source = _write_predictions(tmp_path / "in.pred", image_ids, category_ids, scores)
    result = apply_prior(source, prior=prior, locations=locations, out=tmp_path / "out.pred", chunk_rows=2)
    assert result["with_location"] == 3 and result["without_location"] == 4
    assert result["located_without_date"] == 1 and result["categories_without_prior"] == 1
    before, after = open_predictions(source), open_predictions(tmp_path / "out.pred")
    old, new = before.memmap(), after.memmap()
    unplaced = [1, 2, 3, 6]  # rows of images 2, 3 (null, absurd), 4 (no record), 7 (0, 0)
    assert old[unplaced].tobytes() == new[unplaced].tobytes()
    placed = [0, 4, 5]
    lat, lon, day = np.array([47.0, -40.0, 38.0]), np.array([10.0, -179.5, -100.0]), np.array([182, np.nan, 254]) / 365
    raw = prior.scores(lat=lat, lon=lon, day=day)
    column = {int(c): i for i, c in enumerate(prior.category_ids)}
    factor = np.stack([raw[:, column[c]] if c in column else raw.mean(axis=1) for c in category_ids.tolist()], 1)
    expected = old[placed].astype(np.float32) * factor
    expected /= expected.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(new[placed].astype(np.float32), expected, atol=2e-3)
    assert after.header["geo_prior"]["with_location"] == 3 and after.header["score_kind"] == "prob"
    assert np.argmax(new[0]) == 1  # image 1: in Europe in July, species 3 (column 1) wins


def test_apply_refuses_scores_that_are_not_probabilities(prior, data, tmp_path):
    locations = data[0] / "val2018_locations.json"
    ids, cats = np.array([10_000, 10_001]), np.array(list(SPECIES))
    ranks = _write_predictions(tmp_path / "rank.pred", ids, cats, np.full((2, 4), 0.25), ScoreKind.RANK)
    with pytest.raises(ValueError, match="score_kind 'rank'"):
        apply_prior(ranks, prior=prior, locations=locations, out=tmp_path / "x.pred")
    logits = _write_predictions(tmp_path / "logits.pred", ids, cats, np.array([[-1.0, 2, 0, 1], [0, 0, 0, 0]]))
    with pytest.raises(ValueError, match="negative or non-finite scores"):
        apply_prior(logits, prior=prior, locations=locations, out=tmp_path / "x.pred")
    assert not (tmp_path / "x.pred").exists()


def test_evaluate_reports_the_gain_over_weak_image_predictions(prior, data, tmp_path):
    _, _, val = data
    labels = json.loads(val.read_text())["annotations"]
    image_ids = np.array([a["image_id"] for a in labels])
    truth = np.array([a["category_id"] for a in labels])
    category_ids = np.array(sorted(SPECIES))
    rng = np.random.default_rng(3)
    scores = _random_probabilities(rng, len(image_ids), len(category_ids))
    scores[np.arange(len(truth)), np.searchsorted(category_ids, truth)] += 0.3  # a weak image model
    scores /= scores.sum(axis=1, keepdims=True)
    preds = _write_predictions(tmp_path / "val.pred", image_ids, category_ids, scores)
    result = evaluate_prior(preds, val, prior=prior, k=2, chunk_rows=7)
    assert result["images"] == 40 and result["with_location"] == 40 and result["use_dates"]
    assert result["combined"]["top1_error"] < result["image"]["top1_error"]
    assert result["top1_gain"] == pytest.approx(result["image"]["top1_error"] - result["combined"]["top1_error"])
    assert result["prior_alone"]["top1_error"] < 0.2 and "top2_gain" in result


# --------------------------------------------------------------------------------------------------------------------
# Command line, map, kernel


def test_cli_train_apply_evaluate_map_round_trip(data, tmp_path, capsys):
    root, train, val = data
    options = ["--epochs", "2", "--hidden", "16", "--layers", "1", "--batch-size", "64", "--min-steps-per-epoch", "5"]
    assert main(["geoprior", "train", "--train", str(train), "--out", str(tmp_path / "prior"), *options]) == 0
    assert (
        main(["geoprior", "train", "--train", str(train), "--no-dates", "--out", str(tmp_path / "place"), *options])
        == 0
    )
    assert load_prior(tmp_path / "prior").use_dates and not load_prior(tmp_path / "place").use_dates
    ids = np.array([10_000, 10_001, 77])  # 77: not in the location file
    _write_predictions(tmp_path / "val.pred", ids, np.array(list(SPECIES)), np.full((3, 4), 0.25))
    locations = str(root / "val2018_locations.json")
    args = ["geoprior", "apply", str(tmp_path / "val.pred"), "--prior", str(tmp_path / "prior.safetensors")]
    assert main([*args, "--locations", locations, "--out", str(tmp_path / "geo.pred")]) == 0
    out = open_predictions(tmp_path / "geo.pred")
    assert out.header["geo_prior"]["with_location"] == 2
    np.testing.assert_array_equal(out.memmap()[2], np.full(4, 0.25, dtype=np.float16))
    assert main(["geoprior", "apply", str(tmp_path / "val.pred"), "--prior", str(tmp_path / "nothing"), "--out",
                 str(tmp_path / "bad.pred"), "--locations", locations]) == 2  # fmt: skip
    capsys.readouterr()
    val_preds = tmp_path / "all.pred"
    ids = np.array([a["image_id"] for a in json.loads(val.read_text())["annotations"]])
    _write_predictions(val_preds, ids, np.array(list(SPECIES)), np.full((len(ids), 4), 0.25))
    assert main(["geoprior", "evaluate", str(val_preds), "--labels", str(val), "--prior", str(tmp_path / "place")]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["images"] == 40 and printed["use_dates"] is False and 0 <= printed["combined"]["top1_error"] <= 1
    assert main(["geoprior", "map", "--prior", str(tmp_path / "prior"), "--out", str(tmp_path / "map.png"),
                 "--resolution", "5", "--day", "180"]) == 0  # fmt: skip
    assert (tmp_path / "map.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_map_marks_the_training_points_and_rejects_unknown_categories(prior, tmp_path):
    png = plot_prior_map(prior, out=tmp_path / "m.png", category_id=8, points=([-40.0], [179.0]), resolution=4)
    assert png.stat().st_size > 1000
    with pytest.raises(ValueError, match="category 42: not in the prior"):
        plot_prior_map(prior, out=tmp_path / "n.png", category_id=42)
    assert isinstance(prior, GeoPrior) and not (tmp_path / "n.png").exists()


def test_kernel_smoke(tmp_path):
    spec = importlib.util.spec_from_file_location("kernel_geo_prior", ROOT / "kernels" / "geo_prior.py")
    kernel = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(kernel)
    summary = kernel.main(kernel.get_args_parser().parse_args(["--smoke", "--out", str(tmp_path)]))
    for key in ("val_top1_error", "val_top1_error_place", "val_top1_error_place_date"):
        assert 0 <= summary[key] <= 1 and math.isfinite(summary[key]), key
    assert (tmp_path / "summary.json").is_file() and (tmp_path / "prior_map.png").is_file()
    assert "| image model + geo prior (place and date) |" in (tmp_path / "geo_prior.md").read_text()
    test = open_predictions(summary["test_predictions"])
    assert test.header["geo_prior"]["use_dates"] is True
