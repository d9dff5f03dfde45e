"""A triangle rasteriser in plain torch (z-buffer, vectorised barycentrics), batched over views, CPU and GPU.

Conventions are those of :mod:`adapters.mv_adapter.camera`: OpenCV camera-to-world matrices, pixel ``(i, j)`` sampled
at its centre ``(j + 0.5, i + 0.5)``, row 0 at the top, ``ortho_scale`` the vertical extent of an orthographic view and
``fov_deg`` the vertical field of view. These give the same images as the official nvdiffrast renders (clip-space
``y`` flipped so that row 0 is the top, samples at pixel centres, no anti-aliasing).

How it works: every (view, face) pair enumerates the pixel centres inside its screen bounding box; barycentrics are
affine functions of the pixel offset (three planes evaluated with two multiply-adds each); covered samples write
``(depth bits << 32) | face`` into an int64 z-buffer with ``scatter_reduce(amin)``, so the nearest face wins (ties go
to the lower face index). Samples are processed in chunks of ``chunk_samples``, so memory stays bounded whatever the
triangle sizes. Barycentrics of the winning face are then recomputed once per pixel, perspective-corrected. No
back-face culling (as nvdiffrast); faces with a vertex closer than ``near`` (perspective) are dropped, not clipped.

When nvdiffrast is installed and the tensors are on CUDA, ``backend="auto"`` uses it instead (same outputs).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..camera import Cameras

__all__ = [
    "Rasterization",
    "interpolate",
    "nvdiffrast_available",
    "project_points",
    "rasterize",
    "rasterize_screen",
]

_INSIDE_EPS = 1e-6  # barycentric slack: samples exactly on a shared edge are covered by both faces (no cracks)
_NO_HIT = torch.iinfo(torch.int64).max
BACKENDS = ("auto", "torch", "nvdiffrast")


@dataclass
class Rasterization:
    """Per-pixel rasteriser output of ``V`` views.

    Attributes:
        face_id: ``(V, H, W)`` int64 index of the visible face, ``-1`` on the background.
        bary: ``(V, H, W, 3)`` float32 barycentrics of the visible point w.r.t. the face's vertices 0, 1, 2
            (perspective-correct, sum to 1; 0 on the background).
        depth: ``(V, H, W)`` float32 depth along the camera's viewing axis (camera-space ``z``), 0 on the background.
    """

    face_id: torch.Tensor
    bary: torch.Tensor
    depth: torch.Tensor

    @property
    def mask(self) -> torch.Tensor:
        """``(V, H, W)`` bool visibility mask (a face covers the pixel centre)."""
        return self.face_id >= 0


def nvdiffrast_available() -> bool:
    """Whether ``nvdiffrast.torch`` imports and a CUDA device is present."""
    if not torch.cuda.is_available():
        return False
    try:
        import nvdiffrast.torch  # noqa: F401
    except ImportError:
        return False
    return True


def project_points(
    points: torch.Tensor, cameras: Cameras, height: int, width: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Project world points into every view.

    Args:
        points: ``(N, 3)`` world points (any float dtype and device).
        cameras: ``V`` cameras.
        height, width: image size in pixels.

    Returns:
        ``xy, depth``: ``(V, N, 2)`` float64 pixel coordinates (pixel ``(i, j)`` centred at ``(j + 0.5, i + 0.5)``)
        and ``(V, N)`` float64 camera-space depth (positive in front of the camera).
    """
    device = points.device
    c2w = cameras.c2w.to(device)
    rot, pos = c2w[:, :3, :3], c2w[:, :3, 3]
    cam = torch.einsum("nc,vcd->vnd", points.double(), rot) - torch.einsum("vc,vcd->vd", pos, rot)[:, None]
    z = cam[..., 2]
    if cameras.orthographic:
        ppu = (height / cameras.ortho_scale.to(device)).view(-1, 1)  # pixels per world unit
        x, y = cam[..., 0] * ppu, cam[..., 1] * ppu
    else:
        f = ((height / 2.0) / torch.tan(torch.deg2rad(cameras.fov_deg.to(device)) / 2.0)).view(-1, 1)
        zs = torch.where(z.abs() > 1e-12, z, torch.full_like(z, 1e-12))
        x, y = cam[..., 0] * f / zs, cam[..., 1] * f / zs
    return torch.stack([x + width / 2.0, y + height / 2.0], dim=-1), z


