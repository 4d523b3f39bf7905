"""The ``pinthesky-iot`` program: the sidecar that carries MQTT (AWS IoT Core: the shadow,
jobs, the Pi In The Sky topics) to and from the four JSON files (``sidecar``), and its IoT
jobs (``jobs``).

A separate process from the daemon: it may import the shared modules at the top of
``pinthesky`` (settings, the event files, the JSON stream, notify) and the cloud credentials;
never the daemon or its concerns.
"""
