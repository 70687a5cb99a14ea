"""Speech front-end: speech in (file, samples or text) -> what stage 1 hears, one row per frame.

- :mod:`~moda_hub.speech.audio`          decode any speech file or array to 16 kHz mono
  (PyAV), log-mel features, RMS envelope; ``synthesize_speech`` (text -> speech).
- :mod:`~moda_hub.speech.espeak`         espeak-ng (the espeakng-loader wheel) in a helper process:
  text -> samples + exact phoneme events.
- :mod:`~moda_hub.speech.phones`         pocketsphinx phone recognition -> viseme-class rows.
- :mod:`~moda_hub.speech.phone_worker`   the helper process that runs ``phones`` beside the pipeline.
- :mod:`~moda_hub.speech.helper_process` stopping those helper processes (close, wait, kill).
- :mod:`~moda_hub.speech.speech_states`  the audio encoder's states in 10 s windows, cross-faded, at the
  model's frame rate.
- :mod:`~moda_hub.speech.features`       ``FeatureTable``: the feature kind a ModaModel was trained on,
  computed on demand; ``PreparedSpeech`` (decoded speech + its table, reusable across calls).

Nothing is imported here: the helper processes import ``espeak`` / ``phones`` alone (without
torch or diffusers), through a bare ``moda_hub`` package object.
"""
