# CPU serving image: the inference half of sccsa only (ONNX Runtime, no torch), with the
# default model inside. Build:  docker build -t sccsa-infer .
# Run:    docker run --rm -v "$PWD:/data" sccsa-infer predict /data/cells.h5ad --out /data/labelled.h5ad
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/sccsa
COPY pyproject.toml README.md ./
COPY inference ./inference
COPY training ./training
COPY models/default ./models/default
# The base install is the serving half: onnxruntime, numpy, anndata, scikit-learn, click, tqdm.
RUN pip install --no-cache-dir . \
    && python -c "import importlib.util as u; assert u.find_spec('torch') is None, 'torch must not be in the serving image'" \
    && useradd --create-home --uid 10001 sccsa

USER 10001
WORKDIR /data
ENTRYPOINT ["sccsa-infer"]
CMD ["--help"]
