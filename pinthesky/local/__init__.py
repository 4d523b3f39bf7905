"""The local web server on the camera (``web``), its page (``page``), the ``/api/`` routes of
the control page (``api``) and the page's script (``script``).

May import the recording pipeline's clip store, the live view, the event files and the shared
modules. It sees the daemon only through the small ``Host`` protocol ``api`` declares.
"""
