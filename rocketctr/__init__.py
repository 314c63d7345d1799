"""rocketctr: a production CTR pipeline implementing Rocket Launching (Zhou et al., AAAI 2018).

This package holds only the command line (rocketctr.cli); nothing else in the project imports it.
"""

# the command line's entry point: importing feature_specs.runtime sets the Keras flavour before any TensorFlow import
from feature_specs.runtime import VERSION as __version__  # noqa: F401
