"""inatcomp: build, train, predict and score iNaturalist-style species-classification competitions."""

import os

__version__ = "0.1.0"

# albumentations 2.0.8 asks the package index for its latest version at every import unless told not to: a
# network call of up to 2 s (and a trace of every run) before any training starts, or a warning offline. The kit
# opts out for itself before any of its modules can load albumentations; a user's own setting wins.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
