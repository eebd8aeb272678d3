"""Training: the loop, optimisers and schedules, metrics; parallelism is applied to the model from outside."""

from jijian.train.optim import build_lr_scheduler, build_optimizer, lr_multiplier
from jijian.train.run import TrainRun, TrainSetupError, run_training
from jijian.train.trainer import Trainer, TrainResult, cross_entropy_loss

__all__ = [
    "TrainResult",
    "TrainRun",
    "TrainSetupError",
    "Trainer",
    "build_lr_scheduler",
    "build_optimizer",
    "cross_entropy_loss",
    "lr_multiplier",
    "run_training",
]
