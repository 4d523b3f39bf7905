"""Home Assistant through MQTT discovery, to a broker on the home network: the connection
(``client``, on paho-mqtt), what the camera announces (``discovery``: one device, its entities
and topics) and the daemon's side (``bridge``: states from the event bus, commands through the
page's path of changes).

May import the recording pipeline's events, the local changes, the cloud's upload events, the
health readings and the shared modules. It sees the daemon only through the small ``Host``
protocol ``bridge`` declares.
"""
