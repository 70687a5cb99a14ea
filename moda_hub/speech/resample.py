"""Band-limited resampling of audio arrays (soxr): the one resampler of decoded speech and of the
MP4 writer's audio track."""
import numpy as np
import soxr


def resample(wav: np.ndarray, from_rate: float, to_rate: float) -> np.ndarray:
    """Band-limited resampling (soxr, high quality) of (N,) or (N, C) float audio."""
    wav = np.asarray(wav, dtype=np.float32)
    if from_rate == to_rate or len(wav) == 0:
        return wav
    return np.asarray(soxr.resample(wav, from_rate, to_rate, quality="HQ"), dtype=np.float32)
