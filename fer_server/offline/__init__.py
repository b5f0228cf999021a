"""Offline analysis: one video into an annotated file and a CSV, and batches of videos
(serial, a crash-retrying process pool, or a Ray cluster)."""
