"""Procedural body plans of the synthetic organisms: one plan per supercategory, drawn as anti-aliased shapes.

A plan is a function from a species' :class:`Look` and a photo's articulation to a list of shapes in body
coordinates (y up, the organism roughly within [-1, 1]). What fixes what follows a field guide:

* the **supercategory** fixes the plan: birds have a body, head, beak, wing, tail and legs; insects three
  segments, six legs, antennae and wings or wing cases; arachnids eight legs; plants a stem, veined leaves and
  a flower; fungi a cap, gills and a stem; fish fins and a tail; reptiles and amphibians an elongated body
  with limbs (or none); molluscs a spiral shell; mammals four legs, ears and a tail; the microbial ones
  simple forms;
* the **family** fixes the plan's proportions (``Look.proportions``: a beak's length, a leaf's shape, whether
  an insect has wing cases, whether a reptile is a snake);
* the **genus** fixes the colours and the pattern kind (plain, bars, spots, a lengthwise stripe);
* **species** of one genus differ in one or two of four field marks (``Look.marks``): a wing bar's colour, an
  eye ring, a breast patch, a petal count, a spot row, the way a field guide tells siblings apart.

Every function here is pure: the same look and articulation give the same shapes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from inatcomp.formats.taxonomy import Supercategory
from inatcomp.world.shapes import Shape, band, blend, ellipse, jointed, polar, rotate, tube

__all__ = ["MARK_COLOURS", "MARKS", "N_PROPORTIONS", "Look", "plan_shapes", "normalise"]

#: Proportions a family fixes (each in [0, 1]; every plan reads them in its own way).
N_PROPORTIONS = 10
#: Field marks per species, each a value in ``range(MARKS)``.
MARKS = 5
#: The colours a field mark takes (white, black, yellow, red, blue): contrasting, as real field marks are.
MARK_COLOURS = np.array(
    [[0.94, 0.93, 0.88], [0.09, 0.08, 0.08], [0.96, 0.80, 0.12], [0.82, 0.14, 0.10], [0.18, 0.36, 0.86]],
    dtype=np.float64,
)
_DARK = np.array([0.12, 0.10, 0.09])


@dataclasses.dataclass(frozen=True)
class Look:
    """What the taxonomy fixes about how a species looks.

    Attributes:
        plan: The supercategory whose body plan it has.
        proportions: ``N_PROPORTIONS`` values in [0, 1], fixed by the family.
        colours: (3, 3) RGB in [0, 1]: main, secondary and accent colour, fixed by the genus.
        pattern: 0 plain, 1 bars, 2 spots, 3 a lengthwise stripe; fixed by the genus.
        density: How dense the pattern is, in [0, 1]; fixed by the genus.
        marks: Four field marks, each in ``range(MARKS)``; what tells the species from its siblings.
    """

    plan: Supercategory
    proportions: np.ndarray
    colours: np.ndarray
    pattern: int
    density: float
    marks: tuple[int, int, int, int]


def _patterned(
    out: list[Shape], look: Look, part: tuple[float, float, float, float, float], colour: np.ndarray
) -> None:
    """A body part as an ellipse in ``colour`` with the genus' pattern over it in its secondary colour."""
    cx, cy, a, b, angle = part
    out.append(Shape(ellipse(cx, cy, a, b, angle), colour))
    ink = look.colours[1]
    if look.pattern == 1:  # bars across the part
        n = 2 + int(round(3 * look.density))
        for k in range(n):
            x = -0.8 + 1.6 * (k + 0.5) / n
            out.append(Shape(band(cx, cy, a, b, x - 0.25 / n, x + 0.25 / n, angle), ink))
    elif look.pattern == 2:  # spots on a spiral grid
        n = 3 + int(round(6 * look.density))
        for k in range(n):
            r, t = 0.7 * np.sqrt((k + 0.5) / n), 2.39996 * k
            centre = rotate(np.array([[a * r * np.cos(t), b * r * np.sin(t)]]), angle)[0] + (cx, cy)
            out.append(Shape(ellipse(*centre, 0.13 * b + 0.05 * a / n, 0.13 * b + 0.05 * a / n, n=12), ink))
    elif look.pattern == 3:  # a lengthwise stripe
        out.append(Shape(ellipse(cx, cy, 0.9 * a, (0.18 + 0.2 * look.density) * b, angle), ink))


# --- the plans ------------------------------------------------------------------------------------------------


