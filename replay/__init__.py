"""Offline and replay tools over files: readers, the backtest runner and report, the simulator."""

__all__: list[str] = []
