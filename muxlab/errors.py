"""The error type the CLI prints without a traceback."""


class MuxlabError(RuntimeError):
    pass
