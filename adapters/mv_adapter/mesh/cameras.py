"""The official camera ring of MV-Adapter's geometry-guided generation and texturing.

``inference_tg2mv_sdxl.py`` / ``inference_ig2mv_sdxl.py`` / ``texture_*.py`` render the mesh with orthographic cameras
at distance 1.8, box ``[-0.55, 0.55]`` (``ortho_scale=1.1``), public azimuths ``[0, 90, 180, 270, 180, 180]`` (passed to
the camera code as ``azimuth - 90``) and elevations ``[0, 0, 0, 0, 89.99, -89.99]``: front, right, back, left, top,
bottom, the layout that the ``"row_col"`` attention expects. Other counts fall back to an even ring at elevation 0.
"""

from __future__ import annotations

from ..camera import DEFAULT_DISTANCE, DEFAULT_ORTHO_SCALE, Cameras, Floats, default_azimuths

__all__ = ["GEOMETRY_AZIMUTHS", "GEOMETRY_ELEVATIONS", "geometry_cameras"]

GEOMETRY_AZIMUTHS = (0.0, 90.0, 180.0, 270.0, 180.0, 180.0)
GEOMETRY_ELEVATIONS = (0.0, 0.0, 0.0, 0.0, 89.99, -89.99)


def geometry_cameras(
    num_views: int = 6,
    *,
    azimuth_deg: Floats | None = None,
    elevation_deg: Floats | None = None,
    distance: Floats = DEFAULT_DISTANCE,
    fov_deg: Floats | None = None,
    ortho_scale: Floats = DEFAULT_ORTHO_SCALE,
) -> Cameras:
    """Cameras for rendering a mesh's geometry maps.

    Args:
        num_views: number of views; 6 with no angles given is the official geometry ring (front, right, back, left,
            top, bottom); other counts spread the azimuths evenly (:func:`default_azimuths`) at elevation 0.
        azimuth_deg: public azimuths (0 = front, 90 = right), one per view.
        elevation_deg: a scalar or one per view (default: the official ring's, or 0).
        distance: camera distance(s) from the origin.
        fov_deg: vertical field of view for perspective cameras; ``None`` (default) for orthographic ones.
        ortho_scale: vertical extent of orthographic views in world units.
    """
    if num_views < 1:
        raise ValueError(f"`num_views` must be >= 1, got {num_views}.")
    official = num_views == 6 and azimuth_deg is None and elevation_deg is None
    if azimuth_deg is None:
        azimuth_deg = list(GEOMETRY_AZIMUTHS) if official else default_azimuths(num_views)
    if elevation_deg is None:
        elevation_deg = list(GEOMETRY_ELEVATIONS) if official else 0.0
    return Cameras.from_spherical(azimuth_deg, elevation_deg, distance, fov_deg=fov_deg, ortho_scale=ortho_scale)