def _bird(look: Look, art: float) -> list[Shape]:
    p, (main, second, accent), mark = look.proportions, look.colours, MARK_COLOURS[list(look.marks)]
    a, b, tilt = 0.42 + 0.2 * p[0], 0.22 + 0.1 * p[1], 0.25 + 0.35 * p[2]
    out: list[Shape] = []
    leg = 0.15 + 0.3 * p[3]
    for dx in (-0.06, 0.06):
        foot = np.array([dx + 0.04, -b - leg])
        out.append(Shape(np.array([[dx, -0.6 * b], [dx, -b - leg], foot + (0.1, 0)]), _DARK, 0.025))
    rear = rotate(np.array([[-0.85 * a, 0.0]]), tilt)[0]
    direction = tilt + np.pi + 0.35 * (art - 0.5)
    length, spread = 0.25 + 0.45 * p[4], 0.05 + 0.1 * p[5]
    side = polar(direction + np.pi / 2, 1.0)
    tip = rear + polar(direction, length)
    out.append(
        Shape(np.stack([rear + 0.07 * side, tip + spread * side, tip - spread * side, rear - 0.07 * side]), second)
    )
    _patterned(out, look, (0.0, 0.0, a, b, tilt), main)
    breast = rotate(np.array([[0.45 * a, -0.4 * b]]), tilt)[0]
    out.append(Shape(ellipse(*breast, 0.3 * a, 0.45 * b, tilt - 0.3), mark[2]))
    wing_c = rotate(np.array([[-0.12 * a, 0.12 * b]]), tilt)[0]
    wa, wb, wang = 0.72 * a * (0.8 + 0.4 * p[6]), 0.55 * b, tilt - 0.12 - 0.25 * art
    out.append(Shape(ellipse(*wing_c, wa, wb, wang), second))
    out.append(Shape(band(*wing_c, wa, wb, 0.05, 0.4, wang), mark[0]))
    head = rotate(np.array([[0.92 * a, 0.75 * b]]), tilt)[0]
    rh = 0.13 + 0.08 * p[7]
    out.append(Shape(ellipse(*head, rh, rh), main))
    out.append(Shape(band(*head, rh, rh, 0.35, 1.0, np.pi / 2 - 0.3), mark[3]))
    beak_len, beak_depth, curve = 0.08 + 0.25 * p[8], 0.03 + 0.04 * p[9], -0.12 * p[8] * p[9]
    front = head + (0.85 * rh, 0.0)
    beak = np.array([front + (0, beak_depth), front + (beak_len, curve), front - (0, beak_depth)])
    out.append(Shape(beak, blend(accent, _DARK, 0.5)))
    eye = head + (0.35 * rh, 0.2 * rh)
    out.append(Shape(ellipse(*eye, 0.065, 0.065, n=14), mark[1]))
    out.append(Shape(ellipse(*eye, 0.03, 0.03, n=10), _DARK))
    return out


def _insect(look: Look, art: float) -> list[Shape]:
    p, (main, second, accent), mark = look.proportions, look.colours, MARK_COLOURS[list(look.marks)]
    abd_a, abd_b = 0.3 + 0.3 * p[0], 0.13 + 0.1 * p[1]
    thx_a, thx_b, head_r = 0.13 + 0.06 * p[2], 0.11 + 0.05 * p[1], 0.08 + 0.04 * p[3]
    out: list[Shape] = []
    leg = 0.18 + 0.16 * p[4]
    for k, x in enumerate((-0.07, 0.0, 0.07)):
        for sign in (1, -1):
            hip = sign * (np.pi / 2 + (k - 1) * 0.6 + 0.3 * (art - 0.5))
            knee = hip - sign * (0.5 + 0.3 * k)
            out.append(Shape(jointed(np.array([x, 0.0]), (hip, knee), (leg, 0.9 * leg)), _DARK, 0.02))
    head = np.array([thx_a + 0.8 * head_r, 0.0])
    for sign in (1, -1):
        angle = sign * (0.35 + 0.35 * art)
        out.append(Shape(jointed(head, (angle, angle * 0.6), ((0.08 + 0.2 * p[5]),) * 2), _DARK, 0.015))
    abd_x = -(thx_a + 0.85 * abd_a)
    _patterned(out, look, (abd_x, 0.0, abd_a, abd_b, 0.0), main)
    for x0 in (-0.75, -0.45):
        out.append(Shape(band(abd_x, 0.0, abd_a, abd_b, x0, x0 + 0.15), mark[1]))
    if p[6] > 0.5:  # wing cases (beetles): two halves over the abdomen, the genus' pattern on them
        for sign in (1, -1):
            centre = (abd_x + 0.1 * abd_a, sign * 0.5 * abd_b)
            _patterned(out, look, (*centre, 0.95 * abd_a, 0.55 * abd_b, 0.0), second)
            out.append(Shape(ellipse(centre[0] - 0.3 * abd_a, centre[1], 0.1, 0.1, n=14), mark[0]))
    else:  # membranous wings, spread more or less
        wing_len = 0.4 + 0.3 * p[7]
        for sign in (1, -1):
            angle = sign * (2.55 + 0.35 * art)
            centre = polar(angle, 0.5 * wing_len) + (0.02, 0.0)
            out.append(Shape(ellipse(*centre, 0.5 * wing_len, 0.16 * wing_len, angle), blend(second, 1.0, 0.45)))
            out.append(Shape(ellipse(*polar(angle, 0.78 * wing_len), 0.07, 0.07, n=14), mark[0]))
    out.append(Shape(ellipse(0.0, 0.0, thx_a, thx_b), main))
    out.append(Shape(ellipse(0.0, 0.0, 0.5 * thx_a, 0.45 * thx_b), mark[3]))
    out.append(Shape(ellipse(*head, head_r, head_r), mark[2]))
    out.append(Shape(ellipse(head[0] + 0.4 * head_r, 0.0, 0.3 * head_r, 0.8 * head_r), blend(accent, _DARK, 0.3)))
    return out


