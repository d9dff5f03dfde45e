"""Scenes of the mini-world: 1-3 coloured primitives on a floor, a background, and a caption built from them.

A scene lives in the world box ``[-0.5, 0.5]^3`` (z up, see :mod:`training.miniworld.camera`). Objects stand on the
floor plane ``z = FLOOR_Z`` (which is not drawn), are rotated about the vertical axis (``yaw_deg``; a torus may also
be tilted about its own x axis first, ``tilt_deg``, so that its hole shows) and scaled uniformly by their size. Captions name every object in
order: ``"a red cube"``, ``"a red cube beside a small blue sphere"``, ``"a large green cone, a white torus and a
small red cube"``; the size word is left out for ``"medium"``.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, replace

import numpy as np

__all__ = [
    "SHAPES",
    "COLORS",
    "SIZES",
    "BACKGROUNDS",
    "MOTIONS",
    "FLOOR_Z",
    "ObjectSpec",
    "Scene",
    "Motion",
    "parse_caption",
    "as_rng",
]

#: Primitive shapes. Local geometry (before the size scale): sphere radius 1; cube half-side 0.8; cylinder radius
#: 0.8, half-height 0.9; cone base radius 1 at z=-1, apex at z=+1; torus ring radius 0.75, tube radius 0.3 (in the
#: local xy plane).
SHAPES: tuple[str, ...] = ("cube", "sphere", "cylinder", "cone", "torus")

#: Named colours (linear RGB albedo in [0, 1]).
COLORS: dict[str, tuple[float, float, float]] = {
    "red": (0.86, 0.12, 0.10),
    "orange": (0.97, 0.50, 0.08),
    "yellow": (0.95, 0.86, 0.12),
    "green": (0.16, 0.68, 0.22),
    "cyan": (0.12, 0.76, 0.82),
    "blue": (0.12, 0.28, 0.88),
    "purple": (0.56, 0.18, 0.76),
    "white": (0.95, 0.95, 0.95),
}

#: Size name -> uniform scale of the local geometry (world units).
SIZES: dict[str, float] = {"small": 0.12, "medium": 0.17, "large": 0.23}

#: Background name -> (top colour, bottom colour); equal colours mean a plain background. "white" is never sampled
#: by :meth:`Scene.random`, it is there for explicit use (e.g. multi-view renders).
BACKGROUNDS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "gray": ((0.55, 0.55, 0.55), (0.55, 0.55, 0.55)),
    "light_gray": ((0.80, 0.80, 0.80), (0.80, 0.80, 0.80)),
    "dark": ((0.16, 0.16, 0.18), (0.16, 0.16, 0.18)),
    "sky": ((0.42, 0.58, 0.84), (0.86, 0.91, 0.97)),
    "sand": ((0.86, 0.80, 0.66), (0.62, 0.56, 0.46)),
    "white": ((1.0, 1.0, 1.0), (1.0, 1.0, 1.0)),
}
_RANDOM_BACKGROUNDS = ("gray", "light_gray", "dark", "sky", "sand")
_BACKGROUNDS_FOR_WHITE = ("gray", "dark")

#: Motions of clips and the word appended to a clip's caption.
MOTIONS: dict[str, str] = {
    "spin": "spinning",  # every object turns about its vertical axis
    "bounce": "bouncing",  # every object hops off the floor (phase-shifted)
    "slide": "sliding",  # the whole scene translates along a horizontal direction
    "turntable": "turning",  # the whole scene rotates about the world z axis
    "orbit": "orbiting camera",  # the camera circles the scene (the scene is still)
}

FLOOR_Z: float = -0.25

# Local half-height along z and horizontal footprint radius of each shape (before scaling).
_HALF_HEIGHT = {"cube": 0.8, "sphere": 1.0, "cylinder": 0.9, "cone": 1.0}
_FOOTPRINT = {"cube": 0.8 * math.sqrt(2.0), "sphere": 1.0, "cylinder": 0.8, "cone": 1.0}
_TORUS_R, _TORUS_r = 0.75, 0.3


def as_rng(rng: np.random.Generator | int | None) -> np.random.Generator:
    """Accept a ``numpy.random.Generator`` or an int seed."""
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(rng)


@dataclass(frozen=True)
class ObjectSpec:
    """One primitive.

    Attributes:
        shape: one of :data:`SHAPES`.
        color: one of :data:`COLORS`.
        size: one of :data:`SIZES`.
        position: world position of the object's centre ``(x, y, z)``.
        yaw_deg: rotation about the world z axis.
        tilt_deg: rotation about the local x axis applied before the yaw (used to lean tori).
        custom_scale: overrides the scale of ``size`` (e.g. ``1.0`` with shape ``"sphere"`` is the unit sphere).
    """

    shape: str
    color: str
    size: str = "medium"
    position: tuple[float, float, float] = (0.0, 0.0, 0.0)
    yaw_deg: float = 0.0
    tilt_deg: float = 0.0
    custom_scale: float | None = None

    def __post_init__(self):
        if self.shape not in SHAPES:
            raise ValueError(f"shape must be one of {SHAPES}, got {self.shape!r}")
        if self.color not in COLORS:
            raise ValueError(f"color must be one of {tuple(COLORS)}, got {self.color!r}")
        if self.size not in SIZES:
            raise ValueError(f"size must be one of {tuple(SIZES)}, got {self.size!r}")

    @property
    def scale(self) -> float:
        return SIZES[self.size] if self.custom_scale is None else float(self.custom_scale)

    @property
    def rgb(self) -> tuple[float, float, float]:
        return COLORS[self.color]

    def rotation(self) -> np.ndarray:
        """Local-to-world rotation ``(3, 3)``: tilt about x, then yaw about z."""
        t, y = math.radians(self.tilt_deg), math.radians(self.yaw_deg)
        rx = np.array([[1.0, 0.0, 0.0], [0.0, math.cos(t), -math.sin(t)], [0.0, math.sin(t), math.cos(t)]])
        rz = np.array([[math.cos(y), -math.sin(y), 0.0], [math.sin(y), math.cos(y), 0.0], [0.0, 0.0, 1.0]])
        return rz @ rx

    def half_height(self) -> float:
        """World half-extent along z."""
        if self.shape == "torus":
            t = math.radians(self.tilt_deg)
            return (_TORUS_R * abs(math.sin(t)) + _TORUS_r) * self.scale
        return _HALF_HEIGHT[self.shape] * self.scale

    def footprint(self) -> float:
        """Radius of a vertical cylinder around the centre that contains the object (world units)."""
        if self.shape == "torus":
            return (_TORUS_R + _TORUS_r) * self.scale
        return _FOOTPRINT[self.shape] * self.scale

    def support(self, direction) -> float:
        """The support function: ``max`` of ``p . direction`` over the object's surface (world units).

        Exact for every shape (``direction`` need not be a unit vector): the local support of the primitive along
        ``R^T direction`` (sphere ``|u|``, cube ``0.8 |u|_1``, cylinder ``0.8 |u_xy| + 0.9 |u_z|``, cone
        ``max(u_z, |u_xy| - u_z)``, torus ``0.75 |u_xy| + 0.3 |u|``) times the scale, plus ``position . direction``.
        """
        d = np.asarray(direction, dtype=np.float64)
        u = self.rotation().T @ d
        xy = math.hypot(u[0], u[1])
        if self.shape == "sphere":
            local = float(np.linalg.norm(u))
        elif self.shape == "cube":
            local = 0.8 * float(np.abs(u).sum())
        elif self.shape == "cylinder":
            local = 0.8 * xy + 0.9 * abs(u[2])
        elif self.shape == "cone":
            local = max(u[2], xy - u[2])
        else:
            local = _TORUS_R * xy + _TORUS_r * float(np.linalg.norm(u))
        return float(np.dot(self.position, d)) + self.scale * float(local)

    def phrase(self) -> str:
        words = ([] if self.size == "medium" else [self.size]) + [self.color, self.shape]
        return ("an " if words[0][0] in "aeiou" else "a ") + " ".join(words)


@dataclass(frozen=True)
class Scene:
    """1-3 objects and a background.

    Attributes:
        objects: the primitives, in caption order.
        background: a key of :data:`BACKGROUNDS` (a vertical gradient from its top to its bottom colour).
    """

    objects: tuple[ObjectSpec, ...]
    background: str = "gray"

    def __post_init__(self):
        if not 1 <= len(self.objects) <= 3:
            raise ValueError(f"a scene holds 1 to 3 objects, got {len(self.objects)}")
        if self.background not in BACKGROUNDS:
            raise ValueError(f"background must be one of {tuple(BACKGROUNDS)}, got {self.background!r}")

    def caption(self) -> str:
        """``"a red cube"``, ``"a red cube beside a small blue sphere"``, ``"a red cube, a blue sphere and a cone"``."""
        phrases = [o.phrase() for o in self.objects]
        if len(phrases) == 1:
            return phrases[0]
        if len(phrases) == 2:
            return f"{phrases[0]} beside {phrases[1]}"
        return ", ".join(phrases[:-1]) + f" and {phrases[-1]}"

    def spin_visible(self) -> bool:
        """Whether spinning the objects about their vertical axes changes the image (a cube or a tilted torus)."""
        return any(o.shape == "cube" or (o.shape == "torus" and abs(o.tilt_deg) > 20) for o in self.objects)

    @property
    def count(self) -> int:
        return len(self.objects)

    def with_background(self, background: str) -> Scene:
        return replace(self, background=background)

    def extent(self) -> float:
        """The largest absolute world coordinate of any surface point (exact, see :meth:`ObjectSpec.support`)."""
        axes = np.concatenate([np.eye(3), -np.eye(3)])
        return max(o.support(a) for o in self.objects for a in axes)

    def scaled(self, factor: float) -> Scene:
        """The scene scaled by ``factor`` about the world origin (positions and object scales; captions unchanged)."""
        if not factor > 0:
            raise ValueError(f"factor must be > 0, got {factor}")
        objs = tuple(
            replace(o, position=tuple(float(factor * v) for v in o.position), custom_scale=factor * o.scale)
            for o in self.objects
        )
        return replace(self, objects=objs)

    def normalized(self, half_size: float = 0.5) -> Scene:
        """The scene scaled about the origin so that its largest absolute surface coordinate is ``half_size``: what
        MV-Adapter's official ``load_mesh(rescale=True)`` does to a mesh of it (no centring)."""
        return self.scaled(half_size / self.extent())

    def to_dict(self) -> dict:
        return {"objects": [asdict(o) for o in self.objects], "background": self.background}

    @classmethod
    def from_dict(cls, d: dict) -> Scene:
        objs = tuple(
            ObjectSpec(**{**o, "position": tuple(float(v) for v in o.get("position", (0, 0, 0)))})
            for o in d["objects"]
        )
        return cls(objects=objs, background=d.get("background", "gray"))

    @classmethod
    def random(
        cls,
        rng: np.random.Generator | int | None,
        *,
        num_objects: int | None = None,
        shapes: tuple[str, ...] = SHAPES,
        colors: tuple[str, ...] = tuple(COLORS),
        max_objects: int = 3,
        background: str | None = None,
    ) -> Scene:
        """A random scene, fully determined by ``rng`` (a ``numpy.random.Generator`` or an int seed).

        Objects have distinct (shape, colour) pairs, stand on the floor and do not overlap. ``num_objects`` defaults
        to a uniform draw in ``1..max_objects``.
        """
        rng = as_rng(rng)
        n = int(num_objects) if num_objects is not None else int(rng.integers(1, max_objects + 1))
        if not 1 <= n <= min(3, len(shapes) * len(colors)):
            raise ValueError(f"num_objects must be in 1..{min(3, len(shapes) * len(colors))}, got {n}")
        objects: list[ObjectSpec] = []
        used: set[tuple[str, str]] = set()
        for k in range(n):
            while True:
                shape = str(shapes[rng.integers(len(shapes))])
                color = str(colors[rng.integers(len(colors))])
                if (shape, color) not in used:
                    break
            size = str(tuple(SIZES)[rng.integers(len(SIZES))])
            yaw = float(rng.uniform(0.0, 360.0))
            # Tori lean 25-65 degrees so that their hole shows from most viewpoints.
            tilt = float(rng.uniform(25.0, 65.0)) if shape == "torus" else 0.0
            placed = None
            for attempt_size in (size, "small"):
                spec = ObjectSpec(shape, color, attempt_size, (0.0, 0.0, 0.0), yaw, tilt)
                for _ in range(60):
                    if n == 1:
                        xy = rng.uniform(-0.08, 0.08, size=2)
                    else:
                        reach = max(0.5 - spec.footprint(), 0.05)
                        xy = rng.uniform(-reach, reach, size=2)
                    if all(
                        math.hypot(xy[0] - o.position[0], xy[1] - o.position[1])
                        > spec.footprint() + o.footprint() + 0.02
                        for o in objects
                    ):
                        placed = replace(spec, position=(float(xy[0]), float(xy[1]), FLOOR_Z + spec.half_height()))
                        break
                if placed is not None:
                    break
            if placed is None:
                if k == 0:  # cannot happen for the first object; kept for safety
                    raise RuntimeError("could not place the first object")
                break
            objects.append(placed)
            used.add((shape, color))
        if background is None:
            choices = _BACKGROUNDS_FOR_WHITE if any(o.color == "white" for o in objects) else _RANDOM_BACKGROUNDS
            background = str(choices[rng.integers(len(choices))])
        return cls(objects=tuple(objects), background=background)


