"""Example apps for Conveyor."""