def _arachnid(look: Look, art: float) -> list[Shape]:
    p, (main, second, accent), mark = look.proportions, look.colours, MARK_COLOURS[list(look.marks)]
    ceph_a, ceph_b = 0.17 + 0.06 * p[0], 0.14 + 0.04 * p[0]
    abd_a, abd_b = 0.22 + 0.2 * p[1], 0.18 + 0.12 * p[2]
    out: list[Shape] = []
    leg = 0.3 + 0.3 * p[3]
    for k in range(4):
        for sign in (1, -1):
            hip = sign * (0.5 + 0.62 * k + 0.15 * (art - 0.5) * (-1) ** k)
            bend = hip + sign * (0.6 + 0.4 * p[4]) * (1 if k < 2 else -1)
            limb = jointed(np.array([0.02 * (1.5 - k), 0.0]), (hip, bend), (0.55 * leg, 0.7 * leg))
            out.append(Shape(limb, blend(second, _DARK, 0.5), 0.022))
            out.append(Shape(ellipse(*limb[1], 0.03, 0.03, n=10), mark[1]))
    for sign in (1, -1):
        out.append(Shape(jointed(np.array([ceph_a, 0.0]), (sign * 0.4, sign * 0.1), (0.08, 0.06)), _DARK, 0.02))
    abd_x = -(ceph_a + 0.9 * abd_a)
    _patterned(out, look, (abd_x, 0.0, abd_a, abd_b, 0.0), main)
    diamond = np.array([[0.55, 0.0], [0.0, 0.35], [-0.55, 0.0], [0.0, -0.35]]) * (abd_a, abd_b) + (abd_x, 0.0)
    out.append(Shape(diamond, mark[0]))
    spots = 1 + look.marks[3]
    for k in range(spots):
        x = abd_x + abd_a * (0.55 - 1.1 * (k + 0.5) / spots)
        out.append(Shape(ellipse(x, 0.0, 0.045, 0.045, n=12), accent))
    out.append(Shape(ellipse(0.0, 0.0, ceph_a, ceph_b), mark[2]))
    return out


def _leaf(base: np.ndarray, angle: float, length: float, width: float, lobed: bool) -> np.ndarray:
    t = np.linspace(0.0, 1.0, 14)
    half = width * np.sin(np.pi * t) ** 0.8 * ((1.0 + 0.35 * np.sin(6 * np.pi * t)) if lobed else 1.0)
    centre = np.stack([t * length, np.zeros_like(t)], 1)
    return rotate(tube(centre, half + 1e-3), angle) + base


def _plant(look: Look, art: float) -> list[Shape]:
    p, (main, second, accent), mark = look.proportions, look.colours, MARK_COLOURS[list(look.marks)]
    top = 0.2 + 0.4 * p[0]
    out = [Shape(np.array([[0.0, -1.0], [0.03 * (art - 0.5), -0.3], [0.0, top]]), blend(main, _DARK, 0.3), 0.035)]
    pairs = 1 + int(round(2 * p[1]))
    length, width, lobed = 0.28 + 0.25 * p[2], 0.15 + 0.35 * p[3], p[4] > 0.6
    for k in range(pairs):
        y = -0.85 + (top + 0.6) * (k + 0.5) / (pairs + 0.5)
        for sign in (1, -1):
            angle = np.pi / 2 - sign * (0.6 + 0.5 * art)
            base = np.array([0.0, y])
            out.append(Shape(_leaf(base, angle, length, width * length, lobed), main))
            vein_end = base + polar(angle, 0.85 * length)
            out.append(Shape(np.stack([base, vein_end]), mark[3], 0.012))
    petals = 4 + look.marks[0]
    petal, ratio = 0.14 + 0.14 * p[5], 0.25 + 0.4 * p[6]
    centre = np.array([0.0, top])
    for k in range(petals):
        angle = 2 * np.pi * k / petals + 0.3 * art
        mid = centre + polar(angle, 0.9 * petal)
        out.append(Shape(ellipse(*mid, petal, ratio * petal, angle), accent))
        out.append(Shape(ellipse(*(centre + polar(angle, 1.6 * petal)), 0.3 * petal, 0.3 * petal, n=12), mark[2]))
    core = 0.05 + 0.04 * p[7]
    out.append(Shape(ellipse(*centre, core, core), mark[1]))
    _ = second
    return out


