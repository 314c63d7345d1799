"""rocketctr: a production CTR pipeline implementing Rocket Launching (Zhou et al., AAAI 2018).

This package holds only the command line (rocketctr.cli); nothing else in the project imports it.
"""

from feature_specs.runtime import VERSION as __version__  # noqa: F401
