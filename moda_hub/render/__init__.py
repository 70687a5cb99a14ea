"""Stage 3: renderers that turn a portrait and per-frame face meshes into video frames.

``WarpRenderer`` (one-shot, no weights) lives in :mod:`moda_hub.render.warp`; its pieces are
:mod:`~moda_hub.render.mesh` (triangulations), :mod:`~moda_hub.render.mouth` (inner-mouth
synthesis) and :mod:`~moda_hub.render.crop` (face crop and paste-back).
"""
from .warp import PreparedPortrait, WarpRenderer

__all__ = ["WarpRenderer", "PreparedPortrait"]
