"""Tests of inatcomp.build.export: the four export tables plain, gzipped or Parquet; clear errors; ancestry parsing."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from inatcomp.build.export import TABLE_COLUMNS, ancestry_parents, find_table, read_columns, read_export
from inatcomp.world.synth import SynthConfig, write_export

TABLES = tuple(TABLE_COLUMNS)


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> Path:
    """A tiny generated export with plain tab-separated tables (and extra columns the reader must ignore)."""
    folder = tmp_path_factory.mktemp("export") / "plain"
    write_export(folder, SynthConfig(species=8, photos=150, seed=4, images=False))
    return folder


def _frame(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, quoting=3)


def _copy_as(plain: Path, folder: Path, form: str) -> Path:
    """The export's four tables again as ``.csv.gz`` or (all-text) ``.parquet``."""
    folder.mkdir()
    for name in TABLES:
        source = plain / f"{name}.csv"
        if form == "gz":
            (folder / f"{name}.csv.gz").write_bytes(gzip.compress(source.read_bytes()))
        else:
            _frame(source).to_parquet(folder / f"{name}.parquet")
    return folder


@pytest.mark.parametrize("form", ["gz", "parquet"])
def test_gzip_and_parquet_tables_read_as_the_plain_ones(plain, tmp_path, form):
    expected = read_export(plain)
    got = read_export(_copy_as(plain, tmp_path / form, form))
    for name in TABLES:
        want, have = getattr(expected, name), getattr(got, name)
        assert have.schema == want.schema, name
        assert have.to_pydict() == want.to_pydict(), name
    assert got.folder == tmp_path / form


def test_tables_have_the_listed_columns_and_types_with_nulls_for_empty_fields(plain):
    tables = read_export(plain)
    for name in TABLES:
        table = getattr(tables, name)
        assert table.schema == pa.schema(TABLE_COLUMNS[name].items())
        assert table.num_rows == len(_frame(plain / f"{name}.csv"))
    observations = _frame(plain / "observations.csv")
    empty_latitude = (observations["latitude"] == "").to_numpy()
    assert empty_latitude.any()  # the generator leaves some coordinates out
    assert np.array_equal(tables.observations["latitude"].is_null().to_numpy(zero_copy_only=False), empty_latitude)
    assert "anomaly_score" not in tables.observations.column_names  # extra columns are not read


def test_read_columns_reads_only_the_columns_asked_for(plain):
    table = read_columns(plain / "photos.csv", "photos", ["photo_id", "width"])
    assert table.column_names == ["photo_id", "width"]
    assert table["photo_id"].to_pylist() == _frame(plain / "photos.csv")["photo_id"].astype(int).tolist()


def test_booleans_may_be_spelled_t_and_f(tmp_path):
    path = tmp_path / "taxa.csv"
    rows = ["taxon_id\tancestry\trank_level\trank\tname\tactive", "48460\t\t100\tstateofmatter\tLife\tt"]
    rows += ["1\t48460\t70\tkingdom\tPlantae\tf", "2\t48460/1\t60\tphylum\tTracheophyta\tFALSE"]
    path.write_text("\n".join(rows) + "\n")
    table = read_columns(path, "taxa")
    assert table["active"].to_pylist() == [True, False, False]
    assert table["ancestry"].to_pylist() == ["", "48460", "48460/1"]  # text stays text, '' included


def test_a_missing_table_or_two_forms_of_one_are_errors_naming_it(plain, tmp_path):
    folder = tmp_path / "export"
    shutil.copytree(plain, folder)
    assert find_table(folder, "photos") == folder / "photos.csv"
    (folder / "photos.csv.gz").write_bytes(gzip.compress((folder / "photos.csv").read_bytes()))
    with pytest.raises(ValueError, match=r"more than one photos table \(photos.csv, photos.csv.gz\)"):
        read_export(folder)
    (folder / "photos.csv").unlink()
    (folder / "photos.csv.gz").unlink()
    with pytest.raises(ValueError, match="no photos table") as error:
        read_export(folder)
    assert str(folder) in str(error.value)


def test_a_missing_column_names_the_file_and_the_column(plain, tmp_path):
    path = tmp_path / "observers.csv"
    path.write_text((plain / "observers.csv").read_text().replace("login", "user", 1))
    with pytest.raises(ValueError, match="missing column") as error:
        read_columns(path, "observers")
    assert str(path) in str(error.value) and "login" in str(error.value)

    parquet = tmp_path / "taxa.parquet"
    _frame(plain / "taxa.csv").drop(columns=["rank"]).to_parquet(parquet)
    with pytest.raises(ValueError, match=r"missing column\(s\) rank \(has ") as error:
        read_columns(parquet, "taxa")
    assert str(parquet) in str(error.value)


def test_a_bad_value_names_the_file_line_and_column(plain, tmp_path):
    lines = (plain / "photos.csv").read_text().split("\n")
    header = lines[0].split("\t")
    row = lines[2].split("\t")
    row[header.index("width")] = "wide"
    lines[2] = "\t".join(row)
    path = tmp_path / "photos.csv"
    path.write_text("\n".join(lines))
    with pytest.raises(ValueError) as error:
        read_columns(path, "photos")
    assert f"{path}: line 3, column width: 'wide' is not an integer" in str(error.value)


def test_a_bad_parquet_value_or_file_is_an_error_naming_it(plain, tmp_path):
    parquet = tmp_path / "taxa.parquet"
    _frame(plain / "taxa.csv").assign(active="maybe").to_parquet(parquet)
    with pytest.raises(ValueError, match="column active: 'maybe' is not a boolean") as error:
        read_columns(parquet, "taxa")
    assert str(parquet) in str(error.value)
    broken = tmp_path / "photos.parquet"
    broken.write_bytes(b"nope")
    with pytest.raises(ValueError, match="not a readable Parquet file") as error:
        read_columns(broken, "photos")
    assert str(broken) in str(error.value)


def test_an_unreadable_gzip_table_is_an_error_naming_it(tmp_path):
    path = tmp_path / "observers.csv.gz"
    path.write_bytes(gzip.compress(b"observer_id\tlogin\tname\n1\ta\t\n")[:-12])  # truncated
    with pytest.raises(ValueError) as error:
        read_columns(path, "observers")
    assert str(path) in str(error.value)


def test_ancestry_parents_take_the_last_id_with_either_separator():
    ancestry = pa.chunked_array([["", "48460", "48460\\1\\2"], ["48460/1/2/3", "7"]])
    assert ancestry_parents(ancestry).tolist() == [-1, 48460, 2, 3, 7]


def test_ancestry_parents_agree_with_split_ancestry_on_a_trailing_separator():
    from inatcomp.formats.taxonomy import split_ancestry

    texts = ["48460/1/", "/48460/1", "48460\\1\\", "48460", ""]
    assert ancestry_parents(pa.array(texts)).tolist() == [1, 1, 1, 48460, -1]
    assert ancestry_parents(pa.array(["48460/1/"])).tolist() == [split_ancestry("48460/1/")[-1]]


def test_ancestry_parents_reject_a_part_that_is_not_an_integer():
    with pytest.raises(ValueError, match="taxa ancestry: a part is not an integer"):
        ancestry_parents(pa.array(["48460/x"]))