def _mushroom(out: list[Shape], look: Look, x: float, size: float) -> None:
    p, (main, second, accent), mark = look.proportions, look.colours, MARK_COLOURS[list(look.marks)]
    stem_w, stem_h = (0.06 + 0.06 * p[0]) * size, (0.5 + 0.5 * p[1]) * size
    base = -1.0 + 0.05
    out.append(Shape(np.array([[x - stem_w, base], [x + stem_w, base], [x + 0.8 * stem_w, base + stem_h],
                               [x - 0.8 * stem_w, base + stem_h]]), blend(second, 1.0, 0.4)))  # fmt: skip
    ring_y = base + (0.6 + 0.2 * p[2]) * stem_h
    out.append(Shape(ellipse(x, ring_y, 1.6 * stem_w, 0.25 * stem_w), mark[2]))
    cap_w, cap_h = (0.3 + 0.3 * p[3]) * size, (0.18 + 0.3 * p[4]) * size
    top = base + stem_h
    out.append(Shape(band(x, top, cap_w * 0.95, 0.25 * cap_h, -1.0, 1.0), mark[1]))  # gills
    for k in range(7):
        gx = x + cap_w * 0.85 * (k / 3 - 1)
        out.append(Shape(np.array([[gx, top], [x + 0.3 * (gx - x), top - 0.2 * cap_h]]), _DARK, 0.01))
    if p[5] > 0.7:  # a conical cap
        cap = np.array([[x - cap_w, top], [x + cap_w, top], [x + 0.1 * cap_w, top + 1.6 * cap_h],
                        [x - 0.1 * cap_w, top + 1.6 * cap_h]])  # fmt: skip
    else:
        t = np.linspace(0.0, np.pi, 16)
        cap = np.stack([x + cap_w * np.cos(t), top + cap_h * np.sin(t) ** (0.6 + 0.8 * p[6])], 1)
    out.append(Shape(cap, main))
    out.append(Shape(np.stack([cap[0], cap[-1]]), mark[3], 0.04 * size))  # the cap's rim
    spots = 2 + int(round(5 * look.density)) if look.pattern else 3
    for k in range(spots):
        sx = x + cap_w * (0.7 * (2 * (k + 0.5) / spots - 1))
        sy = top + cap_h * (0.35 + 0.3 * ((k * 7) % 3) / 2)
        out.append(Shape(ellipse(sx, sy, 0.06 * size, 0.045 * size, n=12), mark[0]))
    _ = accent


def _fungus(look: Look, art: float) -> list[Shape]:
    out: list[Shape] = []
    if art > 0.65:  # a second, smaller fruiting body beside the first
        _mushroom(out, look, -0.55, 0.6)
    _mushroom(out, look, 0.0, 1.0)
    return out


def _fish(look: Look, art: float) -> list[Shape]:
    p, (main, second, accent), mark = look.proportions, look.colours, MARK_COLOURS[list(look.marks)]
    a, b = 0.62, 0.14 + 0.2 * p[0]
    out: list[Shape] = []
    bend = 0.5 * (art - 0.5)
    rear = np.array([-0.92 * a, 0.0])
    tail_len, tail_h = 0.2 + 0.15 * p[1], 0.5 * b + 0.3 * b * p[2]
    if p[3] > 0.5:  # forked
        tail = np.array([[0, 0], [-tail_len, tail_h], [-0.6 * tail_len, 0], [-tail_len, -tail_h]])
    else:
        tail = np.array([[0, 0.3 * tail_h], [-tail_len, tail_h], [-tail_len, -tail_h], [0, -0.3 * tail_h]])
    out.append(Shape(rotate(tail, bend) + rear, mark[1]))
    fin_h = (0.08 + 0.18 * p[4]) * (1 + b)
    dorsal = np.array([[0.25 * a, 0.9 * b], [-0.1 * a, 0.9 * b + fin_h], [-0.45 * a, 0.75 * b]])
    out.append(Shape(dorsal, mark[1]))
    out.append(Shape(np.array([[0.0, -0.8 * b], [-0.2 * a, -0.8 * b - 0.6 * fin_h], [-0.35 * a, -0.7 * b]]), mark[1]))
    _patterned(out, look, (0.0, 0.0, a, b, 0.0), main)
    for k in range(look.marks[0]):  # vertical bars: their count is the field mark
        x = 0.45 - 1.1 * (k + 0.5) / max(look.marks[0], 1)
        out.append(Shape(band(0.0, 0.0, a, b, x - 0.07, x + 0.07), blend(second, _DARK, 0.6)))
    out.append(Shape(ellipse(-0.05 * a, -0.05 * b, 0.8 * a, 0.1 * b), mark[3]))
    spot = rear + (0.12 * a, 0.2 * b)
    out.append(Shape(ellipse(*spot, 0.08, 0.08, n=14), mark[2]))
    out.append(Shape(ellipse(*spot, 0.035, 0.035, n=10), _DARK))
    out.append(
        Shape(np.array([[0.6 * a, 0.6 * b], [0.55 * a, 0.0], [0.6 * a, -0.6 * b]]), blend(main, _DARK, 0.5), 0.02)
    )
    eye = (0.78 * a, 0.22 * b)
    out.append(Shape(ellipse(*eye, 0.06, 0.06, n=14), blend(accent, 1.0, 0.6)))
    out.append(Shape(ellipse(*eye, 0.03, 0.03, n=10), _DARK))
    return out


