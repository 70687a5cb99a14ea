"""moda-hub: one portrait + speech -> a talking-portrait video (MODA, ICCV 2023) on the HF Hub.

``import moda_hub`` registers the pipeline and its components so that both
``ModaPipeline.from_pretrained(folder)`` and ``DiffusionPipeline.from_pretrained(folder)`` work.
"""
import os

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import diffusers as _diffusers  # noqa: E402

from .errors import (AudioDecodeError, FaceIndexError, ImageDecodeError, InputTooLongError,  # noqa: E402
                     InvalidParameterError, ModaError, NoFaceFoundError, OutputPathError,
                     TextToSpeechError, WeightsError)
from .models.composer import FacialComposer  # noqa: E402
from .models.moda import ModaModel  # noqa: E402
from .pipeline import ModaPipeline, ModaPipelineOutput  # noqa: E402
from .render.warp import WarpRenderer  # noqa: E402

# DiffusionPipeline.from_pretrained resolves model_index.json's "_class_name" on the diffusers
# module; components resolve through their library name ("moda_hub"), which is this package.
setattr(_diffusers, "ModaPipeline", ModaPipeline)

__version__ = "0.1.0"
__all__ = ["ModaPipeline", "ModaPipelineOutput", "ModaModel", "FacialComposer", "WarpRenderer",
           "ModaError", "NoFaceFoundError", "FaceIndexError", "ImageDecodeError", "AudioDecodeError",
           "InputTooLongError", "TextToSpeechError", "InvalidParameterError", "WeightsError",
           "OutputPathError"]
