"""serving package."""

import feature_specs  # noqa: F401  (root of the import graph: sets the Keras flavour first)
