"""The competition years' facts in one table: submission header, labels per row, the metric's k.

``build`` (the sample submission), ``submit``, ``score``, ``validate`` and ``pipeline`` all read
:data:`COMPETITIONS`, and a test checks the submission schemas in ``data_schema/`` against it, so a release, the
kit's own submissions and the scorer can never disagree on a year's format. The facts are those of the Kaggle
competitions (docs/formats.md §4): 2017 five labels and top-5 error, 2018 three and top-3, 2019 one and top-1,
2021 five labels scored by top-1 error. The production preset (iNaturalist's own training sets, no competition)
writes and scores 2021's format.
"""

from __future__ import annotations

import dataclasses
import enum

__all__ = ["COMPETITIONS", "Competition", "SubmissionFormat", "format_of_preset"]


class SubmissionFormat(enum.Enum):
    """The competition years' submission formats."""

    INAT2017 = "inat2017"
    INAT2018 = "inat2018"
    INAT2019 = "inat2019"
    INAT2021 = "inat2021"

    @property
    def competition(self) -> Competition:
        """The year's facts."""
        return COMPETITIONS[self]

    @property
    def header(self) -> str:
        """The header line."""
        return ",".join(self.competition.columns)

    @property
    def labels(self) -> int:
        """How many labels a row holds."""
        return self.competition.labels

    @property
    def official_k(self) -> int:
        """The k of the competition's metric (top-k error)."""
        return self.competition.official_k

    @property
    def default_k(self) -> int:
        """The k reported besides top-1 by default: the labels a row holds (5 for 2021, scored by top-1)."""
        return self.competition.labels


@dataclasses.dataclass(frozen=True)
class Competition:
    """One year's submission facts.

    Attributes:
        year: The competition's year.
        columns: The header's two column names, exactly.
        labels: Category ids per row, most confident first.
        official_k: The k of the leaderboard's top-k error.
    """

    year: int
    columns: tuple[str, str]
    labels: int
    official_k: int


#: Every year's facts, by format.
COMPETITIONS: dict[SubmissionFormat, Competition] = {
    SubmissionFormat.INAT2017: Competition(year=2017, columns=("id", "predicted"), labels=5, official_k=5),
    SubmissionFormat.INAT2018: Competition(year=2018, columns=("id", "predicted"), labels=3, official_k=3),
    SubmissionFormat.INAT2019: Competition(year=2019, columns=("id", "predicted"), labels=1, official_k=1),
    SubmissionFormat.INAT2021: Competition(year=2021, columns=("Id", "Predicted"), labels=5, official_k=1),
}

#: Build presets (``inatcomp.build.rules.Preset`` values) and the format their releases use.
_PRESET_FORMATS = {
    "inat2017": SubmissionFormat.INAT2017,
    "inat2018": SubmissionFormat.INAT2018,
    "inat2021": SubmissionFormat.INAT2021,
    "production": SubmissionFormat.INAT2021,
}


def format_of_preset(preset: object) -> SubmissionFormat:
    """The submission format of a build preset's releases (a ``Preset`` or its value).

    Raises:
        ValueError: An unknown preset, naming the known ones.
    """
    value = getattr(preset, "value", preset)
    if value not in _PRESET_FORMATS:
        raise ValueError(f"preset {value!r}: expected one of {', '.join(_PRESET_FORMATS)}")
    return _PRESET_FORMATS[value]
