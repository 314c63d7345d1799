"""The setups the quality bench compares, each one named experiment of the training config plus the mode it
must run in.

The config's experiment is authoritative for what an ablation means on that dataset (configs/synthetic.yaml,
taobao.yaml and movielens.yaml all define the same names); the mode is forced here so that an experiment that
only flips a loss switch is always a *rocket* run whatever the config's base mode is. `--set` overrides apply
to every variant before the variant's own fields, so they can tune the regime (steps, batch, lambda) but can
never turn one variant into another.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from common.typed_yaml import deep_merge
from models.config import RunConfig, load_config

BASELINE = "light_alone"  # the served net trained alone: every difference is paired against it
REFERENCE = "booster_alone"  # the big net trained alone: the gap the light net could recover
KD_TEACHER = REFERENCE  # two-stage KD distils the booster-alone run of the same seed
LR_FLOOR = "lr_floor"  # a reference the light net must beat, never a net we would serve


@dataclass(frozen=True)
class Variant:
    name: str
    experiment: str  # experiment name inside the training config
    mode: str  # train.mode forced for this variant
    what: str  # one line for the report
    teacher: str | None = None  # kd mode: the variant whose same-seed run's booster is the frozen teacher

    @property
    def needs_teacher(self) -> bool:
        return self.mode == "kd"


VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant(BASELINE, "light_only", "light", "light net trained alone"),
    Variant(LR_FLOOR, "light_lr", "light", "the LR floor: logistic regression (one weight per id) trained alone"),
    Variant(REFERENCE, "booster_only", "booster", "booster trained alone (the reference and the KD teacher)"),
    Variant("rocket", "rocket", "rocket", "rocket launching as shipped: shared embeddings, hint (kept out of the "
            "shared tables), gradient block"),
    Variant("rocket_paper", "paper", "rocket", "rocket with the paper's settings: lambda 0.1, hint into the shared "
            "tables"),
    Variant("rocket_no_gradient_block", "no_gradient_block", "rocket", "rocket, hint gradient also reaches the "
            "booster"),
    Variant("rocket_hint_into_shared", "hint_into_shared", "rocket", "rocket, hint gradient also reaches the "
            "shared embeddings"),
    Variant("rocket_no_shared_embeddings", "no_shared_embeddings", "rocket", "rocket without parameter sharing"),
    Variant("rocket_interval", "interval_sharing", "rocket", "rocket with interval sharing: the embeddings plus the "
            "first hidden layer shared (the booster's first width is the light's)"),
    Variant("kd_two_stage", "kd", "kd", "two-stage KD: booster-alone (same seed) as frozen teacher, then student",
            teacher=KD_TEACHER),
    Variant("rocket_hint_mse_plus_kd", "hint_mse_plus_kd", "rocket", "rocket with hint mse_logits + kd"),
    Variant("rocket_then_kd", "kd", "kd", "rocket (same seed), then a KD student of its co-trained booster: one "
            "co-training job yields the teacher", teacher="rocket"),
)}
DEFAULT_VARIANTS = tuple(VARIANTS)


def resolve_variants(names: list[str] | None) -> list[Variant]:
    """The requested variants in canonical order, always with light-alone (the baseline) and booster-alone
    (the gap reference and KD teacher): without them no difference or gap can be reported."""
    wanted = set(names or DEFAULT_VARIANTS)
    unknown = sorted(wanted - set(VARIANTS))
    if unknown:
        raise ValueError(f"--variants: unknown {', '.join(unknown)} (known: {', '.join(VARIANTS)})")
    wanted |= {BASELINE, REFERENCE}
    wanted |= {VARIANTS[n].teacher for n in wanted if VARIANTS[n].teacher}  # a student's teacher runs first
    return [v for name, v in VARIANTS.items() if name in wanted]


def variant_config(config: str | Path, variant: Variant, seed: int, overrides: dict | None = None,
                   teacher_run: str | Path | None = None) -> RunConfig:
    """RunConfig of one (variant, seed): config base <- experiment <- --set overrides <- mode, seed, teacher."""
    if variant.needs_teacher and teacher_run is None:
        raise ValueError(f"variant {variant.name}: needs the {variant.teacher} run of seed {seed} as its teacher")
    own: dict = {"train": {"mode": variant.mode, "seed": seed}}
    if teacher_run is not None:
        own["train"]["teacher_run"] = str(teacher_run)
    cfg = load_config(config, variant.experiment, deep_merge(overrides or {}, own))
    return cfg
