"""Datasets: image folders and the bundled real images."""
