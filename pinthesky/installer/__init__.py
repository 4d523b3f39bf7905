"""The ``pitsctl`` program: it installs and manages cameras from a workstation (``pitsctl``),
over ssh (``ssh``), running the standard-library-only ``onpi`` on the Pi, and provisions the
AWS resources (``provision``). ``units`` holds the systemd units it installs.

``onpi`` imports nothing from ``pinthesky`` (it is sent to the Pi as source before pinthesky is
installed there); the rest may import the shared modules and ``alerts.cloud``, never the
daemon.
"""
