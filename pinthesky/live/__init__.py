"""Live view: pictures from the running camera, as MJPEG for the local page and as MPEG-1 for
the Pi In The Sky data plane, without stopping recording or motion detection.

``tap`` hands pictures over from the camera thread, ``encoders`` turns them into JPEG or MPEG-1
on ``worker`` threads, ``mjpeg`` shares one JPEG encoder between the viewers of the local page,
``session`` streams to a data-plane connection. Nothing here imports PyAV until a consumer
starts.
"""
