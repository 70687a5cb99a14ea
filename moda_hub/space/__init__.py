"""The Gradio Space's pieces that are not UI: settings, output folders, drawing, plots, animation.

``app.py`` at the repository root lays out the page and wires these together; nothing here
imports gradio, so every piece can be used (and tested) without a server:

- :mod:`~moda_hub.space.config`   ``SpaceConfig``: every server setting, from arguments and env.
- :mod:`~moda_hub.space.storage`  ``OutputStore``: one temporary folder per request, cleaned up
  (at once for failed or cancelled requests, after the TTL by a background sweep otherwise).
- :mod:`~moda_hub.space.animate`  speech loading and the variations loop (video, mesh preview, .npz).
- :mod:`~moda_hub.space.draw`     numbered face boxes, landmark/mesh drawing, side-by-side frames.
- :mod:`~moda_hub.space.plots`    mouth aperture, eye openness and head pose over time (matplotlib).
"""
from .animate import AnimateOptions, Variation, animate, load_speech, save_landmarks_npz
from .config import SpaceConfig
from .draw import draw_landmarks, faces_preview, side_by_side
from .plots import motion_figure
from .storage import OutputStore

__all__ = ["SpaceConfig", "OutputStore", "AnimateOptions", "Variation", "animate", "load_speech",
           "save_landmarks_npz", "faces_preview", "draw_landmarks", "side_by_side", "motion_figure"]
