"""The exceptions pinthesky raises itself. Foreign exceptions are translated at the boundary
into one of these, whose message is a single line a user can act on."""


class PintheskyError(Exception):
    """Base class: the message is one line meant for the user."""


class ConfigError(PintheskyError):
    """Settings that do not validate; ``errors`` holds one line per problem."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


class SourceError(PintheskyError):
    """A camera or video source that cannot be opened or died."""


class ClipStoreError(PintheskyError):
    """The clip directory cannot be used (missing, not writable, not a directory)."""