_PHRASE = re.compile(
    r"\ban?\s+(?:(?P<size>"
    + "|".join(SIZES)
    + r")\s+)?(?P<color>"
    + "|".join(COLORS)
    + r")\s+(?P<shape>"
    + "|".join(SHAPES)
    + r")s?\b"
)


def parse_caption(text: str) -> list[dict[str, str]]:
    """Inverse of :meth:`Scene.caption`: the objects a prompt names, as ``{"size", "color", "shape"}`` dicts (size
    ``"medium"`` when unnamed), in order. Words outside the vocabulary are ignored; motion words too."""
    return [
        {"size": m.group("size") or "medium", "color": m.group("color"), "shape": m.group("shape")}
        for m in _PHRASE.finditer(text.lower())
    ]


@dataclass(frozen=True)
class Motion:
    """How a clip animates a scene over normalised time ``t`` in ``[0, 1]``.

    Attributes:
        kind: one of :data:`MOTIONS`.
        amount: spin / turntable / orbit: total angle in degrees; bounce: hop height (world units; the hops also
            travel ``amount / 2`` along ``direction_deg``); slide: distance.
        direction_deg: slide / bounce travel direction in the xy plane (degrees from +x).
        cycles: number of hops for ``bounce``.
    """

    kind: str
    amount: float = 90.0
    direction_deg: float = 0.0
    cycles: float = 1.0

    def __post_init__(self):
        if self.kind not in MOTIONS:
            raise ValueError(f"kind must be one of {tuple(MOTIONS)}, got {self.kind!r}")

    @property
    def word(self) -> str:
        return MOTIONS[self.kind]

    @classmethod
    def random(
        cls, rng: np.random.Generator | int | None, scene: Scene | None = None, kinds: tuple[str, ...] | None = None
    ) -> Motion:
        """A random visible motion among ``kinds`` (default: all). ``spin`` is only chosen when an object of
        ``scene`` is not symmetric about its vertical axis (a cube or a tilted torus), so that every clip changes from
        frame to frame (if ``spin`` is the only kind allowed, ``turntable`` replaces it for symmetric scenes)."""
        rng = as_rng(rng)
        kinds = list(MOTIONS if kinds is None else kinds)
        if not kinds or any(k not in MOTIONS for k in kinds):
            raise ValueError(f"kinds must be a non-empty subset of {tuple(MOTIONS)}, got {kinds}")
        if scene is not None and "spin" in kinds and not scene.spin_visible():
            kinds.remove("spin")
            kinds = kinds or ["turntable"]
        kind = str(kinds[rng.integers(len(kinds))])
        sign = float(rng.choice([-1.0, 1.0]))
        if kind == "bounce":
            return cls(
                kind,
                amount=float(rng.uniform(0.12, 0.22)),
                direction_deg=float(rng.uniform(0.0, 360.0)),
                cycles=float(rng.choice([1.0, 2.0])),
            )
        if kind == "slide":
            return cls(kind, amount=float(rng.uniform(0.2, 0.35)), direction_deg=float(rng.uniform(0.0, 360.0)))
        if kind == "spin":
            return cls(kind, amount=sign * float(rng.uniform(60.0, 120.0)))
        return cls(kind, amount=sign * float(rng.uniform(45.0, 120.0)))

    def scene_at(self, scene: Scene, t: float) -> Scene:
        """The scene at time ``t`` (``orbit`` leaves the scene unchanged; see :meth:`camera_azimuth_offset`)."""
        objs = []
        for k, o in enumerate(scene.objects):
            x, y, z = o.position
            yaw = o.yaw_deg
            if self.kind == "spin":
                yaw += self.amount * t
            elif self.kind == "bounce":
                phase = k / max(len(scene.objects), 1)
                z += self.amount * abs(math.sin(math.pi * (self.cycles * t + phase)))
                a = math.radians(self.direction_deg)  # hops travel a little along the direction
                s = 0.5 * self.amount * (t - 0.5)
                x, y = x + s * math.cos(a), y + s * math.sin(a)
            elif self.kind == "slide":
                a = math.radians(self.direction_deg)
                s = self.amount * (t - 0.5)
                x, y = x + s * math.cos(a), y + s * math.sin(a)
            elif self.kind == "turntable":
                a = math.radians(self.amount * t)
                x, y = x * math.cos(a) - y * math.sin(a), x * math.sin(a) + y * math.cos(a)
                yaw += self.amount * t
            objs.append(replace(o, position=(x, y, z), yaw_deg=yaw))
        return replace(scene, objects=tuple(objs))

    def camera_azimuth_offset(self, t: float) -> float:
        """Degrees to add to the camera azimuth at time ``t`` (non-zero only for ``orbit``)."""
        return self.amount * t if self.kind == "orbit" else 0.0
