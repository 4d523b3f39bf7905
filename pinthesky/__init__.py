"""pinthesky: a motion-triggered security camera daemon for the Raspberry Pi.

Versions are MAJOR.MINOR.PATCH (semantic versioning). 1.0.0 is the first release of this
daemon, which replaces Pi In The Sky's ``pinthesky`` 0.9.1 (same package name, flags, files and
wire contract): its major version follows on from 0.9.1, so pip's upgrades and the Pi In The Sky
console's update check (it compares ``version`` in health reports with the newest release as
plain MAJOR.MINOR.PATCH) both see it as newer. CHANGELOG.md says what each version changed.

Nothing heavy is imported here: ``pinthesky --version`` must answer instantly on a Pi Zero.
"""

__version__ = "1.0.0"
