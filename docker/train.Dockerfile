# The training job image: the pinned environment plus this package; the entrypoint is `rocketctr train`.
# Not built in CI (no Docker engine there); see docs/TRAINING.md for single-node and cluster launches.
#
#   docker build -f docker/train.Dockerfile -t rocketctr-train .              # from the repository root
#   docker run --rm -v /data:/data rocketctr-train \
#       --data /data/sim_data --config configs/synthetic.yaml --experiment rocket --out /data/runs/rocket
#
# In a cluster each pod runs the same command with its own TF_CONFIG (docker/k8s-train-job.yaml); the run
# directory must be on storage every worker sees (only the chief writes it, all workers read it on --resume).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TF_USE_LEGACY_KERAS=1 TF_CPP_MIN_LOG_LEVEL=2

WORKDIR /app
# Dependencies first (cached layer), from the same pinned requirements the tests run with.
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt

COPY pyproject.toml README.md ./
COPY feature_specs feature_specs
COPY models models
COPY pipeline pipeline
COPY serving serving
COPY rocketctr rocketctr
COPY configs configs
RUN pip install --no-cache-dir --no-deps --no-build-isolation -e . && rocketctr --help > /dev/null

# MultiWorkerMirrored workers talk gRPC on the port in their TF_CONFIG entry.
EXPOSE 2222
USER 1000:1000
ENTRYPOINT ["rocketctr", "train"]
CMD ["--help"]
