"""A release's files found on disk: :func:`find_release` checks a release folder and returns its :class:`Release`.

A downloaded iNat2017/2018/2021 folder or one built by ``inatcomp build``: the train, val and test JSON files under
the year's names (:func:`~inatcomp.build.layout.release_names`), and the organizer's ``solution.csv`` when the
release has one (synthetic releases do; downloaded ones keep it on Kaggle).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from inatcomp.build.layout import release_names
from inatcomp.build.rules import Preset, rules_for
from inatcomp.formats.competitions import format_of_preset

__all__ = ["Release", "find_release"]


@dataclasses.dataclass(frozen=True)
class Release:
    """The files of a competition release.

    Attributes:
        root: The folder the JSON ``file_name`` entries are relative to.
        preset: The competition year.
        train: The training JSON.
        val: The validation JSON.
        test: The test JSON.
        solution: The hidden solution CSV, when the release has one.
    """

    root: Path
    preset: Preset
    train: Path
    val: Path
    test: Path
    solution: Path | None

    @property
    def submission_format(self) -> str:
        """The submission format of the release's year (2021's for the production preset)."""
        return format_of_preset(self.preset).value


def find_release(root: str | os.PathLike, *, preset: Preset | str) -> Release:
    """The files of a release folder, checked to exist.

    Args:
        root: The folder holding the JSON files (``train2018.json`` … or ``train.json`` … for 2021).
        preset: The competition year whose file names to expect.

    Raises:
        ValueError: The folder or one of its JSON files is missing (naming it and what was expected).
    """
    preset = Preset(preset)
    root = Path(root)
    names = release_names(rules_for(preset))
    if not root.is_dir():
        raise ValueError(f"{root}: not a folder; expected the {preset.value} release ({names['train']}, …)")
    files = {part: root / names[part] for part in ("train", "val", "test")}
    for part, path in files.items():
        if not path.is_file():
            raise ValueError(f"{path}: missing; a {preset.value} release folder holds {names[part]} ({part} split)")
    solution = root / "solution.csv"
    return Release(root=root, preset=preset, solution=solution if solution.is_file() else None, **files)