def _elongate(look: Look, art: float, *, limbs: bool, stout: float) -> list[Shape]:
    """Snakes, lizards and salamanders: a body along a curved centreline, with or without four limbs."""
    p, (main, second, accent), mark = look.proportions, look.colours, MARK_COLOURS[list(look.marks)]
    t = np.linspace(0.0, 1.0, 40)
    waves = 1.5 if not limbs else 0.7
    amp = (0.18 if not limbs else 0.08) + 0.1 * art
    centre = np.stack([1.0 - 2.0 * t, amp * np.sin(2 * np.pi * waves * t + 3 * art) * t], 1)
    body_w = (0.08 + 0.06 * p[1]) * stout
    tail_from = 0.45 + 0.2 * p[2] if limbs else 0.8
    widths = body_w * np.where(
        t < 0.12, 0.75 + 2 * t, np.where(t < tail_from, 1.0, 1.0 - 0.95 * (t - tail_from) / (1 - tail_from))
    )
    out: list[Shape] = []
    if limbs:
        leg = (0.16 + 0.12 * p[3]) * stout
        for at, direction in ((0.16, 0.5), (tail_from - 0.05, -0.5)):
            i = int(at * 39)
            for sign in (1, -1):
                hip = sign * (np.pi / 2 + direction * (0.4 + 0.6 * art))
                out.append(Shape(jointed(centre[i], (hip, hip - sign * 1.0), (leg, 0.8 * leg)), main, 0.4 * body_w))
    out.append(Shape(tube(centre, widths), main))
    ink = second
    if look.pattern in (1, 2):
        step = 3 if look.pattern == 1 else 4
        for i in range(5, int(tail_from * 39), step):
            size = widths[i] * (0.9 if look.pattern == 1 else 0.45)
            out.append(Shape(ellipse(*centre[i], 0.3 * size if look.pattern == 1 else size, size, n=12), ink))
    out.append(Shape(tube(centre[3:-3], widths[3:-3] * 0.22), mark[0]))  # the dorsal stripe
    for i in (8, 14, 20):
        out.append(
            Shape(ellipse(*(centre[i] + (0, 0.55 * widths[i])), 0.25 * widths[i], 0.25 * widths[i], n=12), mark[1])
        )
    for i in (30, 34):
        out.append(Shape(ellipse(*centre[i], 0.2 * widths[i] + 0.01, 1.05 * widths[i], n=12), mark[3]))
    head_a = (0.1 + 0.05 * p[4]) * stout
    out.append(Shape(ellipse(centre[0][0], centre[0][1], head_a, 0.8 * head_a * (0.8 + 0.4 * p[5])), mark[2]))
    for sign in (1, -1):
        out.append(Shape(ellipse(centre[0][0] + 0.3 * head_a, sign * 0.45 * head_a, 0.025, 0.025, n=10), _DARK))
    _ = accent
    return out


def _reptile(look: Look, art: float) -> list[Shape]:
    return _elongate(look, art, limbs=look.proportions[0] < 0.7, stout=1.0)


