"""The ``pitsctl`` program: it installs and manages cameras from a workstation (``pitsctl``),
over ssh (``ssh``), running the standard-library-only ``onpi`` on the Pi, and provisions the
AWS resources: the thing, its certificate and role (``provision``), the alerts and the
bucket's lifecycle (``alerts``). ``units`` holds the systemd units it installs.

``onpi`` imports nothing from ``pinthesky`` (it is sent to the Pi as source before pinthesky is
installed there). The rest may import the shared modules at the top of ``pinthesky``, never
the daemon or its concerns. (The camera's local API borrows ``onpi.merge_toml``, to write
the same TOML file the installer writes.)
"""
