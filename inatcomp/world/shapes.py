"""Shapes and the geometry the body plans (:mod:`inatcomp.world.bodyplan`) draw with.

A :class:`Shape` is a filled polygon or a polyline in body coordinates (y up, the organism roughly within
[-1, 1]); the functions here build their points: ellipses and bands across them, tubes around a centreline,
two-segment limbs. Every function is pure.
"""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["Shape", "band", "blend", "ellipse", "jointed", "polar", "rotate", "tube"]


@dataclasses.dataclass(frozen=True)
class Shape:
    """A filled polygon (``width == 0``) or a polyline of that width, in body coordinates."""

    points: np.ndarray
    colour: np.ndarray
    width: float = 0.0


def rotate(points: np.ndarray, angle: float) -> np.ndarray:
    """Points (n, 2) turned by ``angle`` radians, anticlockwise about the origin."""
    c, s = np.cos(angle), np.sin(angle)
    return points @ np.array([[c, s], [-s, c]])


def ellipse(cx: float, cy: float, a: float, b: float, angle: float = 0.0, n: int = 28) -> np.ndarray:
    """``n`` points around an ellipse centred at (cx, cy) with half-axes ``a``, ``b``, turned by ``angle``."""
    t = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)
    return rotate(np.stack([a * np.cos(t), b * np.sin(t)], axis=1), angle) + (cx, cy)


def band(cx: float, cy: float, a: float, b: float, x0: float, x1: float, angle: float = 0.0) -> np.ndarray:
    """The part of an ellipse between local x0 and x1 (fractions of ``a`` in [-1, 1]): a band across it."""
    xs = np.linspace(max(x0, -1.0), min(x1, 1.0), 10)
    ys = np.sqrt(np.clip(1.0 - xs * xs, 0.0, 1.0))
    local = np.concatenate([np.stack([xs, ys], 1), np.stack([xs[::-1], -ys[::-1]], 1)]) * (a, b)
    return rotate(local, angle) + (cx, cy)


def tube(centre: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """A polygon around a centreline with a half-width at each point (bodies of snakes, lizards, legs)."""
    tangent = np.gradient(centre, axis=0)
    tangent /= np.linalg.norm(tangent, axis=1, keepdims=True) + 1e-9
    normal = np.stack([-tangent[:, 1], tangent[:, 0]], axis=1) * widths[:, None]
    return np.concatenate([centre + normal, (centre - normal)[::-1]])


def polar(angle: float, length: float) -> np.ndarray:
    """The vector of ``length`` pointing at ``angle`` radians."""
    return np.array([np.cos(angle), np.sin(angle)]) * length


def jointed(start: np.ndarray, angles: tuple[float, float], lengths: tuple[float, float]) -> np.ndarray:
    """A two-segment limb (hip, knee, foot) as a polyline."""
    knee = start + polar(angles[0], lengths[0])
    return np.stack([start, knee, knee + polar(angles[1], lengths[1])])


def blend(colour: np.ndarray, other: np.ndarray, share: float) -> np.ndarray:
    """``colour`` mixed with ``share`` of ``other``."""
    return colour * (1.0 - share) + other * share