def _frog(look: Look, art: float) -> list[Shape]:
    p, (main, second, accent), mark = look.proportions, look.colours, MARK_COLOURS[list(look.marks)]
    a, b = 0.3 + 0.1 * p[1], 0.24 + 0.1 * p[2]
    out: list[Shape] = []
    thick = 0.06 + 0.03 * p[3]
    for sign in (1, -1):
        hip = np.array([-0.7 * a, sign * 0.6 * b])
        thigh_end = hip + polar(sign * (1.9 + 0.4 * art), 0.3 + 0.1 * p[4])
        foot = thigh_end + polar(sign * 0.35, 0.28)
        out.append(Shape(np.stack([hip, thigh_end, foot]), main, thick))
        out.append(Shape(ellipse(*(0.5 * (hip + thigh_end)), 0.05, 0.05, n=12), mark[3]))
        shoulder = np.array([0.4 * a, sign * 0.7 * b])
        out.append(Shape(jointed(shoulder, (sign * (1.0 + 0.3 * art), sign * 0.3), (0.16, 0.1)), main, 0.6 * thick))
    _patterned(out, look, (0.0, 0.0, a, b, 0.0), main)
    out.append(Shape(ellipse(0.85 * a, 0.0, 0.45 * a, 0.8 * b), main))
    out.append(Shape(ellipse(0.05 * a, 0.0, 1.05 * a, 0.08 * b), mark[0]))
    for k in range(4):
        out.append(Shape(ellipse(-0.4 * a + 0.25 * a * k, (-1) ** k * 0.45 * b, 0.05, 0.05, n=12), mark[1]))
    for sign in (1, -1):
        eye = (0.95 * a, sign * 0.55 * b)
        out.append(Shape(ellipse(*eye, 0.075, 0.075, n=14), mark[2]))
        out.append(Shape(ellipse(*eye, 0.035, 0.035, n=10), _DARK))
    _ = (second, accent)
    return out


def _amphibian(look: Look, art: float) -> list[Shape]:
    if look.proportions[0] > 0.65:  # salamanders and newts
        return _elongate(look, art, limbs=True, stout=1.2)
    return _frog(look, art)


def _mammal(look: Look, art: float) -> list[Shape]:
    p, (main, second, accent), mark = look.proportions, look.colours, MARK_COLOURS[list(look.marks)]
    a, b = 0.45 + 0.15 * p[0], 0.2 + 0.09 * p[1]
    out: list[Shape] = []
    leg, thick = 0.2 + 0.25 * p[5], 0.04 + 0.03 * p[1]
    for x, phase in ((0.65 * a, 0.0), (0.5 * a, 1.0), (-0.6 * a, 1.0), (-0.75 * a, 0.0)):
        swing = 0.35 * (art - 0.5) * (1 if phase else -1)
        top = np.array([x, -0.4 * b])
        out.append(Shape(np.stack([top, top + polar(-np.pi / 2 + swing, b + leg)]), blend(main, _DARK, 0.25), thick))
    tail_len = 0.15 + 0.5 * p[6]
    base = np.array([-0.95 * a, 0.2 * b])
    tail_end = base + polar(np.pi + 0.5 + 0.6 * (art - 0.5), tail_len)
    out.append(Shape(np.stack([base, 0.5 * (base + tail_end) + (0, 0.05), tail_end]), main, 0.03 + 0.07 * (p[7] > 0.6)))
    out.append(Shape(ellipse(*tail_end, 0.06, 0.06, n=12), mark[1]))
    _patterned(out, look, (0.0, 0.0, a, b, 0.0), main)
    out.append(Shape(band(0.0, 0.0, a, b, -0.6, 0.6, 0.0)[10:], mark[2]))  # the belly (the lower half)
    head = np.array([a + 0.05, 0.55 * b + 0.1])
    ha = 0.15 + 0.05 * p[2]
    ear = 0.05 + 0.12 * p[4]
    for dx in (-0.35 * ha, 0.05 * ha):
        base_l, base_r = head + (dx - 0.05, 0.5 * ha), head + (dx + 0.06, 0.55 * ha)
        apex = head + (dx, 0.5 * ha + ear)
        out.append(Shape(np.stack([base_l, apex, base_r]), main))
        out.append(Shape(np.stack([0.7 * base_l + 0.3 * apex, apex * 0.8 + base_r * 0.2, base_r]), mark[3]))
    out.append(Shape(ellipse(*head, ha, 0.75 * ha, 0.2), main))
    snout = 0.06 + 0.12 * p[3]
    out.append(
        Shape(
            ellipse(*(head + (0.7 * ha + 0.5 * snout, -0.2 * ha)), 0.5 * snout + 0.04, 0.35 * ha),
            blend(main, second, 0.5),
        )
    )
    out.append(Shape(ellipse(*(head + (0.25 * ha, 0.15 * ha)), 0.4 * ha, 0.25 * ha), mark[0]))  # the face mask
    out.append(Shape(ellipse(*(head + (0.3 * ha, 0.15 * ha)), 0.035, 0.035, n=10), _DARK))
    _ = accent
    return out