def _ordered_bits(depth: torch.Tensor) -> torch.Tensor:
    """float32 -> int64 in ``[0, 2^32)`` with the same order (also for negative values)."""
    bits = depth.contiguous().view(torch.int32)
    bits = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    return bits.to(torch.int64) + 2**31


def _face_setup(tri_xy: torch.Tensor, tri_z: torch.Tensor, perspective: bool, height: int, width: int):
    """Per (view, face): bounding box in pixel indices and the barycentric / depth planes at the box's first pixel.

    Returns ``coef (V, F, 9)`` float32 ``[A0, B0, C0, A1, B1, C1, DA, DB, DC]`` (``b_k = A_k dj + B_k di + C_k``, depth
    or inverse depth ``= DA dj + DB di + DC``), ``i0, j0, bh, bw`` ``(V, F)`` int64 (``bw, bh`` 0 when culled).
    """
    x, y = tri_xy[..., 0], tri_xy[..., 1]  # (V, F, 3)
    j0 = torch.ceil(x.amin(-1) - 0.5).clamp(min=0)
    j1 = torch.floor(x.amax(-1) - 0.5).clamp(max=width - 1)
    i0 = torch.ceil(y.amin(-1) - 0.5).clamp(min=0)
    i1 = torch.floor(y.amax(-1) - 0.5).clamp(max=height - 1)
    x0, x1, x2 = x.unbind(-1)
    y0, y1, y2 = y.unbind(-1)
    area2 = (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)
    ok = torch.isfinite(area2) & (area2.abs() > 1e-12) & torch.isfinite(tri_z).all(-1)
    inv = torch.where(ok, 1.0 / torch.where(ok, area2, torch.ones_like(area2)), torch.zeros_like(area2))
    xo, yo = j0 + 0.5, i0 + 0.5
    # edge k is opposite vertex k: (1, 2), (2, 0), (0, 1); b_k(x, y) = (a x + c y + d) / area2
    planes = []
    for (xa, ya), (xb, yb) in (((x1, y1), (x2, y2)), ((x2, y2), (x0, y0)), ((x0, y0), (x1, y1))):
        a, c = (ya - yb) * inv, (xb - xa) * inv
        d = (xa * yb - xb * ya) * inv
        planes.append((a, c, a * xo + c * yo + d))
    zq = 1.0 / tri_z if perspective else tri_z
    zq = torch.where(ok[..., None], zq, torch.zeros_like(zq))
    depth_plane = tuple(sum(p[m] * zq[..., k] for k, p in enumerate(planes)) for m in range(3))
    coef = torch.stack([*planes[0], *planes[1], *depth_plane], dim=-1).float()
    bw = torch.where(ok, (j1 - j0 + 1).clamp(min=0), torch.zeros_like(j0)).long()
    bh = torch.where(ok, (i1 - i0 + 1).clamp(min=0), torch.zeros_like(i0)).long()
    return coef, i0.long(), j0.long(), bh, bw


_STAMPS = (2, 4, 8, 16)


@dataclass
class _Pairs:
    """(view, face) pairs to rasterise: planes ``coef (P, 9)``, box ``bw, bh``, ``face`` id, ``base`` flat pixel."""

    coef: torch.Tensor
    bw: torch.Tensor
    bh: torch.Tensor
    face: torch.Tensor
    base: torch.Tensor

    def take(self, idx: torch.Tensor) -> _Pairs:
        return _Pairs(self.coef[idx], self.bw[idx], self.bh[idx], self.face[idx], self.base[idx])


def _write(zbuf, pix, b0, b1, zq, face, inside, perspective, depth_range) -> None:
    """Depth-test samples into the z-buffer: ``key = (depth bits << 32) | face``, minimum wins."""
    z = 1.0 / zq if perspective else zq
    valid = inside & (b0 >= -_INSIDE_EPS) & (b1 >= -_INSIDE_EPS) & (b0 + b1 <= 1.0 + _INSIDE_EPS)
    valid &= (z > depth_range[0]) & (z < depth_range[1])
    key = (_ordered_bits(z) << 32) | face
    key = torch.where(valid, key, torch.full_like(key, _NO_HIT))
    zbuf.scatter_reduce_(0, pix.reshape(-1), key.reshape(-1), reduce="amin", include_self=True)


