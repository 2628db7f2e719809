"""Tickets this api replica gave that the queue estimate's figures may not show yet.

The estimate refreshes from JetStream every half second; a burst arrives within one
refresh. Each ticket of the fair-share gate is counted here under the refresh epoch it was
given in, until its job starts (a worker took it) or a refresh that began after it
succeeded (its job is in that refresh's `num_pending`). `queue_estimate.QueueEstimator`
adds the count to the model's queue.
"""

from __future__ import annotations


class FreshTickets:
    def __init__(self) -> None:
        self._epoch = 0
        self._by_model: dict[str, dict[int, int]] = {}
        """model -> epoch -> tickets given in that epoch whose job has not started."""
        self._totals: dict[str, int] = {}
        """model -> the sum over its epochs (read on every request)."""

    def new_epoch(self) -> int:
        """A refresh begins: tickets from now on belong to the next epoch."""
        self._epoch += 1
        return self._epoch

    def counted(self, epoch: int) -> None:
        """The refresh that began at `epoch` succeeded: earlier tickets are in its figures."""
        for model in list(self._by_model):
            by_epoch = self._by_model[model]
            for old in [e for e in by_epoch if e < epoch]:
                self._totals[model] -= by_epoch.pop(old)
            if not by_epoch:
                del self._by_model[model], self._totals[model]

    def count(self, model: str) -> int:
        return self._totals.get(model, 0)

    def __contains__(self, model: str) -> bool:
        """Some ticket of `model` counts (entries with no ticket left are removed)."""
        return model in self._by_model

    def given(self, model: str) -> int:
        """A ticket of `model` was given; its epoch, for `started`."""
        by_epoch = self._by_model.setdefault(model, {})
        by_epoch[self._epoch] = by_epoch.get(self._epoch, 0) + 1
        self._totals[model] = self._totals.get(model, 0) + 1
        return self._epoch

    def started(self, model: str, epoch: int) -> None:
        """The ticket's job started (or it was given back): the workers' figures have it."""
        by_epoch = self._by_model.get(model)
        if by_epoch is None or epoch not in by_epoch:
            return
        self._totals[model] -= 1
        if by_epoch[epoch] <= 1:
            del by_epoch[epoch]
            if not by_epoch:
                del self._by_model[model], self._totals[model]
        else:
            by_epoch[epoch] -= 1
