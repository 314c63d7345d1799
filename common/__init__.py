"""What every package shares and none owns: CTR metrics in numpy, the file-system layer, version scans, config merge,
free ports. It imports nothing of the project, so `feature_specs`, `pipeline`, `models` and `serving` may all use it."""
