"""serving package."""

import feature_specs.runtime  # noqa: F401  (this package's entry: the Keras flavour before any TensorFlow import)
