"""Rendering the photos of a synthetic export to ``photos/<photo_id>/medium.jpg``, in parallel and resumably.

Each photo is a pure function of the export's seed and its rendering parameters (:mod:`inatcomp.world.render`),
so the files are the same whatever the number of processes, and a resumed run keeps what is on disk.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
from pathlib import Path

import numpy as np

from inatcomp.world import render

__all__ = ["render_photos"]

_logger = logging.getLogger(__name__)


def _render_chunk(args: tuple[int, dict[str, np.ndarray], str]) -> int:
    """Render and write one chunk of photos; skips photos already on disk so a run can resume."""
    seed, params, root = args
    written = 0
    genes_cache: dict[int, render.Genes] = {}
    for i in range(len(params["photo_id"])):
        photo_id = int(params["photo_id"][i])
        target = Path(root) / "photos" / str(photo_id) / "medium.jpg"
        if target.exists():
            continue
        species = int(params["species"][i])
        if species not in genes_cache:
            lineage = (int(params["supercategory"][i]), int(params["family"][i]), int(params["genus"][i]), species)
            genes_cache[species] = render.species_genes(seed, lineage, int(params["sibling"][i]))
        pose = render.PhotoPose(
            centre_x=float(params["centre_x"][i]),
            centre_y=float(params["centre_y"][i]),
            radius=float(params["radius"][i]),
            angle=float(params["angle"][i]),
            brightness=float(params["brightness"][i]),
            contrast=float(params["contrast"][i]),
            individual_hue=float(params["individual_hue"][i]),
            in_habitat=bool(params["in_habitat"][i]),
            flip=bool(params["flip"][i]),
            articulation=float(params["articulation"][i]),
        )
        camera = render.CameraStyle(
            colour_gain=tuple(float(x) for x in params["gain"][i]),
            background=int(params["background"][i]),
            blur_sigma=float(params["blur"][i]),
            noise=float(params["noise"][i]),
            jpeg_quality=int(params["quality"][i]),
        )
        rgb = render.render_photo(
            genes_cache[species],
            pose,
            camera,
            height=int(params["height"][i]),
            width=int(params["width"][i]),
            seed=seed * 1_000_003 + photo_id,
        )
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name("medium.jpg.tmp")
        tmp.write_bytes(render.encode_jpeg(rgb, camera.jpeg_quality))
        os.replace(tmp, target)
        written += 1
    return written


def render_photos(
    seed: int, params: dict[str, np.ndarray], root: str | Path, *, workers: int | None = None, chunk: int = 256
) -> int:
    """Render every photo in ``params`` under ``root/photos`` in parallel; returns how many were written.

    Photos already on disk are kept (renders are deterministic, so a resumed run gives the same files).
    """
    n = len(params["photo_id"])
    chunks = [(seed, {k: v[s : s + chunk] for k, v in params.items()}, str(root)) for s in range(0, n, chunk)]
    workers = workers or os.cpu_count() or 1
    written = 0
    start = time.perf_counter()
    last_log = start
    if workers == 1:
        results = map(_render_chunk, chunks)
        pool = None
    else:
        pool = multiprocessing.get_context("fork").Pool(workers, initializer=render.init_worker)
        results = pool.imap(_render_chunk, chunks)
    try:
        for done, count in enumerate(results, 1):
            written += count
            now = time.perf_counter()
            if now - last_log > 5 or done == len(chunks):
                last_log = now
                _logger.info(
                    "rendered %d/%d photos (%.0f/s)",
                    min(done * chunk, n),
                    n,
                    min(done * chunk, n) / max(now - start, 1e-9),
                )
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    return written
