"""inatcomp: build, train, predict and score iNaturalist-style species-classification competitions."""

__version__ = "0.1.0"
