# One image for the scheduler, the workers and the training job.
#   docker build -t distrib .
# BASE_IMAGE: any image with python3 and its venv module (CI uses a Debian image it makes
# offline). PIP_ARGS: extra pip flags (CI: --no-index, with wheels in docker/wheels/).
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    OMP_NUM_THREADS=1 \
    OPENBLAS_NUM_THREADS=1 \
    MKL_NUM_THREADS=1 \
    PATH=/opt/venv/bin:$PATH \
    DISTRIB_DATA_HOME=/data

# Dependencies first: this layer is rebuilt only when the pins change.
ARG PIP_ARGS=""
COPY docker/requirements.txt /tmp/requirements.txt
COPY docker/wheels/ /tmp/wheels/
RUN python3 -m venv /opt/venv \
    && pip install $PIP_ARGS --find-links /tmp/wheels -r /tmp/requirements.txt \
    && rm -rf /tmp/wheels

# Then the package itself.
COPY pyproject.toml README.md /src/
COPY distrib /src/distrib
RUN pip install --no-deps --no-build-isolation /src

RUN useradd --create-home --uid 1000 distrib \
    && mkdir -p /data /runs \
    && chown distrib:distrib /data /runs
USER distrib
WORKDIR /runs
CMD ["distrib", "--help"]
