"""A build whose photos come over HTTP: select, fetch only the selected photos, select again without the gone ones.

A photo that fails for good (:mod:`inatcomp.build.fetch`) is treated as absent from the export's photos table,
and the selection phases run again on the tables in memory (never re-read) until every selected photo is in
the cache. The release is then exactly the build of the export without the gone photos: the observation's
next photo (by position) takes a gone photo's place when the rules allow, else the observation leaves and its
class is filled from the same split's other observations; photographer isolation, the caps and the val/test
counts hold as for a local export, and the release is the same for the same export, seed and set of gone
photos. A selection round may assign some observers to other splits than the round before (the observer
split is drawn over the candidates that remain), as a local export without those photos would.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from inatcomp.build.audit import _Audit
from inatcomp.build.fetch import BUCKET_SIDES, FetchReport, FetchSettings, PhotoFetcher
from inatcomp.build.selection import _Selection

_logger = logging.getLogger(__name__)


def _warn_if_enlarged(size: str, release_side: int) -> None:
    """Warn when the fetched size is smaller than the release's long side (its images would be enlarged)."""
    side = BUCKET_SIDES.get(size)
    if side is not None and side < release_side:
        _logger.warning(
            "--photo-size %s is %d px on the long side, the release's %d px: larger photos are enlarged from it "
            "(--photo-size large or original avoids that)",
            size,
            side,
            release_side,
        )


def _without(photos: pa.Table, gone: set[int]) -> pa.Table:
    """The photos table without the rows of ``gone`` photo ids (the rows' order kept)."""
    if not gone:
        return photos
    is_gone = pc.is_in(photos["photo_id"], value_set=pa.array(sorted(gone), pa.int64()))
    return photos.filter(pc.invert(is_gone.fill_null(False)))


def _choose_and_fetch(
    source: Any,
    choose: Callable[[set[int]], tuple[_Selection, _Audit]],
    settings: FetchSettings,
) -> tuple[_Selection, _Audit, FetchReport]:
    """Select, fetch the selected photos, and select again without the gone ones until none is missing.

    Args:
        source: The export as the rounds read it (:class:`~inatcomp.build.source.ExportSource`).
        choose: The selection phases on the export without the given photo ids, returning the selection and its
            audit.
        settings: How to fetch.

    Returns:
        The last round's selection (every photo of it in the cache) and audit, and the fetch report.
    """
    fetcher = PhotoFetcher(settings)
    report = fetcher.report
    gone = fetcher.known_gone()
    if gone:
        gone = source.known(gone)
        report.known_gone = len(gone)
        _logger.info(
            "%d photos of this export are in the ledger as gone: left out (--retry-failed asks again)",
            len(gone),
        )
    failed_here: set[int] = set()
    try:
        while True:
            report.rounds += 1
            selection, audit = choose(gone)
            extensions = selection.extension.to_pylist()
            failed = fetcher.fetch(list(zip(selection.photo_id.tolist(), extensions)))
            if not failed:
                break
            _logger.info("%d selected photos are gone: selecting again without them", len(failed))
            gone |= failed
            failed_here |= failed
    finally:
        fetcher.close()
    report.replaced, report.dropped = _replaced_and_dropped(source, failed_here, selection)
    report.gone = gone
    return selection, audit, report


def _replaced_and_dropped(source: Any, failed: set[int], selection: _Selection) -> tuple[int, int]:
    """Failed photos whose observation is in the release with another photo, and those whose observation left."""
    if not failed:
        return 0, 0
    observations = source.observation_uuids(failed)
    kept = pc.is_in(observations, value_set=selection.columns.observation_uuid).to_numpy(zero_copy_only=False)
    replaced = int(np.count_nonzero(kept))
    return replaced, len(kept) - replaced
