"""The compared methods: a trainer per method on a freshly built network."""

from __future__ import annotations

import os
from dataclasses import asdict
from typing import Any

import torch
from torch import nn

from slimtrain._validation import check_int
from slimtrain.experiments.options import METHODS, TrainingOptions
from slimtrain.training import distributed as dist_utils
from slimtrain.training.losses import LossName
from slimtrain.training.model import SeparableModel
from slimtrain.training.trainers import GradientTrainer, SlimTrain, Trainer

__all__ = ["make_trainer"]


def _rank_device(device: str) -> str:
    """The device this process trains on: ``device``, except CUDA under torch.distributed.

    Under an initialized process group of several processes each rank owns one GPU: a CUDA
    ``device`` (``"cuda"`` or ``"cuda:i"``, whatever its index) becomes ``cuda:{LOCAL_RANK}``,
    the GPU that :func:`slimtrain.training.distributed.init_from_env` made current (without
    ``LOCAL_RANK`` in the environment, the current CUDA device). CPU and single-process runs
    keep ``device`` as given.
    """
    if not (device.startswith("cuda") and dist_utils.is_distributed()):
        return device
    local_rank = os.environ.get("LOCAL_RANK")
    if local_rank is None:
        return f"cuda:{torch.cuda.current_device()}"
    try:
        index = int(local_rank)
    except ValueError:
        raise ValueError(
            f"LOCAL_RANK must be a non-negative int (set by torchrun), found {local_rank!r}"
        ) from None
    return f"cuda:{check_int('LOCAL_RANK', index, minimum=0)}"


def make_trainer(
    method: str, features: nn.Module, head: nn.Module, options: TrainingOptions,
    loss: LossName = "squared",
) -> Trainer:
    """The trainer of one method on a freshly built network, training on ``loss``.

    The model goes to ``options.device``; under torch.distributed with CUDA each rank uses its
    own GPU, ``cuda:{LOCAL_RANK}``, for the model and DDP's ``device_ids``. The feature
    extractor is wrapped in DDP; a baseline's head gradients are averaged by
    :class:`~slimtrain.GradientTrainer`, so every rank keeps the same parameters.
    """
    import prodigyopt
    import schedulefree

    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    device = _rank_device(options.device)
    model = SeparableModel(features, head).to(device)
    if dist_utils.is_distributed():
        kwargs: dict[str, Any] = {}
        if device.startswith("cuda"):
            kwargs["device_ids"] = [torch.device(device).index]
        dist_utils.data_parallel(model, **kwargs)
    decay = options.alpha
    opt: torch.optim.Optimizer
    if method.startswith("slimtrain"):
        theta = list(model.feature_parameters())
        if method == "slimtrain":
            opt = torch.optim.Adam(theta, lr=options.lr, weight_decay=decay)
        else:
            opt = prodigyopt.Prodigy(theta, lr=1.0, weight_decay=decay)
        return SlimTrain(model, opt, loss=loss, **asdict(options.slimtik))
    params = list(model.parameters())
    if method == "adam":
        opt = torch.optim.Adam(params, lr=options.lr, weight_decay=decay)
    elif method == "prodigy":
        opt = prodigyopt.Prodigy(params, lr=1.0, weight_decay=decay)
    else:
        opt = schedulefree.AdamWScheduleFree(params, weight_decay=decay)
    return GradientTrainer(model, opt, loss=loss)
