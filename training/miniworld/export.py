"""Write a mini-world dataset to disk in the user-data formats the training scripts read.

Usage::

    python -m training.miniworld.export --kind images --num 1000 --out data/images [--resolution 64 | 48x96 ...]
    python -m training.miniworld.export --kind multiview --num 200 --out data/mv --num-views 6 --camera-mode ortho_ring
    python -m training.miniworld.export --kind video --num 200 --out data/video --num-frames 8
    python -m training.miniworld.export --kind examples --out assets/examples     # the shipped example inputs

Item ``i`` of an export is item ``i`` of the matching dataset (same ``--seed``), so exports are reproducible.

Formats
-------
``images`` (text-to-image; Hugging Face "imagefolder" layout)::

    OUT/metadata.jsonl        one JSON object per line: {"file_name": "00000.png", "text": "a red cube"}
    OUT/00000.png             RGB, 8-bit; sizes may differ between files when several resolutions are given

``multiview`` (one folder per object)::

    OUT/metadata.jsonl        {"file_name": "obj_0000", "text": "...", "num_views": 6}   (one line per object)
    OUT/obj_0000/caption.txt  the caption, one line
    OUT/obj_0000/view_00.png  RGB view 0 (8-bit) ... view_{V-1:02d}.png
    OUT/obj_0000/position_00.png  RGBA 8-bit: RGB = clip(world_xyz + 0.5, 0, 1) * 255, A = object mask * 255;
                              background pixels store xyz = 0 (RGB 128), as MV-Adapter's official geometry maps
    OUT/obj_0000/normal_00.png    RGBA 8-bit: RGB = (world_normal / 2 + 0.5) * 255, A = mask; background normal 0
    OUT/obj_0000/cameras.json {"convention": "opencv", "world_up": "+z", "projection": "orthographic"|"perspective",
                               "height": H, "width": W,
                               "frames": [{"file_name": "view_00.png", "c2w": 4x4 list (rows),
                                           "azimuth_deg": a, "elevation_deg": e, "distance": d,
                                           "fov_deg": vertical FOV or null, "ortho_scale": s or null}, ...]}

  Camera conventions (see :mod:`training.miniworld.camera`): world z up; camera at
  ``d * (cos e cos a, cos e sin a, sin e)`` looking at the origin; ``c2w`` columns are the camera's x (right),
  y (down), z (forward) axes and its centre (OpenCV); ``fov_deg`` is vertical; ``ortho_scale`` is the vertical
  extent of an orthographic view in world units (MV-Adapter's default box [-0.55, 0.55] is 1.1).

``video`` (a folder of frame folders)::

    OUT/metadata.jsonl        {"file_name": "clip_0000", "text": "a red cube, bouncing", "num_frames": 8,
                               "motion": "bounce", "scene_text": "a red cube"}
    OUT/clip_0000/frame_00.png ... frame_{F-1:02d}.png   RGB 8-bit frames in order
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
from diffusers.utils import logging
from PIL import Image

from .camera import Camera, ring_cameras
from .datasets import CAMERA_MODES, MultiViewDataset, TextImageDataset, VideoDataset
from .render import RenderOutput, render, render_clip, render_views
from .scene import FLOOR_Z, MOTIONS, SIZES, ObjectSpec, Scene

logger = logging.get_logger(__name__)

__all__ = [
    "export_images",
    "export_multiview",
    "export_video",
    "export_examples",
    "example_mesh_scene",
    "texture_reference",
    "write_multiview_object",
    "main",
    "encode_position",
    "encode_normal",
]


def _u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


def encode_position(position: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """World positions ``(H, W, 3)`` + mask ``(H, W)`` -> RGBA uint8 ``(H, W, 4)`` (``xyz + 0.5``; alpha = mask)."""
    rgb = _u8(np.clip(position + 0.5, 0.0, 1.0))
    return np.concatenate([rgb, (mask.astype(np.uint8) * 255)[..., None]], axis=-1)


def encode_normal(normal: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """World normals ``(H, W, 3)`` + mask ``(H, W)`` -> RGBA uint8 ``(H, W, 4)`` (``n / 2 + 0.5``; alpha = mask)."""
    rgb = _u8(np.clip(normal / 2.0 + 0.5, 0.0, 1.0))
    return np.concatenate([rgb, (mask.astype(np.uint8) * 255)[..., None]], axis=-1)


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    tmp = path.with_suffix(".jsonl.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    os.replace(tmp, path)


def export_images(out: str | os.PathLike, num: int, dataset: TextImageDataset) -> Path:
    """Write ``num`` text-image pairs of ``dataset`` to ``out`` (imagefolder layout, see the module docstring)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(num):
        scene, cam, (h, w) = dataset.sample(i)
        img = render(scene, cam, h, w, supersample=dataset.supersample, geometry=False).uint8()[0]
        name = f"{i:05d}.png"
        Image.fromarray(img).save(out / name)
        rows.append({"file_name": name, "text": scene.caption()})
    _write_jsonl(out / "metadata.jsonl", rows)
    return out


