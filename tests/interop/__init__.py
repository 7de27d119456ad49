"""Interop tests against the real ACME CSE (``acmecse`` from PyPI), on loopback sockets.

Skipped unless ``ACMEWS_ACME`` names the ``acmecse`` executable (``.ci/suites/interop``
installs ACME in its own venv and sets it)."""