def _mollusc(look: Look, art: float) -> list[Shape]:
    p, (main, second, accent), mark = look.proportions, look.colours, MARK_COLOURS[list(look.marks)]
    foot_t = np.linspace(0.0, 1.0, 16)
    foot_c = np.stack([-0.75 + 1.6 * foot_t, -0.6 + 0.05 * np.sin(np.pi * foot_t)], 1)
    foot_w = 0.08 + 0.05 * np.sin(np.pi * foot_t**0.7)
    out = [Shape(tube(foot_c, foot_w), blend(mark[2], second, 0.4))]
    head = foot_c[-1]
    for angle in (1.1 + 0.3 * art, 0.7 + 0.3 * art):
        tip = head + polar(angle, 0.25 + 0.1 * p[0])
        out.append(Shape(np.stack([head, tip]), blend(mark[2], _DARK, 0.3), 0.025))
        out.append(Shape(ellipse(*tip, 0.03, 0.03, n=10), _DARK))
    radius, ratio = 0.5 + 0.12 * p[1], 0.55 + 0.15 * p[2]
    centre, angle = np.array([-0.1, -0.05 + radius * 0.6]), 0.0
    whorls = 3 + int(round(2 * p[3]))
    out.append(Shape(ellipse(0.1 + 0.2 * radius, -0.35, 0.22 * radius, 0.28 * radius, 0.4), mark[3]))  # aperture
    for k in range(whorls):
        r = radius * ratio**k
        colour = main if k % 2 == 0 else blend(main, second, 0.5)
        if k == 0:
            _patterned(out, look, (*centre, r, r, angle), colour)
        else:
            out.append(Shape(ellipse(*centre, r, r), colour))
        ring = ellipse(*centre, 0.8 * r, 0.8 * r, n=24)
        if k < 1 + look.marks[1] % 3:
            out.append(Shape(np.concatenate([ring, ring[:1]]), mark[0], 0.035 * radius))
        angle += 2.2
        centre = centre + polar(angle, r * (1 - ratio) * 0.9)
    _ = accent
    return out


def _anemone(look: Look, art: float) -> list[Shape]:
    p, (main, second, accent), mark = look.proportions, look.colours, MARK_COLOURS[list(look.marks)]
    disc = 0.32 + 0.1 * p[0]
    tentacles, length = 8 + 2 * look.marks[0], 0.35 + 0.3 * p[1]
    out: list[Shape] = []
    for k in range(tentacles):
        angle = 2 * np.pi * k / tentacles + 0.4 * art
        base = polar(angle, 0.85 * disc)
        tip = base + polar(angle + 0.4 * np.sin(3 * art + k), length)
        out.append(
            Shape(np.stack([base, 0.5 * (base + tip) + polar(angle + 1.2, 0.05), tip]), second, 0.05 + 0.03 * p[2])
        )
        out.append(Shape(ellipse(*tip, 0.045, 0.045, n=12), mark[1]))
    _patterned(out, look, (0.0, 0.0, disc, disc, 0.0), main)
    ring = ellipse(0.0, 0.0, 0.6 * disc, 0.6 * disc, n=24)
    out.append(Shape(np.concatenate([ring, ring[:1]]), mark[2], 0.05))
    out.append(Shape(ellipse(0.0, 0.0, 0.22 * disc, (0.1 + 0.12 * p[3]) * disc, 0.3), mark[3]))
    _ = accent
    return out


def _seaweed(look: Look, art: float) -> list[Shape]:
    p, (main, second, accent), mark = look.proportions, look.colours, MARK_COLOURS[list(look.marks)]
    base = np.array([0.0, -0.95])
    fork = np.array([0.05 * (art - 0.5), -0.35 + 0.2 * p[0]])
    out = [Shape(np.stack([base, fork]), blend(main, _DARK, 0.4), 0.04)]
    blades = 2 + look.marks[0]
    length, width = 0.5 + 0.3 * p[1], 0.08 + 0.08 * p[2]
    for k in range(blades):
        angle = np.pi / 2 + (k - (blades - 1) / 2) * (0.35 + 0.15 * p[3]) + 0.2 * (art - 0.5)
        t = np.linspace(0.0, 1.0, 18)
        centre = np.stack([t * length, 0.05 * np.sin(5 * t + k)], 1)
        blade = rotate(tube(centre, width * np.sin(np.pi * np.clip(t * 0.9 + 0.05, 0, 1)) + 0.005), angle) + fork
        out.append(Shape(blade, main))
        out.append(Shape(rotate(centre[:-2], angle) + fork, mark[2], 0.012))
        out.append(Shape(ellipse(*(fork + polar(angle, 0.12)), 0.05, 0.05, n=12), mark[1]))
        out.append(Shape(ellipse(*(fork + polar(angle, 0.92 * length)), 0.05, 0.03, angle, n=12), mark[3]))
    _ = (second, accent)
    return out


