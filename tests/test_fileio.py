"""Tests of the file primitives: atomic writes, the JSON reader's errors, generated Markdown blocks."""

from __future__ import annotations

import pytest

from inatcomp.fileio import read_json, replace_generated_block, write_atomic


def test_read_json_names_the_file(tmp_path):
    assert read_json(write_atomic(tmp_path / "ok.json", '{"a": [1, 2]}')) == {"a": [1, 2]}
    with pytest.raises(ValueError, match=r"bad.json: malformed JSON"):
        read_json(write_atomic(tmp_path / "bad.json", '{"a": '))
    with pytest.raises(ValueError, match=r"missing.json: cannot read"):
        read_json(tmp_path / "missing.json")


def test_replace_generated_block_keeps_everything_outside(tmp_path):
    path = write_atomic(
        tmp_path / "README.md", "top\n<!-- bench:begin (by make) -->\nold\n<!-- bench:end -->\nbottom\n"
    )
    replace_generated_block(path, "bench", "| new | 1 |\n")
    assert path.read_text() == "top\n<!-- bench:begin (by make) -->\n| new | 1 |\n<!-- bench:end -->\nbottom\n"
    replace_generated_block(path, "bench", "second")
    assert path.read_text() == "top\n<!-- bench:begin (by make) -->\nsecond\n<!-- bench:end -->\nbottom\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md"]  # no temporary left behind


def test_replace_generated_block_refuses_a_file_without_markers(tmp_path):
    path = write_atomic(tmp_path / "README.md", "no markers here\n")
    with pytest.raises(ValueError, match="README.md: no generated block '<!-- demo:begin"):
        replace_generated_block(path, "demo", "x")
    assert path.read_text() == "no markers here\n"
