"""The ``pinthesky`` program: its command line (``cli``), the offline ``pinthesky detect`` tool
(``detect``) and the composition root (``app``) that builds every component from the settings,
wires them on the event bus and stops them in one order.

This is the top of the daemon: it may import any concern package (``record``, ``camera``,
``cloud``, ``control``, ``live``, ``local``, ``alerts``) and the shared modules at the top of
``pinthesky``; nothing below imports it back.
"""
