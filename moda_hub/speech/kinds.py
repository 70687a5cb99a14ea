"""The feature kinds a ModaModel can hear, and their widths (no imports: models and speech both read it)."""

#: kind -> feature columns per frame.
FEATURE_KINDS = {"logmel": 80, "logmel+phones": 93, "logmel+phones+opening": 94, "whisper-tiny": 384}
#: Width of the phone stream at the end of each kind (the first columns of ``phone_stream``).
PHONE_COLUMNS = {"logmel": 0, "logmel+phones": 13, "logmel+phones+opening": 14, "whisper-tiny": 0}
#: Kinds computed by the pipeline's ``audio_encoder`` component (not log-mel + phones).
ENCODER_KINDS = ("whisper-tiny",)


def feature_dim(kind: str) -> int:
    """Columns of ``speech.features.speech_features`` for ``kind``."""
    if kind not in FEATURE_KINDS:
        raise ValueError(f"unknown feature kind {kind!r} — use one of {sorted(FEATURE_KINDS)}")
    return FEATURE_KINDS[kind]
