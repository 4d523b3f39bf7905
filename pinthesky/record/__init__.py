"""The recording pipeline: the pre-event packet ring (``ring``), motion analysis (``motion``),
the recorder that turns motion into clips (``recorder``), clips on disk (``clips``), their MP4
container (``mp4``), and the typed events and bus that carry its facts to the other
components (``bus``).

May import only the shared modules at the top of ``pinthesky`` (settings, errors, media, logs).
"""
