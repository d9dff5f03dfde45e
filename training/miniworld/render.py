"""Vectorised analytic ray casting of mini-world scenes (numpy, float32; no OpenGL).

Every pixel's ray is intersected analytically with each primitive (sphere, cube, cylinder, cone: closed-form;
torus: sphere tracing of its signed distance function), after a bounding-sphere test that leaves only the rays near
the object. A batch of views or frames of scenes with the same list of shapes (the views of one scene, the frames of
a clip) is rendered in one pass. Shading is Lambert with a key and a fill light fixed in the world plus ambient, on
the scene's vertical-gradient background.

Outputs (:class:`RenderOutput`) per view: RGB in [0, 1], the object mask, world-space position and unit normal maps
(zero on the background) and the ray distance. With ``supersample=s``, ``s * s`` rays per pixel are averaged: the
RGB is the mean colour, the mask is coverage >= 1/2, positions / normals / depth are means over the covered
sub-samples (normals renormalised).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .camera import Camera, camera_rays
from .scene import BACKGROUNDS, Motion, Scene

__all__ = ["RenderOutput", "render", "render_views", "render_clip", "LIGHT_DIRECTIONS"]

_KEY = np.array([0.35, -0.55, 0.9], dtype=np.float32)
_FILL = np.array([-0.6, 0.5, 0.3], dtype=np.float32)
#: Key and fill light directions (unit vectors pointing towards the lights, world frame).
LIGHT_DIRECTIONS = (_KEY / np.linalg.norm(_KEY), _FILL / np.linalg.norm(_FILL))
_AMBIENT, _KEY_W, _FILL_W = 0.32, 0.62, 0.18

# Local bounding-sphere radius of each shape (see scene.SHAPES for the local geometry).
_BOUND = {
    "sphere": 1.0,
    "cube": 0.8 * math.sqrt(3.0),
    "cylinder": math.sqrt(0.8**2 + 0.9**2),
    "cone": math.sqrt(2.0),
    "torus": 1.05,
}
_EPS = 1e-5
_INF = np.float32(np.inf)


@dataclass
class RenderOutput:
    """Rendered views.

    Attributes:
        rgb: ``(N, H, W, 3)`` float32 in [0, 1].
        mask: ``(N, H, W)`` bool, True on objects.
        position: ``(N, H, W, 3)`` float32 world coordinates of the visible surface (0 on the background).
        normal: ``(N, H, W, 3)`` float32 world unit normals (0 on the background).
        depth: ``(N, H, W)`` float32 distance from the ray origin along the ray (0 on the background).
        (The last three are ``None`` when rendered with ``geometry=False``.)
        object_index: ``(N, H, W)`` int64 index into ``scene.objects`` of the visible object, -1 on the background
            (with super-sampling: the object under the sub-sample nearest the pixel centre).
    """

    rgb: np.ndarray
    mask: np.ndarray
    position: np.ndarray | None
    normal: np.ndarray | None
    depth: np.ndarray | None
    object_index: np.ndarray | None = None

    def __len__(self) -> int:
        return self.rgb.shape[0]

    def uint8(self) -> np.ndarray:
        """RGB as ``(N, H, W, 3)`` uint8."""
        return np.clip(np.rint(self.rgb * 255.0), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------------------------
# Ray-primitive intersections in local coordinates. o, d: (M, 3) float32, d unit. Return t (M,) (inf on a miss)
# and the local outward normal (M, 3) (unnormalised allowed; normalised by the caller).
# ---------------------------------------------------------------------------------------------------------------


def _sphere(o, d):
    b = np.einsum("mi,mi->m", o, d)
    c = np.einsum("mi,mi->m", o, o) - 1.0
    disc = b * b - c
    t = -b - np.sqrt(np.maximum(disc, 0.0))
    t = np.where((disc >= 0) & (t > _EPS), t, _INF)
    return t, o + np.where(np.isfinite(t), t, 0.0)[:, None] * d


def _cube(o, d, h=0.8):
    dd = np.where(np.abs(d) < 1e-8, np.float32(1e-8), d)
    inv = 1.0 / dd
    t1 = (-h - o) * inv
    t2 = (h - o) * inv
    tn = np.minimum(t1, t2)
    tf = np.maximum(t1, t2)
    tmin = tn.max(axis=1)
    tmax = tf.min(axis=1)
    t = np.where((tmax >= tmin) & (tmin > _EPS), tmin, _INF)
    axis = tn.argmax(axis=1)
    n = np.zeros_like(o)
    rows = np.arange(o.shape[0])
    n[rows, axis] = -np.sign(dd[rows, axis])
    return t, n


def _cylinder(o, d, r=0.8, h=0.9):
    a = d[:, 0] ** 2 + d[:, 1] ** 2
    b = o[:, 0] * d[:, 0] + o[:, 1] * d[:, 1]
    c = o[:, 0] ** 2 + o[:, 1] ** 2 - r * r
    disc = b * b - a * c
    a_safe = np.where(a < 1e-9, np.float32(1e-9), a)
    ts = (-b - np.sqrt(np.maximum(disc, 0.0))) / a_safe
    zs = o[:, 2] + ts * d[:, 2]
    ts = np.where((disc >= 0) & (a > 1e-9) & (ts > _EPS) & (np.abs(zs) <= h), ts, _INF)
    dz = np.where(np.abs(d[:, 2]) < 1e-8, np.float32(1e-8), d[:, 2])
    cap_z = -np.sign(dz) * h
    tc = (cap_z - o[:, 2]) / dz
    xc = o[:, 0] + tc * d[:, 0]
    yc = o[:, 1] + tc * d[:, 1]
    tc = np.where((tc > _EPS) & (xc * xc + yc * yc <= r * r), tc, _INF)
    side = ts <= tc
    t = np.minimum(ts, tc)
    p = o + np.where(np.isfinite(t), t, 0.0)[:, None] * d
    n = np.where(side[:, None], p * np.array([1.0, 1.0, 0.0], dtype=np.float32), 0.0)
    n[:, 2] = np.where(side, 0.0, cap_z)
    return t, n


def _cone(o, d):
    # x^2 + y^2 = ((1 - z) / 2)^2 for z in [-1, 1] (apex at z = 1), base disc at z = -1 of radius 1.
    w0 = 1.0 - o[:, 2]
    a = d[:, 0] ** 2 + d[:, 1] ** 2 - 0.25 * d[:, 2] ** 2
    b = o[:, 0] * d[:, 0] + o[:, 1] * d[:, 1] + 0.25 * w0 * d[:, 2]
    c = o[:, 0] ** 2 + o[:, 1] ** 2 - 0.25 * w0 * w0
    disc = b * b - a * c
    sq = np.sqrt(np.maximum(disc, 0.0))
    a_safe = np.where(np.abs(a) < 1e-9, np.float32(1e-9), a)
    r1 = (-b - sq) / a_safe
    r2 = (-b + sq) / a_safe
    ta, tb = np.minimum(r1, r2), np.maximum(r1, r2)

    def ok(t):
        z = o[:, 2] + t * d[:, 2]
        return (disc >= 0) & (t > _EPS) & (z >= -1.0) & (z <= 1.0)

    ts = np.where(ok(ta), ta, np.where(ok(tb), tb, _INF))
    dz = np.where(np.abs(d[:, 2]) < 1e-8, np.float32(1e-8), d[:, 2])
    tc = (-1.0 - o[:, 2]) / dz
    xc = o[:, 0] + tc * d[:, 0]
    yc = o[:, 1] + tc * d[:, 1]
    tc = np.where((tc > _EPS) & (xc * xc + yc * yc <= 1.0), tc, _INF)
    side = ts <= tc
    t = np.minimum(ts, tc)
    p = o + np.where(np.isfinite(t), t, 0.0)[:, None] * d
    n_side = np.stack([2.0 * p[:, 0], 2.0 * p[:, 1], 0.5 * (1.0 - p[:, 2])], axis=1)
    n_cap = np.zeros_like(p)
    n_cap[:, 2] = -1.0
    return t, np.where(side[:, None], n_side, n_cap)


def _torus(o, d, big_r=0.75, small_r=0.3, steps=40):
    # Sphere tracing from the bounding sphere's entry point.
    bound = big_r + small_r + 1e-3
    b = np.einsum("mi,mi->m", o, d)
    c = np.einsum("mi,mi->m", o, o) - bound * bound
    sq = np.sqrt(np.maximum(b * b - c, 0.0))
    t = np.maximum(-b - sq, 0.0)
    t_exit = -b + sq
    dist = np.full_like(t, 1.0)
    for _ in range(steps):
        p = o + t[:, None] * d
        q = np.sqrt(p[:, 0] ** 2 + p[:, 1] ** 2) - big_r
        dist = np.sqrt(q * q + p[:, 2] ** 2) - small_r
        t = t + dist
    hit = (np.abs(dist) < 2e-3) & (t < t_exit)
    p = o + t[:, None] * d
    ring = np.sqrt(p[:, 0] ** 2 + p[:, 1] ** 2)
    scale = big_r / np.maximum(ring, 1e-6)
    n = p - np.stack([p[:, 0] * scale, p[:, 1] * scale, np.zeros_like(ring)], axis=1)
    return np.where(hit, t, _INF), n


_INTERSECT = {"sphere": _sphere, "cube": _cube, "cylinder": _cylinder, "cone": _cone, "torus": _torus}


# ---------------------------------------------------------------------------------------------------------------


def _background(name: str, n: int, height: int, width: int) -> np.ndarray:
    top, bottom = (np.asarray(c, dtype=np.float32) for c in BACKGROUNDS[name])
    y = ((np.arange(height, dtype=np.float32) + 0.5) / height)[:, None]
    col = top[None, :] * (1.0 - y) + bottom[None, :] * y  # (H, 3)
    return np.broadcast_to(col[None, :, None, :], (n, height, width, 3))


def render_views(
    scenes: Scene | Sequence[Scene],
    cameras: Camera | Sequence[Camera],
    height: int,
    width: int,
    *,
    supersample: int = 1,
    background: str | None = None,
    geometry: bool = True,
) -> RenderOutput:
    """Render ``N`` views: ``scenes`` and ``cameras`` are single items or sequences of length ``N`` (broadcast).

    Views whose scenes have the same shapes in the same order (all views of one scene, all frames of a clip) are
    rendered in one vectorised pass; otherwise the views are rendered group by group.

    Args:
        scenes: scene(s).
        cameras: camera(s).
        height, width: output size in pixels (any aspect ratio).
        supersample: sub-samples per pixel side for anti-aliasing (1 = none).
        background: override of the scenes' background name.
        geometry: also compute position / normal / depth maps (``False`` leaves them ``None``; a bit faster).

    Returns:
        :class:`RenderOutput` with ``N`` views.
    """
    scenes = [scenes] if isinstance(scenes, Scene) else list(scenes)
    cameras = [cameras] if isinstance(cameras, Camera) else list(cameras)
    n = max(len(scenes), len(cameras))
    if len(scenes) not in (1, n) or len(cameras) not in (1, n):
        raise ValueError(f"scenes ({len(scenes)}) and cameras ({len(cameras)}) must have equal lengths or length 1")
    if height < 1 or width < 1:
        raise ValueError(f"height and width must be >= 1, got {height}x{width}")
    if supersample < 1:
        raise ValueError(f"supersample must be >= 1, got {supersample}")
    scenes = scenes * n if len(scenes) == 1 else scenes
    cameras = cameras * n if len(cameras) == 1 else cameras
    keys = [tuple(o.shape for o in s.objects) for s in scenes]
    if len(set(keys)) == 1:
        return _render_group(scenes, cameras, height, width, supersample, background, geometry)
    outs = [_render_group([s], [c], height, width, supersample, background, geometry) for s, c in zip(scenes, cameras)]
    return RenderOutput(
        *(
            None if getattr(outs[0], f) is None else np.concatenate([getattr(o, f) for o in outs])
            for f in RenderOutput.__dataclass_fields__
        )
    )


def _render_group(scenes, cameras, height, width, ss, background, geometry=True) -> RenderOutput:
    n = len(scenes)
    hs, ws = height * ss, width * ss
    p = hs * ws
    rays = [camera_rays(c, height, width, ss) for c in cameras]
    origins = np.stack([r[0].reshape(p, 3) for r in rays])  # (N, P, 3)
    dirs = np.stack([r[1].reshape(p, 3) for r in rays])
    best_t = np.full(n * p, _INF, dtype=np.float32)
    best_n = np.zeros((n * p, 3), dtype=np.float32)
    best_k = np.zeros(n * p, dtype=np.int64)
    num_obj = len(scenes[0].objects)
    albedo = np.array([[o.rgb for o in s.objects] for s in scenes], dtype=np.float32)  # (N, K, 3)
    for k in range(num_obj):
        objs = [s.objects[k] for s in scenes]
        rot = np.stack([o.rotation() for o in objs]).astype(np.float32)  # (N, 3, 3) local -> world
        cen = np.array([o.position for o in objs], dtype=np.float32)  # (N, 3)
        scl = np.array([o.scale for o in objs], dtype=np.float32)  # (N,)
        # Bounding-sphere test in world space, then the exact test in local coordinates on the rays left.
        rel = origins - cen[:, None, :]  # (N, P, 3)
        bound = _BOUND[objs[0].shape] * scl[:, None]
        b = (rel * dirs).sum(-1)
        c = (rel * rel).sum(-1) - bound * bound
        disc = b * b - c
        idx = np.nonzero(((disc > 0) & (-b + np.sqrt(np.maximum(disc, 0.0)) > 0)).reshape(-1))[0]
        if idx.size == 0:
            continue
        view = idx // p
        rot_v = rot[view]  # (M, 3, 3)
        o_l = np.matmul(rel.reshape(-1, 3)[idx, None, :], rot_v)[:, 0] / scl[view, None]
        d_l = np.matmul(dirs.reshape(-1, 3)[idx, None, :], rot_v)[:, 0]
        t_loc, n_loc = _INTERSECT[objs[0].shape](o_l, d_l)
        t_w = t_loc * scl[view]
        better = t_w < best_t[idx]
        if not better.any():
            continue
        idx, t_w, n_loc, rot_v = idx[better], t_w[better], n_loc[better], rot_v[better]
        n_w = np.matmul(rot_v, n_loc[:, :, None])[:, :, 0]
        n_w /= np.maximum(np.linalg.norm(n_w, axis=1, keepdims=True), 1e-12)
        best_t[idx] = t_w
        best_n[idx] = n_w
        best_k[idx] = k

    hit_flat = np.isfinite(best_t)
    hit = hit_flat.reshape(n, hs, ws)
    rgb = np.stack([_background(background or s.background, 1, hs, ws)[0] for s in scenes]).reshape(-1, 3)
    hi = np.nonzero(hit_flat)[0]
    nh = best_n[hi]
    key, fill = LIGHT_DIRECTIONS
    shade = _AMBIENT + _KEY_W * np.maximum(nh @ key, 0.0) + _FILL_W * np.maximum(nh @ fill, 0.0)
    rgb[hi] = np.minimum(albedo[hi // p, best_k[hi]] * shade[:, None], 1.0)
    rgb = rgb.reshape(n, hs, ws, 3)
    obj = np.where(hit_flat, best_k, -1).reshape(n, hs, ws)
    if geometry:
        t0 = np.where(hit_flat, best_t, 0.0).astype(np.float32)
        pos = (origins.reshape(-1, 3) + t0[:, None] * dirs.reshape(-1, 3)) * hit_flat[:, None]
        pos = pos.reshape(n, hs, ws, 3).astype(np.float32)
        nrm = best_n.reshape(n, hs, ws, 3)
        dep = t0.reshape(n, hs, ws)
    if ss == 1:
        if not geometry:
            return RenderOutput(rgb=rgb, mask=hit, position=None, normal=None, depth=None, object_index=obj)
        return RenderOutput(rgb=rgb, mask=hit, position=pos, normal=nrm, depth=dep, object_index=obj)

    def pool(x):  # sum over each ss x ss block
        total = x[:, 0::ss, 0::ss].copy()
        for a in range(ss):
            for b in range(ss):
                if a or b:
                    total += x[:, a::ss, b::ss]
        return total

    cover = pool(hit.astype(np.float32))
    mask = cover >= 0.5 * ss * ss
    rgb = (pool(rgb) * np.float32(1.0 / (ss * ss))).astype(np.float32)
    obj = np.ascontiguousarray(obj[:, ss // 2 :: ss, ss // 2 :: ss])
    if not geometry:
        return RenderOutput(rgb=rgb, mask=mask, position=None, normal=None, depth=None, object_index=obj)
    denom = np.maximum(cover, 1.0)
    pos = np.where(mask[..., None], pool(pos) / denom[..., None], 0.0).astype(np.float32)
    nrm = pool(nrm)
    nrm = np.where(mask[..., None], nrm / np.maximum(np.linalg.norm(nrm, axis=-1, keepdims=True), 1e-12), 0.0)
    dep = np.where(mask, pool(dep) / denom, 0.0).astype(np.float32)
    return RenderOutput(rgb=rgb, mask=mask, position=pos, normal=nrm.astype(np.float32), depth=dep, object_index=obj)


def render(
    scene: Scene,
    camera: Camera,
    height: int = 64,
    width: int | None = None,
    *,
    supersample: int = 1,
    background: str | None = None,
    geometry: bool = True,
) -> RenderOutput:
    """Render one view (``N = 1`` in the output). ``width`` defaults to ``height``."""
    w = width if width is not None else height
    return render_views(scene, camera, height, w, supersample=supersample, background=background, geometry=geometry)


def render_clip(
    scene: Scene,
    motion: Motion,
    camera: Camera,
    num_frames: int,
    height: int = 64,
    width: int | None = None,
    *,
    supersample: int = 1,
    background: str | None = None,
    geometry: bool = True,
) -> RenderOutput:
    """Render ``num_frames`` frames of ``scene`` animated by ``motion`` (``t = i / (num_frames - 1)``) seen by
    ``camera``; for ``orbit`` the camera (which must come from :meth:`Camera.orbit`) circles the scene instead."""
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    ts = [i / max(num_frames - 1, 1) for i in range(num_frames)]
    frames = [motion.scene_at(scene, t) for t in ts]
    if motion.kind == "orbit":
        if camera.azimuth_deg is None:
            raise ValueError("an orbit clip needs a camera built with Camera.orbit (azimuth/elevation/distance)")
        cams = [
            Camera.orbit(
                camera.azimuth_deg + motion.camera_azimuth_offset(t),
                camera.elevation_deg,
                camera.distance,
                fov_deg=camera.fov_deg,
                ortho_scale=camera.ortho_scale,
            )
            for t in ts
        ]
    else:
        cams = [camera]
    w = width if width is not None else height
    return render_views(frames, cams, height, w, supersample=supersample, background=background, geometry=geometry)
