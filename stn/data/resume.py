"""Loaders that restart mid-epoch exactly where a checkpoint left them."""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterator, Optional, Tuple


class ResumableLoader:
    """Mixin for a loader whose ``__iter__`` makes the same batches for the same epoch (seeded
    order and transforms): Lightning's stateful-loader protocol, so that a run resumed from a
    mid-epoch checkpoint continues at that step with the data an uninterrupted run would see.

    :meth:`state_dict` is the epoch being iterated and how many of its batches training consumed
    (``position_fn``, the Trainer's count; without it the batches handed out, which counts a
    prefetched one too). After :meth:`load_state_dict`, the next iteration of that epoch makes its
    first batches and drops them: every random draw of the order and of the transforms stays the
    same, for the price of preparing those batches once more. Other epochs are not affected.

    Mixed in before the loader class (``class R(ResumableLoader, Loader)``), whose ``__iter__`` it
    wraps; that class provides ``epoch_fn`` (or ``_calls``, the count of iterations) as
    :class:`~stn.data.loaders.TensorLoader` does.
    """

    #: batches of the current epoch that training has consumed (set by the datamodule)
    position_fn: Optional[Callable[[], int]] = None
    _resume: Optional[Tuple[int, int]] = None
    _iterating: Tuple[int, int] = (-1, 0)  # (epoch, batches handed out in it)

    def state_dict(self) -> Dict[str, Any]:
        epoch, handed_out = self._iterating
        return {"epoch": epoch, "batches": self.position_fn() if self.position_fn else handed_out}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self._resume = (int(state["epoch"]), int(state["batches"]))

    def __iter__(self) -> Iterator[Any]:
        # the epoch the loader's own __iter__ is about to use
        epoch = self.epoch_fn() if self.epoch_fn is not None else self._calls
        skip = self._resume[1] if self._resume is not None and self._resume[0] == epoch else 0
        self._resume = None
        self._iterating = (epoch, skip)
        for i, batch in enumerate(super().__iter__()):
            if i >= skip:
                self._iterating = (epoch, i + 1)
                yield batch


class ResumableData:
    """Mixin for a ``LightningDataModule`` (before it in the bases) whose training loader is a
    :class:`ResumableLoader`: its position goes into the datamodule's part of the checkpoint.

    Lightning restores the datamodule before it makes the loaders, while its own restore of loader
    states is skipped when the loader was made early (``trainer.estimated_stepping_batches``, which
    sizes the LR schedule, makes it before the checkpoint's loops are restored). The datamodule's
    ``train_dataloader`` passes its loader through :meth:`resumable`.
    """

    _train_loader: Optional[ResumableLoader] = None
    _train_resume: Optional[Dict[str, Any]] = None

    def state_dict(self) -> Dict[str, Any]:
        return {"train_loader": self._train_loader.state_dict()} if self._train_loader is not None else {}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        self._train_resume = state_dict.get("train_loader")

    def resumable(self, loader: ResumableLoader) -> ResumableLoader:
        """``loader``, counting its position by the Trainer's batches and restored from a checkpoint."""
        trainer = self.trainer
        if trainer is not None:
            loader.position_fn = lambda: trainer.fit_loop.epoch_loop.batch_progress.current.processed
        if self._train_resume is not None:
            loader.load_state_dict(self._train_resume)
            self._train_resume = None
        self._train_loader = loader
        return loader
