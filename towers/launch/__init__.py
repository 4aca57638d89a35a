"""What every entry point shares (``ray_jobs``, ``tuning``, ``serving``): config → CLI, Ray.

- ``cli`` — a command line generated from a config dataclass.
- ``ray_init`` — join the Ray cluster a job runs on, or start a local one sized for it.
"""
