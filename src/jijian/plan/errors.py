"""The planner's user-input error."""

from __future__ import annotations

from jijian.config import UserInputError


class PlanError(UserInputError):
    """A planning request that cannot be answered (unknown device, impossible shape, no feasible layout)."""
