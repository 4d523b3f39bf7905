"""The ``pinthesky-iot`` program: the sidecar that carries MQTT (AWS IoT Core: the shadow,
jobs, the Pi In The Sky topics) to and from the four JSON files (``sidecar``), its IoT jobs
(``jobs``), and its MQTT 5 connection on awscrt or paho-mqtt (``mqtt``).

A separate process from the daemon: it may import the shared modules at the top of
``pinthesky`` (settings, the event files, the JSON stream, notify) and the key check of
``cloud.credentials``; never the daemon.
"""
