"""Errors raised for bad user input: each message names the file or key and says how to fix it."""


class CaefError(Exception):
    """Base class of every error caef raises for bad input or configuration."""


class DataError(CaefError):
    """A dataset tree, list entry, image, mask or annotation is missing or malformed."""