def _stamp_pass(zbuf, p: _Pairs, stamp: int, width: int, perspective: bool, depth_range) -> None:
    """Pairs whose box fits in ``stamp x stamp`` pixels: every pair tests the same ``stamp**2`` offsets."""
    if len(p.face) == 0:
        return
    device = zbuf.device
    r = torch.arange(stamp, device=device)
    di = r.repeat_interleave(stamp).float()[None]  # (1, s*s)
    dj = r.repeat(stamp).float()[None]
    c = p.coef.T[:, :, None]  # (9, P, 1)
    b0 = c[0] * dj + c[1] * di + c[2]
    b1 = c[3] * dj + c[4] * di + c[5]
    zq = c[6] * dj + c[7] * di + c[8]
    inside = (dj < p.bw[:, None]) & (di < p.bh[:, None])
    pix = p.base[:, None] + (di.long() * width + dj.long())
    pix = torch.where(inside, pix, p.base[:, None])  # out-of-box offsets may leave the image; they never win
    _write(zbuf, pix, b0, b1, zq, p.face[:, None], inside, perspective, depth_range)


def _enumerate_pass(zbuf, p: _Pairs, width, height, perspective, depth_range, chunk_samples) -> None:
    """Pairs with large boxes: every pixel of every box enumerated, in chunks of ``chunk_samples`` samples."""
    if len(p.face) == 0:
        return
    device = zbuf.device
    counts = p.bw * p.bh
    ends = torch.cumsum(counts, 0)
    starts = ends - counts
    total = int(ends[-1])
    kdtype = torch.float32 if height * width < 2**23 else torch.float64  # exact box offsets
    for s0 in range(0, total, chunk_samples):
        s1 = min(s0 + chunk_samples, total)
        p_lo = int(torch.searchsorted(ends, torch.tensor(s0, device=device), right=True))
        p_hi = int(torch.searchsorted(ends, torch.tensor(s1 - 1, device=device), right=True)) + 1
        clipped = ends[p_lo:p_hi].clamp(max=s1) - starts[p_lo:p_hi].clamp(min=s0)
        local = torch.repeat_interleave(torch.arange(p_hi - p_lo, device=device), clipped)
        k = (torch.arange(s0, s1, device=device) - starts[p_lo:p_hi][local]).to(kdtype)
        bwf = p.bw[p_lo:p_hi].to(kdtype)[local]
        di = torch.floor((k + 0.5) / bwf)
        dj = k - di * bwf
        c = p.coef[p_lo:p_hi][local].T
        b0 = c[0] * dj + c[1] * di + c[2]
        b1 = c[3] * dj + c[4] * di + c[5]
        zq = c[6] * dj + c[7] * di + c[8]
        pix = p.base[p_lo:p_hi][local] + di.long() * width + dj.long()
        _write(zbuf, pix, b0, b1, zq, p.face[p_lo:p_hi][local], True, perspective, depth_range)


