"""The procedural mini-world: scenes of coloured primitives, an analytic ray-casting renderer, and the datasets the
embedded models are trained on.

Quick start::

    from training.miniworld import Scene, Camera, render, TextImageDataset

    scene = Scene.random(0)                       # seeded; scene.caption() -> "a red cube beside a small blue sphere"
    cam = Camera.orbit(azimuth_deg=30, elevation_deg=20, distance=2.0, fov_deg=35)
    out = render(scene, cam, 64, 96)              # out.rgb (1, 64, 96, 3) in [0, 1]; out.position / normal / mask

Modules: :mod:`.camera` (conventions: z-up world, OpenCV camera-to-world), :mod:`.scene` (scenes, captions, motions),
:mod:`.render` (the renderer), :mod:`.datasets` (torch datasets), :mod:`.export` (``python -m
training.miniworld.export``: datasets on disk in the user-data formats, and the example inputs in
``assets/examples``), :mod:`.classifier` (the evaluation's attribute classifier; not imported here, it pulls in
diffusers' logging).
"""

from .camera import (
    Camera,
    camera_position,
    camera_rays,
    intrinsics_matrix,
    look_at_camera,
    opencv_to_opengl,
    opengl_to_opencv,
    ring_cameras,
)
from .datasets import CAMERA_MODES, MultiViewDataset, TextImageDataset, VideoDataset, resolve_sizes
from .render import RenderOutput, render, render_clip, render_views
from .scene import BACKGROUNDS, COLORS, FLOOR_Z, MOTIONS, SHAPES, SIZES, Motion, ObjectSpec, Scene, parse_caption

__all__ = [
    "BACKGROUNDS",
    "CAMERA_MODES",
    "COLORS",
    "FLOOR_Z",
    "MOTIONS",
    "SHAPES",
    "SIZES",
    "Camera",
    "Motion",
    "MultiViewDataset",
    "ObjectSpec",
    "RenderOutput",
    "Scene",
    "TextImageDataset",
    "VideoDataset",
    "camera_position",
    "camera_rays",
    "intrinsics_matrix",
    "look_at_camera",
    "opencv_to_opengl",
    "opengl_to_opencv",
    "parse_caption",
    "render",
    "render_clip",
    "render_views",
    "resolve_sizes",
    "ring_cameras",
]
