"""Measurements of the server and its pipeline; each module prints its figures."""
