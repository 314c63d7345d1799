"""The Beam preprocessing job: raw click logs -> validated, split, analyzed, encoded TFRecords plus artifacts
(entry: `preprocess_job.py`)."""
