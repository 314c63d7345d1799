"""What every package shares and none owns: CTR metrics in numpy (`metrics`), the file-system layer, version scans,
typed YAML checks and deep merge (`typed_yaml`), the compressed-stream check (`compression`), free ports (`ports`).
It imports nothing of the project and never TensorFlow, so `feature_specs`, `pipeline`, `models` and `serving` may
all use it."""
