# CPU serving image: the sccsa-infer distribution only (ONNX Runtime; no torch, no training code),
# with the default model inside, its Python packages pinned by inference/constraints.txt.
# Build:  docker build -t sccsa-infer .
# Run:    docker run --rm --user "$(id -u):$(id -g)" -v "$PWD:/data" sccsa-infer predict /data/cells.h5ad --out /data/labelled.h5ad
#         (--user: the files written into /data belong to you, not to the image's uid 10001)
# Constraints after changing inference/pyproject.toml:
#         python -m venv /tmp/v && /tmp/v/bin/pip install './inference[parquet]' && /tmp/v/bin/pip freeze | grep -v sccsa
# The base image is pinned by tag; pin it by digest (python:3.11-slim@sha256:...) where your
# registry access allows resolving one.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/sccsa
COPY inference ./inference
RUN pip install --no-cache-dir -c inference/constraints.txt ./inference \
    && python -c "import importlib.util as u; assert u.find_spec('torch') is None and u.find_spec('sccsa_train') is None, 'the serving image holds no torch and no training code'" \
    && useradd --create-home --uid 10001 sccsa

USER 10001
WORKDIR /data
ENTRYPOINT ["sccsa-infer"]
CMD ["--help"]
