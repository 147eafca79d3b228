"""The live deployable: the ``fraudstream`` command line and, around the core, its adapters."""

__all__: list[str] = []
