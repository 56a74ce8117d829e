"""The training options shared by the training experiments and the sweep (validated)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from slimtrain._validation import check_int, check_real
from slimtrain.linalg.slimtik import SlimTikConfig

__all__ = ["METHODS", "TrainingOptions", "check_methods"]

#: Methods a run can compare. ``slimtrain-prodigy`` has no learning rate anywhere.
METHODS = ("slimtrain", "slimtrain-prodigy", "adam", "prodigy", "schedulefree")


def check_methods(methods: object) -> tuple[str, ...]:
    """``methods`` as a tuple of known method names (non-empty, no repeats)."""
    if isinstance(methods, str) or not isinstance(methods, (list, tuple)):
        raise TypeError(f"methods must be a sequence of names, found {methods!r}")
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods or len(set(methods)) != len(methods):
        raise ValueError(f"found methods {list(methods)}; expected a non-empty subset of "
                         f"{', '.join(METHODS)} without repeats")
    return tuple(methods)


@dataclass(frozen=True)
class TrainingOptions:
    """Settings shared by every method of one run.

    ``lr`` is the learning rate of Adam (on theta for slimTrain, on everything for the Adam
    baseline); Prodigy always uses its recommended ``lr=1.0`` and schedule-free AdamW its
    package default. ``alpha`` is weight decay on the optimizer's parameters. ``slimtik`` holds
    the statistical settings of slimTrain's head solver.
    """

    epochs: int = field(default=10, metadata={"help": "epochs"})
    batch_size: int = field(default=32, metadata={
        "help": "global batch size (a multiple of --nproc)"})
    lr: float = field(default=1e-3, metadata={
        "help": "Adam learning rate (on theta for slimTrain, on everything for Adam)"})
    alpha: float = field(default=0.0, metadata={
        "help": "weight decay on the parameters the optimizer trains"})
    slimtik: SlimTikConfig = field(default_factory=SlimTikConfig, metadata={"flags": {
        "memory_depth": "slimTik memory depth r (earlier batches kept)",
        "initial_lambda": "slimTik initial Lambda",
    }})
    seed: int = field(default=0, metadata={"help": "seed of the initial weights and batches"})
    device: str = field(default="cpu", metadata={"help": "cpu or cuda[:i]"})

    def __post_init__(self) -> None:
        check_int("epochs", self.epochs, minimum=0)
        check_int("batch_size", self.batch_size, minimum=1)
        check_int("seed", self.seed, minimum=0)
        check_real("lr", self.lr, minimum=0.0, strict_minimum=True)
        check_real("alpha", self.alpha, minimum=0.0)
        if not isinstance(self.slimtik, SlimTikConfig):
            raise TypeError(f"slimtik must be a SlimTikConfig, found {type(self.slimtik).__name__}")
        if not isinstance(self.device, str) or not (
            self.device == "cpu" or self.device.startswith("cuda")
        ):
            raise ValueError(f"device must be 'cpu' or 'cuda[:i]', found {self.device!r}")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"device {self.device!r} was asked for but CUDA is not available")
