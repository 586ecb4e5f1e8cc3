"""The training loop: ``inatcomp train`` (see :mod:`inatcomp.train.loop`)."""

from inatcomp.train.loop import *  # noqa: F403
from inatcomp.train.loop import __all__  # noqa: F401
