"""Ray Tune search for the two-tower model (``python -m tuning.tune``)."""
