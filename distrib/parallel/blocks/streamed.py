"""A block whose rows stay on disk: every pass reads them a piece at a time.

`StreamedBlock` holds its rows' class indices and where they are in a row store
(`distrib.parallel.row_store`); each evaluation streams the pieces through one
`distrib.linear.softmax.PassSums`, reading the next piece while the kernel runs on this one.
The pieces are whole parts of the kernel's sums, so the loss and gradient are the bits of the
same rows held in memory (`distrib.parallel.blocks.block.RowBlock`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from distrib.linear import softmax
from distrib.linear.model import predict_codes
from distrib.linear.newton import RowSample, joined, stride_rows
from distrib.linear.softmax import Rows
from distrib.parallel.blocks.block import class_codes, log_block_load
from distrib.parallel.row_store import PIECE_ROWS, PassReads, RowStore


@dataclass(eq=False)
class StreamedBlock:
    """Rows ``first:first + n_rows`` of ``store``, block of the training matrix from row
    ``start``; ``codes``: each row's class index (the smallest integer type that holds
    them: 1 byte a row is all a streamed block keeps per row). ``checked``: the store's
    files' signature when a pass last checked the rows' CSR structure whole."""

    store: RowStore
    first: int
    codes: np.ndarray
    start: int
    piece_rows: int = PIECE_ROWS
    checked: tuple[tuple[int, int], ...] | None = None

    def _pieces(self, reads: list[PassReads] | None = None) -> Iterator[tuple[int, Rows]]:
        """This block's rows, a piece at a time; the structure of the CSR checked on the
        first pass (and again if the files change), as the checksums are."""
        signature = self.store.signature()
        check = signature != self.checked
        stop = self.first + self.n_rows
        yield from self.store.pieces(self.first, stop, self.piece_rows, reads, check)
        self.checked = signature  # a whole pass went through

    @property
    def n_rows(self) -> int:
        return len(self.codes)

    def loss_grad(
        self, coef: np.ndarray, intercept: np.ndarray, class_weight: np.ndarray | None
    ) -> tuple[float, np.ndarray, PassReads]:
        """One pass over the rows, streamed: their summed loss, its gradient, and what the
        pass read."""
        sums = softmax.PassSums(coef, intercept, self.store.dtype)
        reads: list[PassReads] = []
        for row, piece in self._pieces(reads):
            at = row - self.first
            codes = self.codes[at : at + piece.shape[0]].astype(np.intp)
            sums.add(piece, codes, None if class_weight is None else class_weight[codes])
        losses, grad = sums.result()
        return float(losses[0]), grad, reads[0] if reads else PassReads()

    def predict(self, coef: np.ndarray, intercept: np.ndarray) -> np.ndarray:
        """Each row's predicted class index, a piece at a time (in the type of ``codes``:
        one byte a row for up to 256 classes)."""
        found = [np.zeros(0, dtype=self.codes.dtype)]
        for _, piece in self._pieces():
            rows = piece.decoded() if isinstance(piece, softmax.CodedCSR) else piece
            found.append(predict_codes(rows, coef, intercept).astype(self.codes.dtype))
        return np.concatenate(found)

    def sample(self, stride: int) -> RowSample:
        """The rows whose index in the whole matrix is a multiple of ``stride``, read a
        piece at a time (`distrib.linear.newton.stride_rows`)."""
        samples = []
        for row, piece in self._pieces():
            at = row - self.first
            positions = stride_rows(self.start + at, piece.shape[0], stride)
            codes = self.codes[at + positions].astype(np.intp)
            samples.append(RowSample(softmax.rows_at(piece, positions), codes))
        if not samples:
            return RowSample(sp.csr_matrix((0, self.store.shape[1])), self.codes[:0])
        return joined(samples)


def open_streamed_block(
    store: RowStore,
    start: int,
    stop: int,
    classes: np.ndarray,
    run_id: str = "",
    offset: int | None = None,
    key: str = "",
) -> StreamedBlock:
    """Rows ``start:stop`` of ``store`` as a streamed block (on a worker, or here): only
    their labels are read now, as class indices into the sorted ``classes``; ``offset``
    and ``key`` as `distrib.parallel.blocks.block.load_block`'s."""
    offset = start if offset is None else offset
    log_block_load(run_id, key, offset, streamed=True)
    codes = class_codes(classes, store.labels(start, stop), start, stop)
    small = np.uint8 if len(classes) <= 2**8 else np.uint16 if len(classes) <= 2**16 else np.intp
    return StreamedBlock(store, start, codes.astype(small), offset)
