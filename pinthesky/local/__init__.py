"""The control side of the local page: the ``/api/`` routes (``api.py``) and the page's
script (``script.py``). The HTTP server itself is ``pinthesky/web.py``."""