def _slime_mould(look: Look, art: float) -> list[Shape]:
    p, (main, second, accent), mark = look.proportions, look.colours, MARK_COLOURS[list(look.marks)]
    t = np.linspace(0.0, 2 * np.pi, 24, endpoint=False)
    blob = np.stack([0.9 * np.cos(t), -0.75 + 0.18 * np.sin(t) * (1 + 0.3 * np.sin(5 * t + art))], 1)
    out = [Shape(blob, mark[3])]
    stalks = 3 + look.marks[0]
    for k in range(stalks):
        x = -0.7 + 1.4 * (k + 0.5) / stalks
        height = 0.4 + 0.4 * p[0] + 0.15 * np.sin(7 * k + 3 * art)
        top = np.array([x + 0.1 * np.sin(k + art), -0.7 + height])
        out.append(Shape(np.stack([np.array([x, -0.7]), top]), mark[2], 0.02))
        r = 0.08 + 0.06 * p[1]
        out.append(Shape(ellipse(*top, r, r * (0.8 + 0.6 * p[2])), main))
        out.append(Shape(ellipse(*(top + (0.3 * r, 0.3 * r)), 0.35 * r, 0.35 * r, n=10), mark[1]))
    _ = (second, accent)
    return out


def _colony(look: Look, art: float) -> list[Shape]:
    p, (main, second, accent), mark = look.proportions, look.colours, MARK_COLOURS[list(look.marks)]
    t = np.linspace(0.0, 2 * np.pi, 28, endpoint=False)
    radius = 0.8 * (1 + 0.12 * np.sin(3 * t + 2 * art) + 0.06 * np.sin(7 * t))
    out = [Shape(np.stack([radius * np.cos(t), (0.6 + 0.3 * p[0]) * radius * np.sin(t)], 1), main)]
    out.append(Shape(np.concatenate([out[0].points, out[0].points[:1]]), mark[3], 0.05))
    for k in range(3 + look.marks[0]):
        s = np.linspace(-0.6, 0.6, 14)
        y = -0.4 + 0.8 * (k + 0.5) / (3 + look.marks[0])
        out.append(Shape(np.stack([s, y + 0.06 * np.sin(8 * s + k + art)], 1), mark[1], 0.03))
    for k in range(6):
        out.append(Shape(ellipse(0.5 * np.cos(2.4 * k), 0.3 * np.sin(2.4 * k), 0.05, 0.05, n=10), mark[2]))
    _ = (second, accent, p)
    return out


#: Each supercategory's plan and how far its photos turn: upright subjects (birds, plants, fungi) tilt a
#: little; subjects seen from above (insects, spiders, anemones) turn any way.
_PLANS: dict[Supercategory, tuple[Callable[[Look, float], list[Shape]], float]] = {
    Supercategory.PLANTAE: (_plant, 0.25),
    Supercategory.INSECTA: (_insect, np.pi),
    Supercategory.AVES: (_bird, 0.35),
    Supercategory.REPTILIA: (_reptile, np.pi),
    Supercategory.MAMMALIA: (_mammal, 0.25),
    Supercategory.FUNGI: (_fungus, 0.15),
    Supercategory.AMPHIBIA: (_amphibian, np.pi),
    Supercategory.MOLLUSCA: (_mollusc, 0.4),
    Supercategory.ANIMALIA: (_anemone, np.pi),
    Supercategory.ARACHNIDA: (_arachnid, np.pi),
    Supercategory.ACTINOPTERYGII: (_fish, 0.35),
    Supercategory.CHROMISTA: (_seaweed, 0.3),
    Supercategory.PROTOZOA: (_slime_mould, 0.2),
    Supercategory.BACTERIA: (_colony, np.pi),
}


def plan_shapes(look: Look, articulation: float) -> tuple[list[Shape], float]:
    """The shapes of one photo of a species, and how far (radians) its photos may turn either way.

    Args:
        look: The species' look.
        articulation: The photo's pose of legs, wings, tail and body, in [0, 1].
    """
    draw, turn = _PLANS[look.plan]
    return draw(look, float(articulation)), float(turn)


def normalise(shapes: list[Shape]) -> list[Shape]:
    """Centre the shapes on their bounding box and scale it so that its longer side spans [-1, 1]."""
    points = np.concatenate([s.points for s in shapes])
    low, high = points.min(axis=0), points.max(axis=0)
    centre, half = (low + high) / 2, max(float((high - low).max()) / 2, 1e-6)
    return [Shape((s.points - centre) / half, s.colour, s.width / half) for s in shapes]
