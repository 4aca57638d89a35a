"""Entry points run with ``python -m ray_jobs.<step>`` or ``ray job submit -- python -m ...``."""
