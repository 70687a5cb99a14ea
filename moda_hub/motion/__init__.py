"""Motion between stage 1 and stage 2 (numpy arrays; units in :mod:`moda_hub.models.moda`).

- :mod:`~moda_hub.motion.blinks`    blink timing (a renewal process at the requested rate, drawn
  from the call's generator), the subject's closed-eye pose, and blink counting.
- :mod:`~moda_hub.motion.controls`  frame-rate resampling and the user controls (mouth and head
  scales, still).
"""
