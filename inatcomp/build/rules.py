"""The rules of a build: presets, inclusion, photos per observation, split quotas, and their overrides.

The rules are those of docs/formats.md §3: iNat2017 keeps subspecies as classes; from 2018 infraspecific
taxa are rolled up to their species, hybrids excluded, photographers isolated to a single split, one
photo per observation, 2 to 1000 train images per class and exactly 3 val images per class (10 in
2021, with a 50-per-class ``train_mini``). The ``production`` preset follows iNaturalist's own model
training: a taxon is included with ≥ 100 observations of which ≥ 50 research grade, or ≥ 100 photos;
up to 5 photos per observation spread over as many observations as possible; a genus becomes a leaf
class when none of its species qualifies but it has enough photos itself.

:func:`rules_for` gives a preset's :class:`BuildRules` with some replaced; :func:`rule_overrides` lists the
rules ``inatcomp build`` takes as options.
"""

from __future__ import annotations

import dataclasses
import enum
import inspect
import typing

__all__ = [
    "Preset",
    "PhotoChoice",
    "Split",
    "BuildRules",
    "rules_for",
    "RuleOverride",
    "rule_overrides",
]


class Preset(enum.Enum):
    """Which release's rules a build follows."""

    INAT2017 = "inat2017"
    INAT2018 = "inat2018"
    INAT2021 = "inat2021"
    PRODUCTION = "production"


class PhotoChoice(enum.Enum):
    """Which photo of an observation to keep when only one is kept."""

    FIRST = "first"
    RANDOM = "random"


class Split(enum.IntEnum):
    """The split an observer (and so each of their photos) belongs to."""

    TRAIN = 0
    VAL = 1
    TEST = 2


@dataclasses.dataclass(frozen=True)
class BuildRules:
    """Every rule of a build; presets fill them, the command line may override any.

    Attributes:
        preset: The release these rules follow.
        rollup_infraspecific: Roll subspecies/varieties/forms up to their species (2018 and later).
        research_only: Keep research-grade observations only.
        allow_informal_names: Keep classes with provisional or manuscript names (``Mycena sp. 'acicula-CA01'``,
            ``Dactylocnemis poor knights``); by default they are left out
            (:func:`~inatcomp.build.inclusion.is_informal_name`).
        leaf_genera: Make a genus a class when none of its species qualifies (production).
        min_observations: Inclusion: at least this many observations …
        min_research_observations: … of which at least this many research grade …
        min_photos: … or at least this many photos. All three 0 means no inclusion threshold.
        photos_per_observation: Photos kept per observation.
        photo_choice: Which photo when one is kept.
        val_per_class: Exact val images per class, or ``None`` to use ``val_fraction``.
        val_fraction: Share of images for val when ``val_per_class`` is ``None``.
        min_train: Fewest train images a class may have.
        max_train: Most train images per class (sampled down above it), or ``None``.
        train_mini_per_class: Images per class of a ``train_mini`` subset of train, or ``None``.
        test_fraction: Target test size as a share of the train size (when ``test_per_class`` is ``None``).
        test_per_class: At most this many test images per class, filled like val's quota (a test that weighs
            every class alike, as iNat2018's val does), or ``None`` for a test that is a share of train
            taken by whole observers (and so follows train's long tail).
        private_fraction: Share of test images scored on the private leaderboard.
        max_image_side: Long side of release images in pixels.
        year: Year used in file names (``train2018.json``).
    """

    preset: Preset
    rollup_infraspecific: bool = True
    research_only: bool = True
    allow_informal_names: bool = False
    leaf_genera: bool = False
    min_observations: int = 0
    min_research_observations: int = 0
    min_photos: int = 0
    photos_per_observation: int = 1
    photo_choice: PhotoChoice = PhotoChoice.FIRST
    val_per_class: int | None = 3
    val_fraction: float = 0.0
    min_train: int = 2
    max_train: int | None = 1000
    train_mini_per_class: int | None = None
    test_fraction: float = 1 / 3
    test_per_class: int | None = None
    private_fraction: float = 0.5
    max_image_side: int = 800
    year: int = 2018

    def check(self) -> None:
        """Reject contradictory rules.

        Raises:
            ValueError: With the rule and what was expected.
        """
        if self.photos_per_observation < 1:
            raise ValueError(f"photos_per_observation must be ≥ 1, got {self.photos_per_observation}")
        if self.min_train < 1:
            raise ValueError(f"min_train must be ≥ 1, got {self.min_train}")
        if self.max_train is not None and self.max_train < self.min_train:
            raise ValueError(f"max_train ({self.max_train}) must be ≥ min_train ({self.min_train})")
        if self.val_per_class is not None and self.val_per_class < 1:
            raise ValueError(f"val_per_class must be ≥ 1, got {self.val_per_class}")
        if self.val_per_class is None and not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1) when val_per_class is unset, got {self.val_fraction}")
        if not 0 <= self.test_fraction <= 5:
            raise ValueError(f"test_fraction must be in [0, 5], got {self.test_fraction}")
        if self.test_per_class is not None and self.test_per_class < 1:
            raise ValueError(f"test_per_class must be ≥ 1, got {self.test_per_class}")
        if not 0 <= self.private_fraction <= 1:
            raise ValueError(f"private_fraction must be in [0, 1], got {self.private_fraction}")
        if self.train_mini_per_class is not None and self.train_mini_per_class > self.min_train:
            raise ValueError(
                f"train_mini_per_class ({self.train_mini_per_class}) must be ≤ min_train ({self.min_train}) "
                "so that every class can fill it"
            )


