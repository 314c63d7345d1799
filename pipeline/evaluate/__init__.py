"""The Beam offline eval job: SavedModels scored on a split (RunInference) -> GAUC / AUC / logloss / calibration
(entry: `eval_job.py`), and the cross-run comparison `rocketctr compare` prints (`compare_runs.py`)."""
