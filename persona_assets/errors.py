"""The base of every error that means "your input is wrong", as opposed to a bug."""


class PersonaInputError(ValueError):
    """Bad input: a file, a setting or a registry. The message says where and what."""