def _camera_entry(name: str, cam: Camera) -> dict:
    d = cam.to_dict()
    return {
        "file_name": name,
        "c2w": d["c2w"],
        "azimuth_deg": d["azimuth_deg"],
        "elevation_deg": d["elevation_deg"],
        "distance": d["distance"],
        "fov_deg": d["fov_deg"],
        "ortho_scale": d["ortho_scale"],
    }


def write_multiview_object(folder: Path, caption: str, cams: Sequence[Camera], out: RenderOutput) -> None:
    """Write one object folder of the multi-view format from rendered views."""
    folder.mkdir(parents=True, exist_ok=True)
    rgb = out.uint8()
    frames = []
    for v, cam in enumerate(cams):
        Image.fromarray(rgb[v]).save(folder / f"view_{v:02d}.png")
        Image.fromarray(encode_position(out.position[v], out.mask[v]), mode="RGBA").save(
            folder / f"position_{v:02d}.png"
        )
        Image.fromarray(encode_normal(out.normal[v], out.mask[v]), mode="RGBA").save(folder / f"normal_{v:02d}.png")
        frames.append(_camera_entry(f"view_{v:02d}.png", cam))
    meta = {
        "convention": "opencv",
        "world_up": "+z",
        "projection": "orthographic" if cams[0].orthographic else "perspective",
        "height": int(rgb.shape[1]),
        "width": int(rgb.shape[2]),
        "frames": frames,
    }
    (folder / "cameras.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
    (folder / "caption.txt").write_text(caption + "\n", encoding="utf-8")


def export_multiview(out: str | os.PathLike, num: int, dataset: MultiViewDataset) -> Path:
    """Write ``num`` objects of ``dataset`` to ``out`` (a folder per object, see the module docstring)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(num):
        scene, cams = dataset.sample(i)
        rendered = render_views(scene, cams, dataset.height, dataset.width, supersample=dataset.supersample)
        name = f"obj_{i:04d}"
        write_multiview_object(out / name, scene.caption(), cams, rendered)
        rows.append({"file_name": name, "text": scene.caption(), "num_views": len(cams)})
    _write_jsonl(out / "metadata.jsonl", rows)
    return out


def export_video(out: str | os.PathLike, num: int, dataset: VideoDataset) -> Path:
    """Write ``num`` clips of ``dataset`` to ``out`` (frame folders + metadata.jsonl, see the module docstring)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(num):
        scene, motion, cam = dataset.sample(i)
        frames = render_clip(
            scene,
            motion,
            cam,
            dataset.num_frames,
            dataset.height,
            dataset.width,
            supersample=dataset.supersample,
            geometry=False,
        ).uint8()
        name = f"clip_{i:04d}"
        (out / name).mkdir(exist_ok=True)
        for f, frame in enumerate(frames):
            Image.fromarray(frame).save(out / name / f"frame_{f:02d}.png")
        text = scene.caption()
        rows.append(
            {
                "file_name": name,
                "text": f"{text}, {motion.word}" if dataset.caption_motion else text,
                "num_frames": int(frames.shape[0]),
                "motion": motion.kind,
                "scene_text": text,
            }
        )
    _write_jsonl(out / "metadata.jsonl", rows)
    return out


def _example_scenes() -> dict[str, Scene]:
    z = FLOOR_Z
    cube = ObjectSpec("cube", "red", "medium", (0.0, 0.0, z + 0.8 * SIZES["medium"]), yaw_deg=30.0)
    sphere = ObjectSpec("sphere", "blue", "medium", (-0.2, 0.12, z + SIZES["medium"]))
    cone = ObjectSpec("cone", "yellow", "small", (0.2, -0.12, z + SIZES["small"]))
    torus = ObjectSpec("torus", "green", "large", (0.0, 0.0, 0.0), yaw_deg=20.0, tilt_deg=45.0)
    torus = replace(torus, position=(0.0, 0.0, z + torus.half_height()))
    return {
        "red_cube": Scene((cube,), "gray"),
        "blue_sphere_yellow_cone": Scene((sphere, cone), "sky"),
        "green_torus": Scene((torus,), "white"),
    }


#: Side of the texture examples' reference images: the geometry adapter's training size (recipe ``mv_geometry`` of
#: ``training/reproduce.py``, ``--resolution 32``).
TEXTURE_REFERENCE_SIZE = 32
#: Their background: one of the trainer's scene backgrounds (``training/miniworld/scene.py``), the neutral gray the
#: official scripts also put behind a reference.
TEXTURE_REFERENCE_BACKGROUND = "gray"


def example_mesh_scene(name: str) -> Scene:
    """The mini-world scene of example mesh ``name`` (``pipelines.texture.EXAMPLE_MESHES``, e.g. ``"red_cube"``), in
    the official unit box: the same primitive at the origin (the torus tilted as the mesh is), coloured as its name
    says, on :data:`TEXTURE_REFERENCE_BACKGROUND`, scaled as ``load_mesh`` scales the mesh (``Scene.normalized``)."""
    from pipelines.texture import _TORUS_TILT_DEG, EXAMPLE_MESHES

    if name not in EXAMPLE_MESHES:
        raise ValueError(f"`name` must be one of {sorted(EXAMPLE_MESHES)}, got {name!r}.")
    shape, _ = EXAMPLE_MESHES[name]
    color = name.split("_")[0]
    tilt = _TORUS_TILT_DEG if shape == "torus" else 0.0
    obj = ObjectSpec(shape, color, "medium", (0.0, 0.0, 0.0), tilt_deg=tilt)
    return Scene((obj,), TEXTURE_REFERENCE_BACKGROUND).normalized()


def texture_reference(name: str) -> Image.Image:
    """The reference image of example mesh ``name`` for image-guided texturing, rendered as the geometry adapter's
    trainer renders a reference view: the front view (first camera of ``MultiViewDataset``'s ``"mvadapter"`` ring:
    orthographic, azimuth -90, elevation 0) of the scene in the unit box (``normalize=True``), at the dataset's
    supersampling, ``TEXTURE_REFERENCE_SIZE`` pixels square (RGB)."""
    ds = MultiViewDataset(6, "mvadapter", TEXTURE_REFERENCE_SIZE, normalize=True, background=None)
    front = ds.cameras_for(np.random.default_rng(0))[0]
    out = render_views(example_mesh_scene(name), [front], ds.height, ds.width, supersample=ds.supersample)
    return Image.fromarray(out.uint8()[0])


def export_examples(out: str | os.PathLike, resolution: int = 64) -> Path:
    """Write the example inputs shipped in ``assets/examples`` (see ``examples.json`` there):

    * ``<name>.png``: a view like the text-to-image data (image-to-video / image-to-multi-view inputs);
    * ``<name>_front.png``: MV-Adapter's front view (orthographic, azimuth -90, elevation 0, white background);
    * ``green_torus_mv/``: a multi-view object folder (6 orthographic ring views with geometry maps) for the
      geometry-guided mode;
    * the texture tab's example meshes ``<mesh>.glb`` (``pipelines.texture.write_example_meshes``) and their
      reference images ``<mesh>_texture_ref.png`` (:func:`texture_reference`; ``TEXTURE_REFERENCE_SIZE`` pixels
      whatever ``resolution``).
    """
    from pipelines.texture import EXAMPLE_MESHES, TEXTURE_REFERENCE, write_example_meshes

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    entries = []
    cam = Camera.orbit(-60.0, 25.0, 2.0, fov_deg=35.0)
    front = Camera.orbit(-90.0, 0.0, 1.8, fov_deg=None, ortho_scale=1.1)
    for name, scene in _example_scenes().items():
        Image.fromarray(render(scene, cam, resolution, supersample=4, geometry=False).uint8()[0]).save(
            out / f"{name}.png"
        )
        white = scene.with_background("white")
        Image.fromarray(render(white, front, resolution, supersample=4, geometry=False).uint8()[0]).save(
            out / f"{name}_front.png"
        )
        entries.append(
            {
                "name": name,
                "caption": scene.caption(),
                "image": f"{name}.png",
                "front_view": f"{name}_front.png",
                "camera": cam.to_dict(),
                "front_camera": front.to_dict(),
                "scene": scene.to_dict(),
            }
        )
    scene = _example_scenes()["green_torus"]
    cams = ring_cameras(6)
    write_multiview_object(out / "green_torus_mv", scene.caption(), cams, render_views(scene, cams, resolution,
                           resolution, supersample=4))  # fmt: skip
    write_example_meshes(out)
    for name in EXAMPLE_MESHES:
        texture_reference(name).save(out / TEXTURE_REFERENCE.format(name=name))
    meta = {"resolution": resolution, "examples": entries, "multiview": "green_torus_mv"}
    (out / "examples.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
    return out


def _parse_size(s: str) -> int | tuple[int, int]:
    if "x" in s.lower():
        h, w = s.lower().split("x")
        return int(h), int(w)
    return int(s)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.miniworld.export", description=__doc__.split("\n\n")[0])
    p.add_argument("--kind", required=True, choices=["images", "multiview", "video", "examples"])
    p.add_argument("--num", type=int, default=1, help="number of images / objects / clips")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--resolution", type=_parse_size, nargs="+", default=[64],
        help="side or HxW; several for images (drawn per item)",
    )  # fmt: skip
    p.add_argument("--aspect-ratios", type=float, nargs="+", default=None, help="images: width/height ratios")
    p.add_argument("--supersample", type=int, default=2)
    p.add_argument("--max-objects", type=int, default=3)
    p.add_argument("--num-views", type=int, default=6)
    p.add_argument("--camera-mode", choices=CAMERA_MODES, default="ortho_ring")
    p.add_argument(
        "--background", default="auto", help="multiview background name, 'scene' (the scene's own) or 'auto'"
    )
    p.add_argument("--num-frames", type=int, default=8)
    p.add_argument("--motions", nargs="+", choices=list(MOTIONS), default=list(MOTIONS))
    return p


def main(argv: Sequence[str] | None = None) -> Path:
    args = build_parser().parse_args(argv)
    if args.num < 1:
        raise SystemExit("--num must be >= 1")
    common = {"seed": args.seed, "supersample": args.supersample, "max_objects": args.max_objects}
    if args.kind == "examples":
        path = export_examples(args.out, args.resolution[0] if isinstance(args.resolution[0], int) else 64)
    elif args.kind == "images":
        ds = TextImageDataset(args.resolution, args.aspect_ratios, **common)
        path = export_images(args.out, args.num, ds)
    elif args.kind == "multiview":
        ds = MultiViewDataset(
            args.num_views, args.camera_mode, args.resolution[0],
            background=None if args.background == "scene" else args.background, **common,
        )  # fmt: skip
        path = export_multiview(args.out, args.num, ds)
    else:
        ds = VideoDataset(args.num_frames, args.resolution[0], motions=args.motions, **common)
        path = export_video(args.out, args.num, ds)
    logger.info("wrote %d %s items to %s", args.num, args.kind, path)
    return path


if __name__ == "__main__":
    main()
