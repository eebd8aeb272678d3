"""Capacity and cost planning (pure Python, no torch). Built by the planner issue; nothing here yet."""
