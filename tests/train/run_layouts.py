"""Test helper run under torchrun: train each config given on the command line, one after another.

Several layouts share one launch so the suite pays torch's start-up once per world size.
"""

import sys

from jijian.config import load_config
from jijian.train.distributed import shutdown
from jijian.train.run import run_training
from jijian.train.worker import leave

if __name__ == "__main__":
    for path in sys.argv[1:]:
        run_training(load_config(path))
    shutdown()
    leave(0)
