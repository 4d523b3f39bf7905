"""Everything that talks to AWS from the camera: IoT credentials (``credentials``), the S3
uploader (``uploader``), CloudWatch logs and metrics (``cloudwatch``, ``metrics``,
``telemetry``) and the Pi In The Sky data plane (``dataplane``).

May import the recording pipeline's types (``record``), the live view's worker threads
(``live.worker``), the command types (``control.commands``) and the shared modules; never the
daemon.
"""
