"""Prefect tasks: one thin wrapper per stage around the core ``mixtune`` library."""
