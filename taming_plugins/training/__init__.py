"""Helpers shared by the training loops."""
