"""Schedules, triggers and serve entry points for the preset flows (issue 4)."""
