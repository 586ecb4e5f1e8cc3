"""What every benchmark script returns and prints."""

from __future__ import annotations

import dataclasses
import logging

_logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Result:
    """One measured goal.

    Attributes:
        goal: The goal in words, e.g. "metadata for 1,000,000 photos in under 30 s".
        figure: What was measured, in words with units.
        ratio: Measured over the goal's bound (≤ 1 meets an upper bound), or a speed-up against the
            baseline run side by side (≥ the stated factor meets it).
        met: Whether the goal is met.
    """

    goal: str
    figure: str
    ratio: float
    met: bool

    def log(self) -> None:
        """Log the result in one line."""
        _logger.info("%s | %s | ratio %.2f | %s", self.goal, self.figure, self.ratio, "met" if self.met else "NOT met")
