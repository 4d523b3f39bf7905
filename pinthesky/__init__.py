"""pinthesky: a motion-triggered security camera daemon for the Raspberry Pi.

Nothing heavy is imported here: ``pinthesky --version`` must answer instantly on a Pi Zero.
"""

__version__ = "0.1.0"
