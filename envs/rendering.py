"""Fast offscreen MuJoCo rendering for small goal images.

``FastRenderer`` wraps ``mujoco.Renderer`` with the settings that make 64x64 frames cheap
on a CPU (Mesa llvmpipe under ``MUJOCO_GL=egl``): multisampling off
(``model.vis.quality.offsamples = 0``, which must be set before the GL context is made),
shadows and reflections off. On the project machines this takes Pusher 64x64 from about
31 to about 600 rendered steps/s.

Example::

    import mujoco
    from sfplan.envs.rendering import FastRenderer, free_camera

    model = mujoco.MjModel.from_xml_string("<mujoco><worldbody><geom size='.1'/></worldbody></mujoco>")
    data = mujoco.MjData(model)
    mujoco.mj_forward(model, data)
    cam = free_camera(lookat=(0, 0, 0), distance=1.0, azimuth=90, elevation=-90)
    with FastRenderer(model, 64, camera=cam) as r:
        frame = r.render(data)  # (64, 64, 3) uint8
"""
from __future__ import annotations

import gc

from typing import Sequence, Union

import mujoco
import numpy as np

Camera = Union[int, str, mujoco.MjvCamera]


def free_camera(
    lookat: Sequence[float],
    distance: float,
    azimuth: float = 90.0,
    elevation: float = -90.0,
    orthographic: bool = False,
) -> mujoco.MjvCamera:
    """A free ``MjvCamera`` looking at ``lookat`` (metres) from ``distance`` (metres);
    ``azimuth``/``elevation`` in degrees (elevation -90 looks straight down).

    For an orthographic view pass ``ortho_extent`` to ``FastRenderer`` (MuJoCo 3.x takes
    the free camera's projection from ``model.vis.global_.orthographic`` and reads
    ``vis.global_.fovy`` as the height of the view in metres)."""
    cam = mujoco.MjvCamera()
    cam.type = mujoco.mjtCamera.mjCAMERA_FREE
    cam.lookat[:] = np.asarray(lookat, dtype=np.float64)
    cam.distance = float(distance)
    cam.azimuth = float(azimuth)
    cam.elevation = float(elevation)
    cam.orthographic = int(bool(orthographic))
    return cam


class FastRenderer:
    """Offscreen renderer of one camera at a fixed size.

    Args:
        model: the ``MjModel``; its visual settings are changed in place
            (``offsamples = 0``, offscreen buffer grown to fit, optionally ``fovy``).
        height, width: frame size in pixels (``width`` defaults to ``height``).
        camera: a camera name or id from the model (``-1``: MuJoCo's default free
            camera), or an ``mujoco.MjvCamera`` (see ``free_camera``).
        ortho_extent: if given, the free camera is orthographic and this is the height
            of the view in metres (written to ``model.vis.global_.orthographic``/``fovy``).

    ``render(data)`` returns a new ``(height, width, 3)`` uint8 array. The caller makes
    sure ``data``'s kinematics are current (``mj_forward`` or ``mj_kinematics``).
    """

    def __init__(
        self,
        model: mujoco.MjModel,
        height: int,
        width: int | None = None,
        camera: Camera = -1,
        ortho_extent: float | None = None,
    ):
        width = height if width is None else width
        self.height, self.width = int(height), int(width)
        # All of these must be in place before the GL context exists.
        model.vis.quality.offsamples = 0
        model.vis.global_.offwidth = max(int(model.vis.global_.offwidth), self.width)
        model.vis.global_.offheight = max(int(model.vis.global_.offheight), self.height)
        if ortho_extent is not None:
            model.vis.global_.orthographic = 1
            model.vis.global_.fovy = float(ortho_extent)
        if isinstance(camera, str) and mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, camera) < 0:
            names = [mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_CAMERA, i) for i in range(model.ncam)]
            raise ValueError(f"camera {camera!r} is not in the model; it has {names}")
        self.model = model
        self.camera = camera
        self.scene_option = mujoco.MjvOption()
        self._renderer = mujoco.Renderer(model, self.height, self.width)
        flags = self._renderer.scene.flags
        flags[mujoco.mjtRndFlag.mjRND_SHADOW] = False
        flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = False

    def render(self, data: mujoco.MjData) -> np.ndarray:
        """Render ``data`` from the camera: (H, W, 3) uint8."""
        if self._renderer is None:
            raise RuntimeError("FastRenderer.render called after close()")
        # Freeing any EGL context releases the thread's current one (mujoco's GLContext.free
        # calls eglReleaseThread). If the cyclic GC collects another env's renderer inside
        # this call, the frame would be read with no context: garbage pixels. So no GC here.
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            self._renderer.update_scene(data, camera=self.camera, scene_option=self.scene_option)
            return self._renderer.render()
        finally:
            if gc_was_enabled:
                gc.enable()

    def close(self) -> None:
        """Free the GL context (idempotent)."""
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    def __enter__(self) -> "FastRenderer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:  # best effort; env.close() is the reliable path
        try:
            self.close()
        except Exception:
            pass