_PRESETS = {
    Preset.INAT2017: BuildRules(
        preset=Preset.INAT2017, rollup_infraspecific=False, val_per_class=None, val_fraction=0.15,
        min_train=5, max_train=None, test_fraction=0.3, year=2017,
    ),
    Preset.INAT2018: BuildRules(preset=Preset.INAT2018),
    Preset.INAT2021: BuildRules(
        preset=Preset.INAT2021, val_per_class=10, min_train=50, max_train=300, train_mini_per_class=50,
        test_fraction=0.19, max_image_side=500, year=2021,
    ),
    Preset.PRODUCTION: BuildRules(
        preset=Preset.PRODUCTION, research_only=False, leaf_genera=True, min_observations=100,
        min_research_observations=50, min_photos=100, photos_per_observation=5, val_per_class=5,
        max_train=1000, test_fraction=0.1, max_image_side=500, year=2024,
    ),
}  # fmt: skip


def rules_for(preset: Preset, **overrides: object) -> BuildRules:
    """The rules of a preset with some replaced; ``None`` values leave the preset's rule.

    Raises:
        ValueError: An unknown rule name or contradictory rules.
    """
    known = {f.name for f in dataclasses.fields(BuildRules)}
    unknown = set(overrides) - known
    if unknown:
        raise ValueError(f"unknown build rule(s): {', '.join(sorted(unknown))}")
    rules = dataclasses.replace(_PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None})
    rules.check()
    return rules


#: Numeric rules that stay the preset's: the year names the release's files and goes with its formats.
_PRESET_ONLY = frozenset({"year"})


@dataclasses.dataclass(frozen=True)
class RuleOverride:
    """A rule of :class:`BuildRules` that the command line may override (``--min-train`` for ``min_train``).

    Attributes:
        name: The field of :class:`BuildRules`.
        type: The type of its values, ``int`` or ``float`` (also for a rule whose preset value may be ``None``).
        help: The rule's description, from the attributes of :class:`BuildRules`'s docstring.
    """

    name: str
    type: type
    help: str


def rule_overrides() -> tuple[RuleOverride, ...]:
    """The rules the command line may override, in :class:`BuildRules`'s field order: its numeric fields.

    A numeric field (``int`` or ``float``, or either or ``None``) is one, but for the year, which stays the
    preset's. The other rules have flags of their own (``photo_choice``, ``research_only``) or are the preset's.
    """
    hints = typing.get_type_hints(BuildRules)
    docs = _attribute_docs(BuildRules)
    found = []
    for field in dataclasses.fields(BuildRules):
        kind = _numeric_type(hints[field.name])
        if kind is not None and field.name not in _PRESET_ONLY:
            found.append(RuleOverride(name=field.name, type=kind, help=docs.get(field.name, "")))
    return tuple(found)


def _numeric_type(hint: object) -> type | None:
    """``int`` or ``float`` for a hint that is one of them, alone or with ``None``; else None (bool is not)."""
    kinds = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    return kinds[0] if len(kinds) == 1 and kinds[0] in (int, float) else None


def _attribute_docs(cls: type) -> dict[str, str]:
    """The descriptions of a Google-style ``Attributes:`` section of a class's docstring, by name, one line each."""
    docs: dict[str, list[str]] = {}
    lines = inspect.cleandoc(cls.__doc__ or "").splitlines()
    inside, name = False, None
    for line in lines:
        if line.strip() == "Attributes:":
            inside = True
        elif inside and line.startswith("        ") and name:  # a description's next line
            docs[name].append(line.strip())
        elif inside and line.startswith("    ") and ":" in line:
            name, _, text = line.strip().partition(":")
            docs[name] = [text.strip()]
        elif inside and line.strip():
            break  # the next section
    return {k: " ".join(v) for k, v in docs.items()}
