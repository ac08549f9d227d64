"""A deterministic synthetic street-scene camera with ground-truth boxes, rendered with numpy.

Each seed is its own camera: the ground plane is seen through a pinhole camera whose height, zoom and
pitch (horizon row) come from the seed, a road crosses that plane at a seed-chosen angle, and
sidewalks, verges, a skyline, haze, colours, lighting and the traffic mix follow from the seed too.
Objects are flat-shaded sprites placed on the ground plane, so they shrink with distance and show
their side or front depending on how the road meets the line of sight. Nearer objects are painted
last and hide farther ones; each box is the extent of the pixels of its object that stay visible.

Every frame is a pure function of (config, index): frames can be rendered in any order and the same
config always gives bit-identical pixels.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gemel_engine.data.frames import (
    Box,
    CameraSource,
    Frame,
    check_fps,
    check_frame_size,
    check_max_frames,
    check_start_frame,
)
from gemel_engine.errors import SourceError

__all__ = ["CLASSES", "RENDER_VERSION", "SceneConfig", "SyntheticCamera", "seed_from_name"]

CLASSES: tuple[str, ...] = ("car", "bus", "truck", "person", "bicycle")
RENDER_VERSION = 1

_WINDOW_S = 60.0
_MAX_LIFE_S = 50.0
_NOISE_BANK = 4
_MAX_SIDE = 4096
# Longest finite scene, in frames (endless scenes have num_frames None).
_MAX_FRAMES = 1_000_000


@dataclass(frozen=True)
class SceneConfig:
    """What a synthetic camera renders; checked on creation (SourceError on a bad field)."""

    # Picks the camera: viewpoint, road layout, palette, lighting, traffic mix and every object.
    seed: int = 0
    # Frame width in pixels (16..4096; width x height at most MAX_FRAME_PIXELS).
    width: int = 320
    # Frame height in pixels (16..4096).
    height: int = 240
    # Frames per second; frame i is stamped i / fps seconds.
    fps: float = 15.0
    # Frames in the clip; None renders an endless camera.
    num_frames: int | None = 300
    # Object classes that may appear, a non-empty subset of CLASSES.
    classes: tuple[str, ...] = CLASSES
    # Mean number of objects in view at once (0..64); 0 renders an empty street.
    density: float = 6.0
    # Sensor-noise multiplier (0..10) on the camera's own noise level; 0 renders clean frames.
    noise: float = 1.0
    # Simulated seconds of daytime per second of video (0..86400): the lighting drift; 0 freezes it.
    time_scale: float = 360.0
    # Hour of day (0..24) at frame 0; None lets the seed choose.
    start_hour: float | None = None
    # Objects with fewer visible pixels than this get no box (1..10000).
    min_box_pixels: int = 6

    def __post_init__(self) -> None:
        def fail(name: str, why: str) -> SourceError:
            return SourceError(f"synthetic scene: {name} {why}, got {getattr(self, name)!r}")

        if not _is_int(self.seed) or not 0 <= self.seed < 2**63:
            raise fail("seed", "must be an integer in [0, 2**63)")
        for name in ("width", "height"):
            value = getattr(self, name)
            if not _is_int(value) or not 16 <= value <= _MAX_SIDE:
                raise fail(name, f"must be an integer in [16, {_MAX_SIDE}]")
        check_frame_size(self.width, self.height, "synthetic scene")
        check_fps(self.fps, "synthetic scene")
        if self.num_frames is not None and (not _is_int(self.num_frames) or not 1 <= self.num_frames <= _MAX_FRAMES):
            raise fail("num_frames", f"must be None or an integer in [1, {_MAX_FRAMES}]")
        if isinstance(self.classes, str) or not isinstance(self.classes, tuple | list):
            raise fail("classes", f"must be a tuple drawn from {CLASSES}")
        if not self.classes or len(set(self.classes)) != len(self.classes):
            raise fail("classes", "must be non-empty and without repeats")
        unknown = [c for c in self.classes if c not in CLASSES]
        if unknown:
            raise fail("classes", f"has unknown class(es) {unknown}; known: {', '.join(CLASSES)}")
        object.__setattr__(self, "classes", tuple(self.classes))
        for name, hi in (("density", 64.0), ("noise", 10.0), ("time_scale", 86400.0)):
            value = getattr(self, name)
            if not _is_real(value) or not 0 <= value <= hi:
                raise fail(name, f"must be a number in [0, {hi:g}]")
        if self.start_hour is not None and (not _is_real(self.start_hour) or not 0 <= self.start_hour <= 24):
            raise fail("start_hour", "must be None or a number in [0, 24]")
        if not _is_int(self.min_box_pixels) or not 1 <= self.min_box_pixels <= 10000:
            raise fail("min_box_pixels", "must be an integer in [1, 10000]")

    def to_json(self) -> dict[str, Any]:
        """Return the config as a JSON-serialisable dict."""
        data = dataclasses.asdict(self)
        data["classes"] = list(self.classes)
        return data


def seed_from_name(name: str) -> int:
    """Return a stable seed for a camera name (the same name always gives the same camera)."""
    return zlib.crc32(name.encode("utf-8"))


def _is_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return _is_int(value) or (isinstance(value, float | np.floating) and math.isfinite(value))


# Object sizes in metres: (length, width, height) ranges, speeds in m/s, base popularity.
_SIZES = {
    "car": ((3.8, 4.8), (1.7, 1.9), (1.35, 1.7)),
    "bus": ((10.0, 13.0), (2.45, 2.55), (3.0, 3.4)),
    "truck": ((6.0, 10.0), (2.4, 2.6), (3.2, 3.9)),
    "person": ((0.45, 0.6), (0.45, 0.6), (1.55, 1.9)),
    "bicycle": ((1.6, 1.8), (0.55, 0.65), (1.55, 1.75)),
}
_SPEEDS = {
    "car": (7.0, 16.0),
    "bus": (5.0, 11.0),
    "truck": (6.0, 12.0),
    "person": (0.9, 1.8),
    "bicycle": (3.0, 7.0),
}
_POPULARITY = {"car": 4.0, "bus": 0.8, "truck": 1.2, "person": 2.5, "bicycle": 1.0}

_PALETTES = {
    "car": [
        (180, 30, 30),
        (30, 60, 160),
        (170, 175, 180),
        (25, 25, 30),
        (225, 225, 225),
        (30, 90, 50),
        (215, 185, 45),
    ],
    "bus": [(230, 180, 20), (190, 30, 30), (40, 130, 70), (40, 90, 170), (230, 120, 30)],
    "truck": [(235, 235, 235), (170, 40, 35), (40, 70, 150), (110, 115, 120), (30, 110, 60)],
    "cargo": [(200, 200, 195), (140, 100, 60), (240, 240, 240), (60, 120, 70), (90, 95, 110)],
    "pants": [(30, 35, 60), (25, 25, 25), (170, 150, 110), (60, 80, 120), (90, 60, 40)],
    "skin": [(235, 200, 170), (200, 150, 115), (150, 100, 70), (95, 65, 45)],
    "frame": [(200, 30, 30), (30, 60, 170), (20, 20, 20), (40, 140, 60), (230, 230, 230)],
}
_ASPHALT = [(80, 80, 84), (95, 92, 88), (64, 66, 70), (115, 115, 112), (140, 138, 134)]
_SIDEWALK = [(170, 168, 160), (150, 112, 92), (190, 186, 176), (128, 128, 122)]
_VERGE = [(70, 120, 50), (150, 140, 85), (120, 95, 70), (140, 140, 134), (228, 230, 236), (95, 140, 70)]
_SKY = [(120, 170, 230), (180, 186, 194), (200, 200, 188), (95, 140, 215)]
_BUILDING = [(150, 72, 52), (200, 182, 142), (120, 125, 132), (90, 120, 152), (210, 210, 204), (170, 120, 80)]


@dataclass(frozen=True)
class _Part:
    kind: str
    params: tuple[float, ...]
    colour: str


def _r(u0: float, v0: float, u1: float, v1: float, colour: str) -> _Part:
    return _Part("rect", (u0, v0, u1, v1), colour)


def _e(cu: float, cv: float, ru: float, rv: float, colour: str) -> _Part:
    return _Part("ellipse", (cu, cv, ru, rv), colour)


def _t(v0: float, v1: float, top: tuple[float, float], bottom: tuple[float, float], colour: str) -> _Part:
    return _Part("trap", (v0, v1, top[0], top[1], bottom[0], bottom[1]), colour)


def _ring(cu: float, cv: float, ru: float, rv: float, inner: float, colour: str) -> _Part:
    return _Part("ring", (cu, cv, ru, rv, inner), colour)


def _stripes(u0: float, v0: float, u1: float, v1: float, period: float, duty: float, colour: str) -> _Part:
    return _Part("stripes", (u0, v0, u1, v1, period, duty), colour)


# Sprites in box coordinates (u right, v down, both 0..1); side views face right (front at u = 1).
_SPRITES: dict[tuple[str, str], tuple[_Part, ...]] = {
    ("car", "side"): (
        _t(0.0, 0.45, (0.3, 0.7), (0.15, 0.85), "body"),
        _t(0.07, 0.42, (0.33, 0.67), (0.21, 0.79), "glass"),
        _r(0.49, 0.05, 0.52, 0.43, "body"),
        _r(0.0, 0.42, 1.0, 0.86, "body"),
        _r(0.0, 0.62, 1.0, 0.67, "trim"),
        _r(0.96, 0.47, 1.0, 0.57, "lamp"),
        _r(0.0, 0.47, 0.03, 0.57, "tail"),
        _e(0.2, 0.78, 0.08, 0.22, "tyre"),
        _e(0.8, 0.78, 0.08, 0.22, "tyre"),
        _e(0.2, 0.78, 0.035, 0.1, "hub"),
        _e(0.8, 0.78, 0.035, 0.1, "hub"),
    ),
    ("car", "front"): (
        _t(0.0, 0.42, (0.15, 0.85), (0.05, 0.95), "body"),
        _t(0.06, 0.4, (0.19, 0.81), (0.1, 0.9), "glass"),
        _r(0.0, 0.4, 1.0, 0.88, "body"),
        _r(0.06, 0.5, 0.24, 0.6, "light"),
        _r(0.76, 0.5, 0.94, 0.6, "light"),
        _r(0.36, 0.63, 0.64, 0.73, "dark"),
        _r(0.04, 0.86, 0.2, 1.0, "tyre"),
        _r(0.8, 0.86, 0.96, 1.0, "tyre"),
    ),
    ("bus", "side"): (
        _r(0.0, 0.0, 1.0, 0.92, "body"),
        _r(0.03, 0.13, 0.97, 0.5, "glass"),
        _stripes(0.03, 0.13, 0.97, 0.5, 0.125, 0.12, "body"),
        _r(0.84, 0.13, 0.91, 0.88, "dark"),
        _r(0.0, 0.6, 1.0, 0.66, "trim"),
        _r(0.0, 0.02, 1.0, 0.05, "trim"),
        _e(0.18, 0.84, 0.042, 0.156, "tyre"),
        _e(0.8, 0.84, 0.042, 0.156, "tyre"),
        _e(0.18, 0.84, 0.018, 0.07, "hub"),
        _e(0.8, 0.84, 0.018, 0.07, "hub"),
    ),
    ("bus", "front"): (
        _r(0.0, 0.0, 1.0, 0.93, "body"),
        _r(0.2, 0.02, 0.8, 0.08, "sign"),
        _r(0.06, 0.1, 0.94, 0.55, "glass"),
        _r(0.0, 0.6, 1.0, 0.66, "trim"),
        _r(0.08, 0.76, 0.22, 0.83, "light"),
        _r(0.78, 0.76, 0.92, 0.83, "light"),
        _r(0.06, 0.9, 0.2, 1.0, "tyre"),
        _r(0.8, 0.9, 0.94, 1.0, "tyre"),
    ),
    ("truck", "side"): (
        _r(0.0, 0.0, 0.72, 0.8, "cargo"),
        _stripes(0.0, 0.0, 0.72, 0.8, 0.12, 0.08, "trim"),
        _r(0.74, 0.28, 1.0, 0.84, "body"),
        _r(0.82, 0.34, 0.97, 0.55, "glass"),
        _r(0.0, 0.78, 1.0, 0.87, "dark"),
        _r(0.97, 0.6, 1.0, 0.68, "lamp"),
        _e(0.12, 0.86, 0.0625, 0.139, "tyre"),
        _e(0.27, 0.86, 0.0625, 0.139, "tyre"),
        _e(0.86, 0.86, 0.0625, 0.139, "tyre"),
        _e(0.12, 0.86, 0.025, 0.06, "hub"),
        _e(0.27, 0.86, 0.025, 0.06, "hub"),
        _e(0.86, 0.86, 0.025, 0.06, "hub"),
    ),
    ("truck", "front"): (
        _r(0.0, 0.0, 1.0, 0.42, "cargo"),
        _r(0.04, 0.36, 0.96, 0.92, "body"),
        _r(0.1, 0.42, 0.9, 0.62, "glass"),
        _r(0.3, 0.68, 0.7, 0.85, "dark"),
        _r(0.08, 0.72, 0.22, 0.8, "light"),
        _r(0.78, 0.72, 0.92, 0.8, "light"),
        _r(0.05, 0.9, 0.22, 1.0, "tyre"),
        _r(0.78, 0.9, 0.95, 1.0, "tyre"),
    ),
    ("person", "side"): (
        _e(0.5, 0.075, 0.2, 0.07, "skin"),
        _r(0.3, 0.0, 0.7, 0.04, "hair"),
        _t(0.14, 0.56, (0.12, 0.88), (0.2, 0.8), "shirt"),
        _r(0.26, 0.54, 0.48, 0.97, "pants"),
        _r(0.52, 0.54, 0.74, 0.97, "pants"),
        _r(0.24, 0.96, 0.5, 1.0, "dark"),
        _r(0.5, 0.96, 0.76, 1.0, "dark"),
    ),
    ("bicycle", "side"): (
        _ring(0.2, 0.8, 0.19, 0.2, 0.78, "tyre"),
        _ring(0.8, 0.8, 0.19, 0.2, 0.78, "tyre"),
        _t(0.6, 0.64, (0.32, 0.74), (0.32, 0.74), "frame"),
        _t(0.6, 0.82, (0.42, 0.47), (0.5, 0.55), "frame"),
        _t(0.6, 0.82, (0.7, 0.74), (0.76, 0.8), "frame"),
        _r(0.2, 0.78, 0.52, 0.82, "frame"),
        _e(0.62, 0.08, 0.1, 0.07, "skin"),
        _t(0.14, 0.46, (0.5, 0.72), (0.34, 0.52), "shirt"),
        _t(0.44, 0.62, (0.36, 0.54), (0.42, 0.56), "pants"),
        _r(0.7, 0.26, 0.76, 0.5, "shirt"),
    ),
    ("bicycle", "front"): (
        _r(0.43, 0.6, 0.57, 1.0, "tyre"),
        _r(0.05, 0.5, 0.95, 0.55, "frame"),
        _r(0.4, 0.5, 0.6, 0.66, "frame"),
        _e(0.5, 0.08, 0.22, 0.07, "skin"),
        _t(0.14, 0.5, (0.15, 0.85), (0.22, 0.78), "shirt"),
        _r(0.25, 0.5, 0.42, 0.8, "pants"),
        _r(0.58, 0.5, 0.75, 0.8, "pants"),
    ),
}
_SPRITES["person", "front"] = _SPRITES["person", "side"]


@dataclass(frozen=True)
class _Layout:
    focal: float
    cam_height: float
    horizon: float
    cx: float
    anchor: tuple[float, float]
    direction: tuple[float, float]
    normal: tuple[float, float]
    road_half: float
    lane_width: float
    lanes: int
    sidewalk: float
    crosswalk: float | None
    one_way: bool
    s_range: tuple[float, float]
    visibility: float
    fog: np.ndarray
    class_weights: dict[str, float]
    speed_factor: float
    exposure: float
    white_balance: np.ndarray
    start_hour: float
    noise_sigma: float

    def to_screen(self, ground_x: float, depth: float) -> tuple[float, float]:
        return self.cx + self.focal * ground_x / depth, self.horizon + self.focal * self.cam_height / depth


@dataclass(frozen=True)
class _Object:
    uid: int
    cls: str
    t0: float
    t1: float
    s0: float
    a0: float
    vs: float
    va: float
    length: float
    width: float
    height: float
    colours: dict[str, np.ndarray] = field(compare=False)
    gait: float


@dataclass(frozen=True)
class _Placed:
    obj: _Object
    depth: float
    x1: float
    y1: float
    x2: float
    y2: float
    view: str
    flip: bool


class SyntheticCamera(CameraSource):
    """A deterministic synthetic street camera whose frames carry ground-truth boxes.

    Raises SourceError from the constructor when ``config`` is not a SceneConfig.
    """

    def __init__(self, config: SceneConfig, *, name: str | None = None) -> None:
        if not isinstance(config, SceneConfig):
            raise SourceError(f"synthetic camera needs a SceneConfig, got {type(config).__name__}")
        self.config = config
        self.name = name or f"synthetic-{config.seed}"
        self.fps = float(config.fps)
        self.resolution = (config.width, config.height)
        self._layout = _make_layout(config)
        self._albedo, self._emissive = _render_background(config, self._layout)
        noise_rng = np.random.default_rng([config.seed, 2])
        sigma = self._layout.noise_sigma * config.noise
        if sigma > 0:
            bank = noise_rng.standard_normal((_NOISE_BANK, config.height, config.width, 3), dtype=np.float32)
            self._noise: np.ndarray | None = bank * np.float32(sigma)
        else:
            self._noise = None
        self._windows: dict[int, list[_Object]] = {}

    @property
    def frame_count(self) -> int | None:
        """Return the number of frames in the clip, or None for an endless camera."""
        return self.config.num_frames

    def identity(self) -> dict[str, Any]:
        """Return the config and renderer version: equal identities render identical frames."""
        return {"kind": "synthetic", "config": self.config.to_json(), "renderer": RENDER_VERSION}

    def frames(self, max_frames: int | None = None) -> Iterator[Frame]:
        """Yield frames from index 0 (at most ``max_frames``); raises SourceError for a bad max_frames."""
        check_max_frames(max_frames)
        stop = self.config.num_frames
        if max_frames is not None:
            stop = max_frames if stop is None else min(stop, max_frames)
        index = 0
        while stop is None or index < stop:
            yield self.render(index)
            index += 1

    def frames_from(self, start: int) -> Iterator[Frame]:
        """Yield frames from index ``start`` on, rendering nothing before it.

        Raises:
            SourceError: ``start`` is not an integer >= 0.
        """
        check_start_frame(start)
        stop = self.config.num_frames
        return (self.render(index) for index in (itertools.count(start) if stop is None else range(start, stop)))

    def render(self, index: int) -> Frame:
        """Return frame ``index`` with its boxes; raises SourceError when the index is out of range."""
        self._check_index(index)
        t = index / self.fps
        canvas = self._albedo.copy()
        boxes = self._paint_objects(canvas, t)
        return Frame(index=index, timestamp=t, image=self._finish(canvas, index, t), boxes=boxes)

    def background(self, index: int) -> np.ndarray:
        """Return frame ``index`` as it would look with no objects (same light and noise).

        Raises SourceError when the index is out of range.
        """
        self._check_index(index)
        return self._finish(self._albedo.copy(), index, index / self.fps)

    def hour_at(self, index: int) -> float:
        """Return the simulated hour of day (0..24) at frame ``index``."""
        return (self._layout.start_hour + index / self.fps * self.config.time_scale / 3600.0) % 24.0

    def _check_index(self, index: int) -> None:
        n = self.config.num_frames
        if not _is_int(index) or index < 0 or (n is not None and index >= n):
            raise SourceError(
                f"{self.name}: frame index {index!r} is outside 0..{'' if n is None else n - 1}"
            )

    def _finish(self, canvas: np.ndarray, index: int, t: float) -> np.ndarray:
        gain, glow = _lighting(self._layout, self.hour_at(index))
        canvas *= gain
        if self._emissive is not None and glow > 0.01:
            canvas += self._emissive * np.float32(glow)
        if self._noise is not None:
            canvas += self._noise[index % _NOISE_BANK]
        np.clip(canvas, 0.0, 255.0, out=canvas)
        return canvas.astype(np.uint8)

    def _objects_for_window(self, window: int) -> list[_Object]:
        objs = self._windows.get(window)
        if objs is None:
            if len(self._windows) > 8:
                self._windows.clear()
            objs = _spawn_window(self.config, self._layout, window)
            self._windows[window] = objs
        return objs

    def _paint_objects(self, canvas: np.ndarray, t: float) -> tuple[Box, ...]:
        if self.config.density == 0:
            return ()
        w = math.floor(t / _WINDOW_S)
        active = [o for win in (w - 1, w) for o in self._objects_for_window(win) if o.t0 <= t < o.t1]
        placed = [p for o in active if (p := _place(self._layout, o, t, self.resolution)) is not None]
        placed.sort(key=lambda p: (-p.depth, p.obj.uid))
        height, width = canvas.shape[:2]
        ids = np.zeros((height, width), dtype=np.int32)
        windows: list[tuple[int, int, int, int]] = []
        for k, p in enumerate(placed, start=1):
            windows.append(_paint(canvas, ids, k, p, self._layout, t))
        boxes = []
        for k, (p, (cx1, cy1, cx2, cy2)) in enumerate(zip(placed, windows, strict=True), start=1):
            if cx2 <= cx1:
                continue
            mine = ids[cy1:cy2, cx1:cx2] == k
            if np.count_nonzero(mine) < self.config.min_box_pixels:
                continue
            rows = np.flatnonzero(mine.any(axis=1))
            cols = np.flatnonzero(mine.any(axis=0))
            boxes.append(
                Box(
                    p.obj.cls,
                    float(cx1 + cols[0]),
                    float(cy1 + rows[0]),
                    float(cx1 + cols[-1] + 1),
                    float(cy1 + rows[-1] + 1),
                )
            )
        return tuple(boxes)


def _make_layout(cfg: SceneConfig) -> _Layout:
    rng = np.random.default_rng([cfg.seed, 0])
    width, height = cfg.width, cfg.height
    focal = width * rng.uniform(0.7, 1.5)
    cam_height = rng.uniform(3.0, 10.0)
    horizon = height * rng.uniform(0.18, 0.45)
    cx = width * rng.uniform(0.45, 0.55)
    angle = rng.uniform(0.0, 1.35) * rng.choice([-1.0, 1.0])
    direction = (math.sin(angle), math.cos(angle))
    normal = (math.cos(angle), -math.sin(angle))
    px = width * rng.uniform(0.35, 0.65)
    py = horizon + (height - horizon) * rng.uniform(0.4, 0.75)
    depth0 = focal * cam_height / (py - horizon)
    anchor = ((px - cx) * depth0 / focal, depth0)
    lanes = int(rng.integers(2, 5))
    lane_width = rng.uniform(3.0, 3.7)
    road_half = lanes * lane_width / 2
    sidewalk = rng.uniform(2.0, 4.0)
    crosswalk = float(rng.uniform(-8.0, 8.0)) if rng.random() < 0.5 else None
    one_way = bool(rng.random() < 0.3)
    s_range = _visible_span(focal, cam_height, horizon, cx, anchor, direction, width, height)
    visibility = float(np.exp(rng.uniform(np.log(150.0), np.log(3000.0))))
    fog = np.array(_SKY[int(rng.integers(len(_SKY)))], dtype=np.float32) * 0.5 + 100.0
    draws = {c: rng.gamma(_POPULARITY[c]) for c in CLASSES}
    chosen = {c: draws[c] for c in cfg.classes}
    total = sum(chosen.values()) or 1.0
    class_weights = {c: v / total for c, v in chosen.items()}
    speed_factor = rng.uniform(0.7, 1.3)
    exposure = rng.uniform(0.85, 1.15)
    white_balance = (1.0 + rng.uniform(-0.07, 0.07, 3)).astype(np.float32)
    hour = rng.uniform(5.5, 20.5)
    noise_sigma = rng.uniform(1.0, 4.0)
    return _Layout(
        focal=focal,
        cam_height=cam_height,
        horizon=horizon,
        cx=cx,
        anchor=anchor,
        direction=direction,
        normal=normal,
        road_half=road_half,
        lane_width=lane_width,
        lanes=lanes,
        sidewalk=sidewalk,
        crosswalk=crosswalk,
        one_way=one_way,
        s_range=s_range,
        visibility=visibility,
        fog=fog,
        class_weights=class_weights,
        speed_factor=speed_factor,
        exposure=exposure,
        white_balance=white_balance,
        start_hour=float(cfg.start_hour) if cfg.start_hour is not None else hour,
        noise_sigma=noise_sigma,
    )


def _visible_span(
    focal: float,
    cam_height: float,
    horizon: float,
    cx: float,
    anchor: tuple[float, float],
    direction: tuple[float, float],
    width: int,
    height: int,
) -> tuple[float, float]:
    s = np.arange(-600.0, 600.0, 0.5)
    gx = anchor[0] + s * direction[0]
    gd = anchor[1] + s * direction[1]
    ok = gd > 1.0
    safe = np.where(ok, gd, 1.0)
    x = cx + focal * gx / safe
    y = horizon + focal * cam_height / safe
    ok &= (x > -0.4 * width) & (x < 1.4 * width) & (y < height * 1.3) & (focal * 1.5 / safe >= 1.5)
    if not ok.any():
        return (-30.0, 30.0)
    return float(s[ok].min()), float(s[ok].max())


def _render_background(cfg: SceneConfig, lay: _Layout) -> tuple[np.ndarray, np.ndarray | None]:
    rng = np.random.default_rng([cfg.seed, 3])
    width, height = cfg.width, cfg.height
    asphalt = np.array(_ASPHALT[int(rng.integers(len(_ASPHALT)))], dtype=np.float32)
    sidewalk = np.array(_SIDEWALK[int(rng.integers(len(_SIDEWALK)))], dtype=np.float32)
    verge = np.array(_VERGE[int(rng.integers(len(_VERGE)))], dtype=np.float32)
    sky = np.array(_SKY[int(rng.integers(len(_SKY)))], dtype=np.float32)
    paint = np.array((235, 235, 230), dtype=np.float32)

    img = np.empty((height, width, 3), dtype=np.float32)
    emissive = np.zeros((height, width, 3), dtype=np.float32)
    ys = np.arange(height, dtype=np.float32) + 0.5
    xs = np.arange(width, dtype=np.float32) + 0.5
    ground_rows = ys > lay.horizon + 0.5
    g0 = int(np.argmax(ground_rows)) if ground_rows.any() else height

    rows = ys[:g0, None]
    frac = np.clip(rows / max(lay.horizon, 1.0), 0.0, 1.0)
    img[:g0] = sky * (1.0 - 0.25 * frac[..., None]) + lay.fog * (0.25 * frac[..., None])
    _skyline(img, emissive, rng, lay, width, g0)

    if g0 < height:
        y = ys[g0:, None]
        depth = np.minimum(lay.focal * lay.cam_height / np.maximum(y - lay.horizon, 1e-3), 5000.0)
        gx = (xs[None, :] - lay.cx) * depth / lay.focal
        rx, rd = gx - lay.anchor[0], depth - lay.anchor[1]
        along = rx * lay.direction[0] + rd * lay.direction[1]
        across = rx * lay.normal[0] + rd * lay.normal[1]
        dist = np.abs(across)
        ground = np.broadcast_to(verge, (*dist.shape, 3)).copy()
        blotch = (
            0.08 * np.sin(along * 0.21 + rng.uniform(0, 6.3)) * np.sin(across * 0.17 + rng.uniform(0, 6.3))
        )
        ground *= (1.0 + blotch)[..., None]
        side = (dist >= lay.road_half) & (dist < lay.road_half + lay.sidewalk)
        ground[side] = sidewalk
        ground[(dist >= lay.road_half) & (dist < lay.road_half + 0.25)] = sidewalk * 1.12
        road = dist < lay.road_half
        ground[road] = asphalt
        marks = np.zeros(dist.shape, dtype=bool)
        for k in range(1, lay.lanes):
            line = np.abs(across + lay.road_half - k * lay.lane_width) < 0.08
            marks |= line & (np.mod(along, 9.0) < 4.0)
        marks |= np.abs(dist - (lay.road_half - 0.3)) < 0.08
        if lay.crosswalk is not None:
            zebra = (np.abs(along - lay.crosswalk) < 2.0) & (np.mod(across, 1.2) < 0.6)
            marks |= zebra & road
        ground[marks & road] = paint
        lamp_at = np.mod(along, 30.0) < 0.35
        lamp = lamp_at & (np.abs(dist - lay.road_half - lay.sidewalk * 0.5) < 3.0)
        emissive[g0:][lamp] = (90.0, 80.0, 40.0)
        ground *= (1.0 + rng.normal(0.0, 0.035, dist.shape).astype(np.float32))[..., None]
        haze = (1.0 - np.exp(-depth / lay.visibility))[..., None]
        img[g0:] = ground * (1.0 - haze) + lay.fog * haze
    img *= np.float32(lay.exposure)
    emissive_out = emissive if emissive.any() else None
    return np.ascontiguousarray(img, dtype=np.float32), emissive_out


def _skyline(
    img: np.ndarray, emissive: np.ndarray, rng: np.random.Generator, lay: _Layout, width: int, g0: int
) -> None:
    if g0 <= 1:
        return
    haze = 1.0 - math.exp(-400.0 / lay.visibility)
    x = 0
    while x < width:
        bw = max(2, int(width * rng.uniform(0.04, 0.16)))
        top = int(g0 * rng.uniform(0.05, 0.85))
        colour = np.array(_BUILDING[int(rng.integers(len(_BUILDING)))], dtype=np.float32)
        colour = colour * (1.0 - haze) + lay.fog * haze
        if rng.random() < 0.85:
            block = img[top:g0, x : x + bw]
            block[:] = colour
            wy = max(2, int(rng.integers(3, 7)))
            wx = max(2, int(rng.integers(3, 7)))
            yy = np.arange(block.shape[0])[:, None]
            xx = np.arange(block.shape[1])[None, :]
            windows = (np.mod(yy, wy) < wy // 2) & (np.mod(xx, wx) < wx // 2) & (yy > 1)
            block[windows] = colour * 0.55
            lit = windows & (rng.random(windows.shape) < 0.45)
            emissive[top:g0, x : x + bw][lit] = (150.0, 130.0, 70.0)
        x += bw


def _lighting(lay: _Layout, hour: float) -> tuple[np.ndarray, float]:
    sun = math.sin(math.pi * (hour - 6.0) / 12.0)
    bright = 0.22 + 0.78 * max(sun, 0.0) ** 0.6
    warm = min(max(1.0 - sun / 0.35, 0.0), 1.0) if sun > -0.1 else 0.0
    night = min(max(-sun / 0.2, 0.0), 1.0)
    tint = np.array(
        (1.0 + 0.12 * warm - 0.2 * night, 1.0 - 0.1 * night, 1.0 - 0.15 * warm + 0.12 * night),
        dtype=np.float32,
    )
    glow = min(max((0.25 - sun) / 0.35, 0.0), 1.0)
    return (np.float32(bright) * tint * lay.white_balance).astype(np.float32), glow


def _spawn_window(cfg: SceneConfig, lay: _Layout, window: int) -> list[_Object]:
    rng = np.random.default_rng([cfg.seed, 1, window + 1])
    s_lo, s_hi = lay.s_range
    span = s_hi - s_lo
    objs: list[_Object] = []
    for cls in CLASSES:
        weight = lay.class_weights.get(cls, 0.0)
        v_lo, v_hi = _SPEEDS[cls]
        mean_speed = (v_lo + v_hi) / 2 * lay.speed_factor
        mean_life = min(span / mean_speed, 25.0 if cls == "person" else _MAX_LIFE_S)
        rate = cfg.density * weight / max(mean_life, 0.5)
        count = int(rng.poisson(rate * _WINDOW_S)) if weight > 0 else 0
        for _ in range(count):
            objs.append(_new_object(rng, cls, lay, window, len(objs), span))
    return objs


def _new_object(
    rng: np.random.Generator, cls: str, lay: _Layout, window: int, seq: int, span: float
) -> _Object:
    t0 = (window + rng.random()) * _WINDOW_S
    length, width, height = (rng.uniform(*r) for r in _SIZES[cls])
    speed = rng.uniform(*_SPEEDS[cls]) * lay.speed_factor
    s_lo, s_hi = lay.s_range
    vs = va = 0.0
    if cls == "person":
        if lay.crosswalk is not None and rng.random() < 0.35:
            reach = lay.road_half + lay.sidewalk * 0.5
            sign = rng.choice([-1.0, 1.0])
            s0, a0, va = lay.crosswalk + rng.uniform(-1.5, 1.5), -sign * reach, sign * speed
            life = 2 * reach / speed
        else:
            sign = rng.choice([-1.0, 1.0])
            a0 = sign * (lay.road_half + lay.sidewalk * rng.uniform(0.25, 0.75))
            s0 = rng.uniform(s_lo, s_hi)
            vs = rng.choice([-1.0, 1.0]) * speed
            life = min(rng.uniform(8.0, 40.0) / speed, 25.0)
    else:
        if cls == "bicycle":
            side = rng.choice([-1.0, 1.0])
            a0 = side * (lay.road_half - 0.9)
        else:
            lane = int(rng.integers(lay.lanes))
            a0 = -lay.road_half + (lane + 0.5) * lay.lane_width + rng.uniform(-0.3, 0.3)
        forward = lay.one_way or a0 > 0
        margin = 10.0
        vs = speed if forward else -speed
        s0 = s_lo - margin if forward else s_hi + margin
        life = min((span + 2 * margin) / speed, _MAX_LIFE_S)
    body = _pick(rng, _PALETTES["truck" if cls == "truck" else "car"] if cls != "bus" else _PALETTES["bus"])
    shirt = np.array(rng.uniform(30, 230, 3), dtype=np.float32)
    colours = {
        "body": body * rng.uniform(0.9, 1.1),
        "cargo": _pick(rng, _PALETTES["cargo"]),
        "glass": np.array((60, 80, 100), dtype=np.float32) * rng.uniform(0.7, 1.2),
        "trim": body * 0.6,
        "tyre": np.array((22, 22, 24), dtype=np.float32),
        "hub": np.array((150, 150, 155), dtype=np.float32),
        "dark": np.array((35, 35, 38), dtype=np.float32),
        "lamp": np.array((250, 240, 200), dtype=np.float32),
        "tail": np.array((200, 20, 20), dtype=np.float32),
        "sign": np.array((250, 170, 30), dtype=np.float32),
        "skin": _pick(rng, _PALETTES["skin"]),
        "hair": np.array((40, 30, 25), dtype=np.float32) * rng.uniform(0.6, 2.5),
        "shirt": shirt,
        "pants": _pick(rng, _PALETTES["pants"]),
        "frame": _pick(rng, _PALETTES["frame"]),
    }
    return _Object(
        uid=(window + 1) * 100_000 + seq,
        cls=cls,
        t0=t0,
        t1=t0 + life,
        s0=float(s0),
        a0=float(a0),
        vs=float(vs),
        va=float(va),
        length=length,
        width=width,
        height=height,
        colours=colours,
        gait=rng.uniform(0, 2 * math.pi),
    )


def _pick(rng: np.random.Generator, palette: list[tuple[int, int, int]]) -> np.ndarray:
    return np.array(palette[int(rng.integers(len(palette)))], dtype=np.float32)


def _place(lay: _Layout, obj: _Object, t: float, resolution: tuple[int, int]) -> _Placed | None:
    dt = t - obj.t0
    s = obj.s0 + obj.vs * dt
    a = obj.a0 + obj.va * dt
    gx = lay.anchor[0] + s * lay.direction[0] + a * lay.normal[0]
    gd = lay.anchor[1] + s * lay.direction[1] + a * lay.normal[1]
    if gd < 1.5:
        return None
    x, y = lay.to_screen(gx, gd)
    scale = lay.focal / gd
    if obj.va != 0.0:
        hx, hd = lay.normal[0] * math.copysign(1.0, obj.va), lay.normal[1] * math.copysign(1.0, obj.va)
    else:
        hx, hd = lay.direction[0] * math.copysign(1.0, obj.vs), lay.direction[1] * math.copysign(1.0, obj.vs)
    norm = math.hypot(gx, gd)
    cos_phi = abs(gx * hx + gd * hd) / norm
    sin_phi = math.sqrt(max(0.0, 1.0 - cos_phi * cos_phi))
    view = "side" if sin_phi > 0.55 and obj.cls != "person" else "front"
    extent = obj.length * sin_phi + obj.width * cos_phi if obj.cls != "person" else obj.width
    w_px, h_px = extent * scale, obj.height * scale
    width, height = resolution
    if w_px < 2.0 or h_px < 2.0 or h_px > 3.0 * height:
        return None
    x1, x2, y1, y2 = x - w_px / 2, x + w_px / 2, y - h_px, y
    if x2 <= 0 or y2 <= 0 or x1 >= width or y1 >= height:
        return None
    flip = (hx * gd - gx * hd) < 0
    return _Placed(obj, gd, x1, y1, x2, y2, view, flip)


def _paint(
    canvas: np.ndarray, ids: np.ndarray, k: int, p: _Placed, lay: _Layout, t: float
) -> tuple[int, int, int, int]:
    height, width = canvas.shape[:2]
    cx1, cy1 = max(0, round(p.x1)), max(0, round(p.y1))
    cx2, cy2 = min(width, round(p.x2)), min(height, round(p.y2))
    if cx2 <= cx1 or cy2 <= cy1:
        return (0, 0, 0, 0)
    u = (np.arange(cx1, cx2, dtype=np.float32) + 0.5 - p.x1) / (p.x2 - p.x1)
    if p.flip:
        u = 1.0 - u
    u = u[None, :]
    v = ((np.arange(cy1, cy2, dtype=np.float32) + 0.5 - p.y1) / (p.y2 - p.y1))[:, None]
    haze = 1.0 - math.exp(-p.depth / lay.visibility)
    region = canvas[cy1:cy2, cx1:cx2]
    union = np.zeros((cy2 - cy1, cx2 - cx1), dtype=bool)
    colours = p.obj.colours
    approaching = (p.obj.vs * lay.direction[1] + p.obj.va * lay.normal[1]) < 0
    swing = 0.08 * math.sin(p.obj.gait + t * 7.0) if p.obj.cls == "person" else 0.0
    for part in _SPRITES[p.obj.cls, p.view]:
        mask = _mask(part, u, v, swing)
        if not mask.any():
            continue
        key = part.colour
        if key == "light":
            key = "lamp" if approaching else "tail"
        colour = colours[key] * (1.0 - haze) + lay.fog * haze
        region[mask] = colour
        union |= mask
    ids[cy1:cy2, cx1:cx2][union] = k
    return (cx1, cy1, cx2, cy2)


def _mask(part: _Part, u: np.ndarray, v: np.ndarray, swing: float) -> np.ndarray:
    q = part.params
    if part.kind == "rect":
        u0, v0, u1, v1 = q
        if part.colour == "pants" and swing:
            shift = swing if u0 < 0.5 else -swing
            u0, u1 = u0 + shift * (v - v0) / max(v1 - v0, 1e-6), u1 + shift * (v - v0) / max(v1 - v0, 1e-6)
        return (u >= u0) & (u < u1) & (v >= v0) & (v < v1)
    if part.kind == "ellipse":
        cu, cv, ru, rv = q
        return ((u - cu) / ru) ** 2 + ((v - cv) / rv) ** 2 <= 1.0
    if part.kind == "ring":
        cu, cv, ru, rv, inner = q
        r2 = ((u - cu) / ru) ** 2 + ((v - cv) / rv) ** 2
        return (r2 <= 1.0) & (r2 >= inner * inner)
    if part.kind == "trap":
        v0, v1, tu0, tu1, bu0, bu1 = q
        f = np.clip((v - v0) / max(v1 - v0, 1e-6), 0.0, 1.0)
        lo = tu0 + (bu0 - tu0) * f
        hi = tu1 + (bu1 - tu1) * f
        return (u >= lo) & (u < hi) & (v >= v0) & (v < v1)
    u0, v0, u1, v1, period, duty = q
    inside = (u >= u0) & (u < u1) & (v >= v0) & (v < v1)
    return inside & (np.mod(u - u0, period) < duty * period)