def rasterize_screen(
    xy: torch.Tensor,
    depth: torch.Tensor,
    faces: torch.Tensor,
    height: int,
    width: int,
    *,
    perspective: bool = False,
    near: float | None = None,
    far: float | None = None,
    chunk_samples: int = 1 << 20,
) -> Rasterization:
    """Rasterise triangles given in screen space (pixel coordinates), one batch entry per view.

    Args:
        xy: ``(V, N, 2)`` vertex pixel coordinates (pixel ``(i, j)`` centred at ``(j + 0.5, i + 0.5)``).
        depth: ``(V, N)`` vertex depths (camera-space ``z``; any constant for a flat UV-space pass).
        faces: ``(F, 3)`` vertex indices.
        height, width: output size.
        perspective: interpolate depth and barycentrics perspective-correctly (``1 / z`` is affine on screen).
        near, far: keep samples with ``near < depth < far`` (``None``: no bound); with ``perspective``, faces with a
            vertex at ``depth <= near`` are dropped.
        chunk_samples: candidate samples per chunk (bounds memory to about 100 bytes each).
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"`height` and `width` must be positive, got {height}x{width}.")
    if chunk_samples < 1:
        raise ValueError(f"`chunk_samples` must be >= 1, got {chunk_samples}.")
    device = xy.device
    faces = faces.to(device=device, dtype=torch.long)
    num_views, num_faces = xy.shape[0], faces.shape[0]
    tri_xy = xy.double()[:, faces]  # (V, F, 3, 2)
    tri_z = depth.double()[:, faces]  # (V, F, 3)
    if perspective:
        bad = (tri_z <= (0.0 if near is None else near)).any(-1)
        tri_z = torch.where(bad[..., None], torch.full_like(tri_z, float("nan")), tri_z)
    coef, i0, j0, bh, bw = _face_setup(tri_xy, tri_z, perspective, height, width)

    flat_bw, flat_bh = bw.reshape(-1), bh.reshape(-1)
    pair = torch.nonzero(flat_bw * flat_bh > 0).squeeze(-1)  # flat (view, face) pairs with candidate pixels
    view_p = pair // max(num_faces, 1)
    pairs = _Pairs(
        coef=coef.reshape(-1, 9)[pair],
        bw=flat_bw[pair],
        bh=flat_bh[pair],
        face=pair - view_p * num_faces,
        base=view_p * (height * width) + i0.reshape(-1)[pair] * width + j0.reshape(-1)[pair],
    )
    zbuf = torch.full((num_views * height * width,), _NO_HIT, dtype=torch.int64, device=device)
    depth_range = (-float("inf") if near is None else near, float("inf") if far is None else far)
    # small boxes (the bulk of a dense mesh) as fixed s x s stamps evaluated by broadcasting; large ones enumerated
    size = torch.maximum(pairs.bw, pairs.bh)
    lower = 0
    for stamp in _STAMPS:
        sel = torch.nonzero((size > lower) & (size <= stamp)).squeeze(-1)
        step = max(1, chunk_samples // (stamp * stamp))
        for c0 in range(0, len(sel), step):
            _stamp_pass(zbuf, pairs.take(sel[c0 : c0 + step]), stamp, width, perspective, depth_range)
        lower = stamp
    big = pairs.take(torch.nonzero(size > lower).squeeze(-1))
    _enumerate_pass(zbuf, big, width, height, perspective, depth_range, chunk_samples)

    hit = zbuf != _NO_HIT
    face_id = torch.where(hit, zbuf & 0xFFFFFFFF, torch.full_like(zbuf, -1)).view(num_views, height, width)
    bary, z = _resolve(xy, depth, faces, face_id, perspective)
    return Rasterization(face_id=face_id, bary=bary, depth=z)


def _resolve(xy, depth, faces, face_id, perspective):
    """Barycentrics and depth of the visible face at every covered pixel centre (exact, clamped into the face)."""
    num_views, height, width = face_id.shape
    device = face_id.device
    bary = torch.zeros(num_views * height * width, 3, dtype=torch.float32, device=device)
    z = torch.zeros(num_views * height * width, dtype=torch.float32, device=device)
    flat = face_id.reshape(-1)
    idx = torch.nonzero(flat >= 0).squeeze(-1)
    if len(idx) > 0:
        v = idx // (height * width)
        rem = idx - v * (height * width)
        i = rem // width
        j = rem - i * width
        vid = faces[flat[idx]]  # (P, 3)
        gidx = (v[:, None] * xy.shape[1] + vid).reshape(-1)
        packed = torch.cat([xy, depth[..., None]], dim=-1).float().reshape(-1, 3)[gidx].view(-1, 3, 3)
        centre = torch.stack([j, i], dim=-1).float() + 0.5
        d = packed[..., :2] - centre[:, None]  # vertices relative to the pixel centre
        x0, x1, x2 = d[..., 0].unbind(-1)
        y0, y1, y2 = d[..., 1].unbind(-1)
        # twice the signed areas of the sub-triangles opposite each vertex
        e = torch.stack([x1 * y2 - x2 * y1, x2 * y0 - x0 * y2, x0 * y1 - x1 * y0], dim=-1)
        b = (e / e.sum(-1, keepdim=True)).clamp_(min=0.0)
        b = b / b.sum(-1, keepdim=True).clamp_min(1e-30)
        vz = packed[..., 2]
        if perspective:
            w = b / vz
            zz = 1.0 / w.sum(-1)
            b = w * zz[:, None]
        else:
            zz = (b * vz).sum(-1)
        bary[idx] = b
        z[idx] = zz
    return bary.view(num_views, height, width, 3), z.view(num_views, height, width)


def rasterize(
    vertices: torch.Tensor,
    faces: torch.Tensor,
    cameras: Cameras,
    height: int,
    width: int | None = None,
    *,
    backend: str = "auto",
    near: float = 0.1,
    far: float = 100.0,
    chunk_samples: int = 1 << 20,
) -> Rasterization:
    """Rasterise a mesh seen by ``V`` cameras.

    Args:
        vertices: ``(N, 3)`` world positions; the outputs live on their device.
        faces: ``(F, 3)`` vertex indices.
        cameras: ``V`` cameras (orthographic or perspective, all of one kind).
        height, width: image size (``width`` defaults to ``height``).
        backend: ``"torch"``, ``"nvdiffrast"`` (needs it installed and CUDA tensors) or ``"auto"`` (nvdiffrast when
            available on CUDA tensors, else torch).
        near, far: the depth range kept (the official cameras use 0.1 and 100).
        chunk_samples: see :func:`rasterize_screen`.
    """
    width = height if width is None else width
    if backend not in BACKENDS:
        raise ValueError(f"`backend` must be one of {BACKENDS}, got {backend!r}.")
    if vertices.ndim != 2 or vertices.shape[-1] != 3:
        raise ValueError(f"`vertices` must have shape (N, 3), got {tuple(vertices.shape)}.")
    use_nv = backend == "nvdiffrast" or (backend == "auto" and vertices.is_cuda and nvdiffrast_available())
    if use_nv:
        if not vertices.is_cuda:
            raise ValueError("`backend='nvdiffrast'` needs CUDA tensors; move the mesh to a GPU or use 'torch'.")
        return _rasterize_nvdiffrast(vertices, faces, cameras, height, width, near, far)
    xy, depth = project_points(vertices, cameras, height, width)
    return rasterize_screen(
        xy,
        depth,
        faces,
        height,
        width,
        perspective=not cameras.orthographic,
        near=near,
        far=far,
        chunk_samples=chunk_samples,
    )


_NV_CONTEXTS: dict = {}


def _rasterize_nvdiffrast(vertices, faces, cameras, height, width, near, far) -> Rasterization:
    import nvdiffrast.torch as dr

    device = vertices.device
    key = str(device)
    if key not in _NV_CONTEXTS:
        _NV_CONTEXTS[key] = dr.RasterizeCudaContext(device=device)
    c2w = cameras.c2w.to(device)
    rot, pos = c2w[:, :3, :3], c2w[:, :3, 3]
    cam = torch.einsum("nc,vcd->vnd", vertices.double(), rot) - torch.einsum("vc,vcd->vd", pos, rot)[:, None]
    x, y, z = cam.unbind(-1)
    aspect = width / height
    if cameras.orthographic:
        half_h = (cameras.ortho_scale.to(device) / 2.0).view(-1, 1)
        clip = torch.stack(
            [x / (half_h * aspect), y / half_h, 2.0 * (z - near) / (far - near) - 1.0, torch.ones_like(z)], dim=-1
        )
    else:
        t = torch.tan(torch.deg2rad(cameras.fov_deg.to(device)) / 2.0).view(-1, 1)
        clip = torch.stack(
            [x / (t * aspect), y / t, (far + near) / (far - near) * z - 2.0 * far * near / (far - near), z], dim=-1
        )
    faces32 = faces.to(device=device, dtype=torch.int32).contiguous()
    rast, _ = dr.rasterize(_NV_CONTEXTS[key], clip.float().contiguous(), faces32, (height, width))
    face_id = rast[..., 3].long() - 1
    hit = face_id >= 0
    u, v = rast[..., 0], rast[..., 1]
    bary = torch.where(hit[..., None], torch.stack([u, v, 1.0 - u - v], dim=-1), torch.zeros_like(rast[..., :3]))
    depth, _ = dr.interpolate(z.float().unsqueeze(-1).contiguous(), rast, faces32)
    return Rasterization(face_id=face_id, bary=bary.float(), depth=torch.where(hit, depth[..., 0], 0.0))


def interpolate(attr: torch.Tensor, rast: Rasterization, faces: torch.Tensor) -> torch.Tensor:
    """Interpolate per-vertex attributes at every pixel.

    Args:
        attr: ``(N, C)`` (shared by all views) or ``(V, N, C)`` vertex attributes.
        rast: a :class:`Rasterization` of ``V`` views.
        faces: ``(F, 3)`` the faces that were rasterised.

    Returns:
        ``(V, H, W, C)`` float32, 0 on the background (as ``nvdiffrast.interpolate``).
    """
    face_id = rast.face_id
    device = face_id.device
    faces = faces.to(device=device, dtype=torch.long)
    attr = attr.to(device)
    out = torch.zeros(*face_id.shape, attr.shape[-1], dtype=torch.float32, device=device)
    v, i, j = torch.nonzero(face_id >= 0, as_tuple=True)
    if len(v) == 0:
        return out
    vid = faces[face_id[v, i, j]]  # (P, 3)
    vals = attr[vid] if attr.ndim == 2 else attr[v[:, None], vid]  # (P, 3, C)
    out[v, i, j] = (rast.bary[v, i, j][..., None] * vals.float()).sum(1)
    return out
