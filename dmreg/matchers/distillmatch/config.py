"""DistillMatch hyper-parameters: one strict, frozen config saved beside every weight file."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from dmreg.errors import InputError


LEGACY_MODALITIES = ("optical", "infrared", "sar", "elevation", "map", "unknown")
"""The category rows of weights made before the config named them (distillmatch-v0.x):
thermal was trained as "infrared" there, and "elevation"/"unknown" never saw an example."""


@dataclass(frozen=True)
class DistillMatchConfig:
    widths: tuple[int, int, int] = (32, 64, 128)  # backbone channels at 1/2, 1/4, 1/8
    coarse_dim: int = 128          # attention width at 1/8
    fine_dim: int = 64             # refinement features at 1/2
    n_layers: int = 2              # interleaved (self, cross) attention pairs
    n_heads: int = 4
    attention_reduction: int = 2   # keys/values pooled by this factor (1: full attention)
    n_modalities: int = 6          # len(modalities)
    modalities: tuple[str, ...] = LEGACY_MODALITIES  # the category of each embedding row, in order
    modality_dim: int = 32         # modality-category embedding width
    teacher_dim: int = 384         # projection head output (DINOv2 ViT-S/14: 384)
    temperature: float = 0.1       # dual-softmax temperature
    match_threshold: float = 0.2   # minimum dual-softmax confidence of a coarse match
    fine_window: int = 5           # refinement window at 1/2 (odd)
    max_matches: int = 2048        # cap per tile pair at inference

    def __post_init__(self) -> None:
        if len(self.modalities) != self.n_modalities:
            raise InputError(f"DistillMatch config: {self.n_modalities} modality rows but "
                             f"{len(self.modalities)} modality names ({', '.join(self.modalities)})")

    @classmethod
    def from_dict(cls, values: dict) -> DistillMatchConfig:
        """Strict: an unknown key is an error, so a config from another version cannot
        silently build a different network."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InputError(f"unknown DistillMatch config keys: {', '.join(unknown)}")
        fixed = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        return cls(**fixed)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
