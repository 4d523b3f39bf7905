"""What the Raspberry Pi and its camera modules can do: the board and its encoder (``board``),
each camera module's sensor modes and field of view (``sensors``), and camera memory
(``memory``).

Pure facts and rules over what a Pi reports (``/proc/device-tree/model``, ``/proc/meminfo``,
libcamera's camera model and mode list), shared by the settings (which refuse what a Pi cannot
do) and the camera source (which configures what it can). Nothing here imports picamera2, the
camera package or the settings: every rule is tested off a Pi.
"""
