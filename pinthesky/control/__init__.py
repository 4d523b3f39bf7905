"""Cloud control of the daemon through the four JSON files the ``pinthesky-iot`` sidecar
shares with it: commands in and events out (``controller``), the command types (``commands``),
the device shadow (``shadow``) and the health report (``health``).

May import the recording pipeline, the cloud clients and the shared modules. It sees the
daemon only through the small ``Host`` protocol it declares, never by importing the daemon.
"""
