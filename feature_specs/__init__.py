"""Feature specs: the YAML source of truth, its typed loader, what derives from it, and artifact formats."""

from feature_specs import runtime  # noqa: F401  (must run before TensorFlow is imported anywhere)
from feature_specs.loader import SpecError, load_spec, shipped_specs, spec_hash
from feature_specs.schema import Feature, FeatureSpec

__all__ = ["Feature", "FeatureSpec", "SpecError", "load_spec", "shipped_specs", "spec_hash"]
