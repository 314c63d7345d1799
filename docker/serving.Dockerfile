# Production serving of the exported light net on the official TensorFlow Serving image.
# Not built in CI (no Docker engine there); see docs/SERVING.md.
#
#   rocketctr export --run runs/rocket --model-base out/models/ctr          # writes out/models/ctr/<version>/
#   docker build -f docker/serving.Dockerfile -t rocketctr-serving .        # from the repository root
#   docker run --rm -p 127.0.0.1:8500:8500 rocketctr-serving
#
# The model base is copied into the image (immutable, reproducible deploys). To roll versions without
# rebuilding, mount a model base over /models/ctr instead (docker/compose.yaml does): TF Serving polls it,
# loads a new integer version folder, replays its assets.extra/tf_serving_warmup_requests, then swaps.
# Keep the image's TF Serving version >= the TensorFlow that wrote the SavedModel (2.21 here).
ARG TF_SERVING_VERSION=2.21.0
FROM tensorflow/serving:${TF_SERVING_VERSION}

ARG MODEL_BASE=out/models/ctr
COPY ${MODEL_BASE} /models/ctr
COPY docker/models.config /models/models.config

# gRPC (the API rocketctr's client uses) and REST: the image's entrypoint binds --port=8500 and
# --rest_api_port=8501, the same defaults as `rocketctr serve --port 8500 --rest-port 8501`.
EXPOSE 8500 8501

# The image's entrypoint runs tensorflow_model_server with these extra flags. models.config names the model
# "ctr" at /models/ctr with the latest-1 version policy; warmup is on by default and stated for clarity.
# grpc.health.v1 (TF Serving >= 2.15) answers SERVING once the server is up, whatever the model's state: use
# GET /v1/models/ctr on 8501 for readiness (docs/SERVING.md).
CMD ["--model_config_file=/models/models.config", \
     "--file_system_poll_wait_seconds=10", \
     "--enable_model_warmup=true", \
     "--enable_grpc_healthcheck_service=true", \
     "--tensorflow_intra_op_parallelism=1", \
     "--tensorflow_inter_op_parallelism=2", \
     "--grpc_max_threads=8"]
