"""The error bad input raises, shared by every reader and check of the data layer."""


class DataError(ValueError):
    """Input data is malformed; the message names the file (column, row) and the problem."""
