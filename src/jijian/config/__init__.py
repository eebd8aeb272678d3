"""One typed configuration for a whole deployment (`deploy.toml`)."""

from jijian.config.errors import UserInputError
from jijian.config.loader import ConfigError, dump_config, load_config, parse_config
from jijian.config.presets import MODEL_PRESETS
from jijian.config.schema import (
    CheckpointConfig,
    DataConfig,
    DeployConfig,
    GuardConfig,
    HardwareConfig,
    KBConfig,
    ModelConfig,
    ParallelConfig,
    RopeScaling,
    ServeConfig,
    TokenizerConfig,
    TrainConfig,
    UpConfig,
)

__all__ = [
    "MODEL_PRESETS",
    "CheckpointConfig",
    "ConfigError",
    "DataConfig",
    "DeployConfig",
    "GuardConfig",
    "HardwareConfig",
    "KBConfig",
    "ModelConfig",
    "ParallelConfig",
    "RopeScaling",
    "ServeConfig",
    "TokenizerConfig",
    "TrainConfig",
    "UpConfig",
    "UserInputError",
    "dump_config",
    "load_config",
    "parse_config",
]
