"""The multinomial loss and its gradient over a block of rows, in one pass per row.

For each row the kernel computes the class scores, the softmax, the row's loss and its
residual, then adds the residual times the row into the gradient while the row is still in
cache: the matrix comes from memory once per evaluation (scipy's ``X @ W`` then ``X.T @ R``
read it twice and make two temporaries of rows x classes). The classes are processed in
groups of `LANES`: each non-zero entry is one vector multiply-add of a group's coefficients
into the scores and one of the residuals into the gradient (`_add_scaled`), and the softmax
takes its exps as vector instructions too (`_exp_lanes`); scipy's sparse products use
none. Measured on 30,000 MNIST rows as float32 CSR, one thread: the whole evaluation 11.6 ms
against ~38 ms for scikit-learn's own loss and gradient (half of scripts/kernel_bench.py's
all-rows numbers; docs/strategies.md).

Precision: products in the data's precision (float32 for the prepared data: half the bytes
to read), softmax, loss and the per-row residuals in float64, and the gradient summed in
float32 over at most `PART_ROWS` rows before it is added in float64 (a float32 sum over
30,000 rows lost ~2e-3 of its relative precision).

Both passes, over CSR and over dense rows, run in the calling thread and add in a fixed
order, so a block's loss and gradient are the same bits in any process, whatever its BLAS or
numba threading (BLAS's products would split their sums by its thread count).

Numba compiles the kernels on first use in each process and caches them on disk
(``cache=True``); the first call in a fresh environment costs a few seconds.
"""

from __future__ import annotations

import contextlib
import functools
import math
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeAlias

import numba
import numpy as np
import scipy.sparse as sp
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from distrib.errors import DataError

#: Classes per vector group: 16 float32 (two AVX2 registers, one AVX-512 register).
LANES = 16
#: Class-versus-rest problems per vector group: 8 float32, one AVX2 register. Measured on
#: 60,000 MNIST rows: 5 problems in 18.9 ms with 8 lanes against 31.3 ms with 16, and one
#: problem in 15.5 ms (scikit-learn's loss and gradient of one: 17.4 ms).
BINARY_LANES = 8
#: Scores whose exp is taken in one vector step (`LANES` and `BINARY_LANES` are multiples).
EXP_LANES = 8
#: Dense rows with more non-zero entries than this share stay dense; others go CSR.
DENSE_ABOVE = 0.25
#: Bytes of a cache line: where the coefficient and gradient rows of a pass start.
CACHE_LINE = 64
#: Rows whose gradient is summed in the data's precision before it is added in float64.
PART_ROWS = 2048
# ``i & _NON_NEGATIVE`` is ``i`` for any index an array holds, and tells LLVM it is not
# negative: numba's wraparound of negative indices (a compare, shift and add before each
# load) then leaves the inner loops. Measured on 30,000 MNIST rows: 23 -> 16 ms.
_NON_NEGATIVE = np.int64(2**63 - 1)

Matrix: TypeAlias = np.ndarray | sp.csr_matrix


@intrinsic
def _lane_buffer(typingctx: Any, like: Any, size: Any) -> Any:
    """``size`` (a compile-time constant) scalars of ``like``'s dtype on the stack of the
    calling function.

    A stack buffer cannot alias any array, so LLVM keeps it in (vector) registers; a heap
    array in its place keeps every multiply-add a scalar load, multiply-add and store.
    """
    if not isinstance(size, types.IntegerLiteral):
        return None  # numba types the call again with the constant as a literal
    dtype = like.dtype
    n = size.literal_value

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        count = context.get_constant(types.intp, n)
        return cgutils.alloca_once(builder, context.get_value_type(dtype), size=count)

    return types.CPointer(dtype)(like, size), codegen


class _Lanes:
    """What the vector math of `_in_place_lanes` builds with: ``n`` float64 lanes."""

    def __init__(self, builder: Any, n: int) -> None:
        self.builder, self.n = builder, n
        self.vector = ir.VectorType(ir.DoubleType(), n)
        self.integers = ir.VectorType(ir.IntType(64), n)

    def splat(self, value: float) -> Any:
        """``value`` in every lane."""
        return ir.Constant(self.vector, [value] * self.n)

    def call(self, name: str, *operands: Any) -> Any:
        """LLVM's intrinsic ``name`` (``llvm.fma``: fused on every machine) on vectors."""
        kind = ir.FunctionType(self.vector, [self.vector] * len(operands))
        module = self.builder.module
        function = cgutils.get_or_insert_function(module, kind, f"{name}.v{self.n}f64")
        return self.builder.call(function, list(operands))

    def series(self, x: Any, coefficients: tuple[float, ...]) -> Any:
        """``sum(c_k x**k)`` by Horner's rule, a fused multiply-add per term."""
        total = self.splat(coefficients[-1])
        for term in reversed(coefficients[:-1]):
            total = self.call("llvm.fma", total, x, self.splat(term))
        return total


def _in_place_lanes(math: Callable[[_Lanes, Any], Any]) -> Any:
    """An intrinsic ``f(values, start, size)``: ``values[start:start + size] =
    math(values[...])`` as vector instructions, for float64 ``values`` and ``size`` a
    compile-time constant. ``math(lanes, x)`` builds the result from the loaded vector."""

    def typer(typingctx: Any, values: Any, start: Any, size: Any) -> Any:
        if not isinstance(size, types.IntegerLiteral) or values.dtype != types.float64:
            return None  # numba types the call again with the size as a literal

        def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
            array, first, _ = args
            lanes = _Lanes(builder, size.literal_value)
            data = context.make_array(signature.args[0])(context, builder, array).data
            where = builder.bitcast(cgutils.gep(builder, data, first), lanes.vector.as_pointer())
            builder.store(math(lanes, builder.load(where, align=8)), where, align=8)
            return context.get_dummy_value()

        return types.none(values, start, size), codegen

    typer.__doc__ = math.__doc__
    return intrinsic(typer)


#: exp(x) = 2**n * exp(r), n = rint(x / ln 2), r = x - n ln 2 (ln 2 in two parts: n * `_LN2_HI`
#: is exact for |n| < 2**11), exp(r) by its Taylor series to r**13 / 13! (|r| <= ln 2 / 2:
#: truncation < 1e-17): within 1 ulp of numpy's exp over [-708, 0] (tested).
_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10
_LOG2E = 1.44269504088896338700e00
#: 1.5 * 2**52: a double below 2**51 in magnitude plus this holds its integer part in the low
#: bits of its mantissa.
_ROUND_TO_INTEGER = 6755399441055744.0
_EXP_TERMS = tuple(1.0 / math.factorial(k) for k in range(14))


def _exp_math(lanes: _Lanes, x: Any) -> Any:
    """``exp(x)`` for x <= 709; below -708 (and -inf) gives 0.

    libm's exp is a call per value (~5 ns each, 10 per row: ~3 ms per pass over MNIST);
    this is its arithmetic spelled out, with fused multiply-adds (``llvm.fma``, fused on
    every machine), so a row's softmax gives the same bits wherever it runs."""
    builder, splat, call = lanes.builder, lanes.splat, lanes.call
    clamped = call("llvm.maxnum", x, splat(-709.0))  # 2**n stays a normal number
    whole = call("llvm.rint", builder.fmul(clamped, splat(_LOG2E)))
    r = call("llvm.fma", whole, splat(-_LN2_HI), clamped)
    r = call("llvm.fma", whole, splat(-_LN2_LO), r)
    # 2**whole built in the exponent field: whole + 1.5 * 2**52 holds whole in its low bits
    # (AVX2 has no vector conversion of doubles to 64-bit integers: LLVM made one scalar
    # conversion per lane of `fptosi`); the shift drops the rest.
    integers = lanes.integers
    shifted = builder.bitcast(builder.fadd(whole, splat(_ROUND_TO_INTEGER)), integers)
    exponent = builder.add(shifted, ir.Constant(integers, [1023] * lanes.n))
    power = builder.bitcast(builder.shl(exponent, ir.Constant(integers, [52] * lanes.n)), x.type)
    result = builder.fmul(lanes.series(r, _EXP_TERMS), power)
    tiny = builder.fcmp_ordered("<", x, splat(-708.0))
    return builder.select(tiny, splat(0.0), result)


#: log(m) = 2 atanh(s), s = (m - 1) / (m + 1), m in [sqrt(1/2), sqrt(2)] (|s| <= 0.172): the
#: series 2 s (1 + s**2 / 3 + s**4 / 5 + ...) to s**21 (truncation < 1e-18).
_SQRT2 = 1.41421356237309514547e00
_ATANH_TERMS = tuple(1.0 / (2 * k + 1) for k in range(11))


def _log1p_math(lanes: _Lanes, x: Any) -> Any:
    """``log1p(x)`` for x in [0, 1]: within 3 ulp of numpy's there (tested).

    The binary loss takes ``log1p(exp(-|z|))`` per class per row; libm's were a call each.
    ``1 + x`` is rounded to ``u``, ``log(u)`` taken as ``k ln 2 + log(m)`` (``u = 2**k m``),
    and the rounding of ``u`` added back as ``(x - (u - 1)) / u`` (exact small ``x`` too)."""
    builder, splat, call = lanes.builder, lanes.splat, lanes.call
    u = builder.fadd(x, splat(1.0))
    lost = builder.fdiv(builder.fsub(x, builder.fsub(u, splat(1.0))), u)
    halve = builder.fcmp_ordered(">", u, splat(_SQRT2))
    m = builder.select(halve, builder.fmul(u, splat(0.5)), u)
    k = builder.select(halve, splat(1.0), splat(0.0))
    f = builder.fsub(m, splat(1.0))  # exact: m is within a factor 2 of 1
    s = builder.fdiv(f, builder.fadd(f, splat(2.0)))
    log_m = builder.fmul(builder.fadd(s, s), lanes.series(builder.fmul(s, s), _ATANH_TERMS))
    low = call("llvm.fma", k, splat(_LN2_LO), builder.fadd(log_m, lost))
    return call("llvm.fma", k, splat(_LN2_HI), low)


#: ``_exp_lanes(values, start, size)``: `_exp_math` in place on ``size`` lanes.
_exp_lanes = _in_place_lanes(_exp_math)
#: ``_log1p_lanes(values, start, size)``: `_log1p_math` in place on ``size`` lanes.
_log1p_lanes = _in_place_lanes(_log1p_math)


@intrinsic
def _add_scaled(
    typingctx: Any, y: Any, y_start: Any, x: Any, x_start: Any, a: Any, size: Any
) -> Any:
    """``y[y_start:y_start + size] += a * x[x_start:x_start + size]``: one vector fused
    multiply-add (``llvm.fma``: fused on every machine) on ``size`` (a compile-time
    constant) entries of ``y``'s dtype, loaded and stored as one vector.

    ``y`` may be a stack buffer (`_lane_buffer`): LLVM then keeps it in registers."""
    if not isinstance(size, types.IntegerLiteral) or x.dtype != y.dtype:
        return None
    n = size.literal_value

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        y_array, y_first, x_array, x_first, scale, _ = args
        y_type, _, x_type, _, scale_type, _ = signature.args
        dtype = y_type.dtype
        vector = ir.VectorType(context.get_value_type(dtype), n)
        align = dtype.bitwidth // 8

        def at(array_type: Any, array: Any, first: Any) -> Any:
            data = context.make_array(array_type)(context, builder, array).data
            return builder.bitcast(cgutils.gep(builder, data, first), vector.as_pointer())

        y_at, x_at = at(y_type, y_array, y_first), at(x_type, x_array, x_first)
        factor = context.cast(builder, scale, scale_type, dtype)
        splat = builder.insert_element(
            ir.Constant(vector, ir.Undefined), factor, ir.Constant(ir.IntType(32), 0)
        )
        zeros = ir.Constant(ir.VectorType(ir.IntType(32), n), [0] * n)
        splat = builder.shuffle_vector(splat, ir.Constant(vector, ir.Undefined), zeros)
        kind = ir.FunctionType(vector, [vector] * 3)
        name = f"llvm.fma.v{n}f{dtype.bitwidth}"
        fma = cgutils.get_or_insert_function(builder.module, kind, name)
        total = builder.call(
            fma, [splat, builder.load(x_at, align=align), builder.load(y_at, align=align)]
        )
        builder.store(total, y_at, align=align)
        return context.get_dummy_value()

    return types.none(y, y_start, x, x_start, a, size), codegen


@intrinsic
def _borrowed(typingctx: Any, array: Any) -> Any:
    """``array`` as a view that holds no reference to its memory (the caller keeps the
    array alive).

    Numba counts the references of an array passed to a function, inlined or not: for the
    per-row helpers that was two atomic increments and decrements per row, ~20 ns a row
    (60,000 MNIST rows: 5.9 -> 4.8 ms of per-row work, measured with empty rows). A
    borrowed view has no reference count to update."""
    if not isinstance(array, types.Array):
        return None

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        view = context.make_array(array)(context, builder, value=args[0])
        view.meminfo = cgutils.get_null_value(view.meminfo.type)
        view.parent = cgutils.get_null_value(view.parent.type)
        return view._getvalue()

    return array(array), codegen


def _kernel(func: Any = None, *, inline: bool = False) -> Any:
    """Compile ``func`` with numba: once per process and signature, cached on disk where
    numba finds a writable folder (else compiled again in each process); contractions into
    FMA allowed, no other reordering of floating-point operations. ``inline``: a per-row
    helper, compiled into each pass that calls it (a call per row cost ~3 ms per pass over
    MNIST's rows)."""
    if func is None:
        return functools.partial(_kernel, inline=inline)
    options: dict[str, Any] = {"nogil": True, "boundscheck": False, "fastmath": {"contract"}}
    if inline:
        options["inline"] = "always"
    try:
        return numba.njit(cache=True, **options)(func)
    except RuntimeError:  # "cannot cache function ...: no locator available"
        return numba.njit(cache=False, **options)(func)


def _entry(data, table, p):  # pragma: no cover - numba compiles the overload below
    """Entry ``p`` of a CSR matrix's values: ``data[p]``, or ``table[data[p]]`` where the
    values are one-byte codes into a table (`CodedCSR`)."""
    raise NotImplementedError


@overload(_entry, inline="always")
def _entry_impl(data, table, p):  # numba: its typing and implementation agree, unannotated
    if isinstance(data.dtype, types.Integer):  # codes: the table holds all 256 values
        return lambda data, table, p: table[data[p]]
    return lambda data, table, p: data[p]


@_kernel(inline=True)
def _softmax_row(scores, intercept, code, weight):
    """Turn one row's scores into its weighted residual in place; return its loss.

    ``scores`` holds a multiple of `EXP_LANES` entries (the padding classes' come back 0)."""
    n_classes = intercept.shape[0]
    top = -np.inf
    for k in range(n_classes):
        scores[k] += intercept[k]
        top = max(top, scores[k])
    own = scores[code]
    for k in range(n_classes):
        scores[k] -= top
    for k in range(n_classes, scores.shape[0]):
        scores[k] = -np.inf
    for start in range(0, scores.shape[0], EXP_LANES):
        _exp_lanes(scores, start, EXP_LANES)
    total = 0.0
    for k in range(n_classes):
        total += scores[k]
    share = weight / total
    for k in range(n_classes):
        scores[k] *= share
    scores[code] -= weight
    return weight * (np.log(total) + top - own)


@_kernel(inline=True)
def _binary_row(scores, intercept, code, weight, positives, losses):
    """One row's scores as independent class-versus-rest problems (scikit-learn's
    ``HalfBinomialLoss``): class ``k``'s residual in place of its score, its loss added to
    ``losses[k]``. Each class's arithmetic is its own (a lane of the same vector
    instructions): its bits do not depend on which other classes share the pass.

    With ``e = exp(-|z|)``: the loss ``max(z, 0) + log1p(e) - y z`` and the residual
    ``1 / (1 + e) - y`` (``z >= 0``) or ``e / (1 + e) - y``, as scikit-learn's; the exps and
    log1ps as vectors of `EXP_LANES` (libm's were two calls per class per row)."""
    z = numba.carray(_lane_buffer(scores, EXP_LANES), EXP_LANES)  # type: ignore[call-arg]
    e = numba.carray(_lane_buffer(scores, EXP_LANES), EXP_LANES)
    soft = numba.carray(_lane_buffer(scores, EXP_LANES), EXP_LANES)
    n_classes = positives.shape[0]
    for first in range(0, n_classes, EXP_LANES):
        count = min(EXP_LANES, n_classes - first)
        z[:] = 0.0
        for k in range(count):
            z[k] = scores[first + k] + intercept[first + k]
        for k in range(EXP_LANES):
            e[k] = -abs(z[k])
        _exp_lanes(e, 0, EXP_LANES)
        for k in range(EXP_LANES):
            soft[k] = e[k]
        _log1p_lanes(soft, 0, EXP_LANES)
        for k in range(EXP_LANES):  # the loss but for -y z, the residual but for -y
            soft[k] += max(z[k], 0.0)
            e[k] = (1.0 if z[k] >= 0 else e[k]) / (1.0 + e[k])
        for k in range(count):
            y = 1.0 if code == positives[first + k] else 0.0
            losses[first + k] += weight * (soft[k] - y * z[k])
            scores[first + k] = weight * (e[k] - y)


@_kernel(inline=True)
def _softmax_residuals(scores, intercept, code, weight, positives, losses):
    """`_softmax_row`, its loss into ``losses[0]`` (``positives`` unused: the signature of
    `_binary_row`, so that a pass takes either)."""
    losses[0] += _softmax_row(scores, intercept, code, weight)


@_kernel
def _flush(G, G_total, n_lanes):
    """Add the low-precision partial gradient ``G`` (groups x features x ``n_lanes``, flat)
    into ``G_total`` (features x classes, float64) and clear it."""
    n_features, n_classes = G_total.shape
    for k in range(n_classes):
        group, lane = k // n_lanes, k % n_lanes
        for j in range(n_features):
            G_total[j, k] += G[(group * n_features + j) * n_lanes + lane]
    G[:] = 0


class _Passes(NamedTuple):
    csr: Any
    dense: Any


def _make_passes(n_lanes: int, softmax: bool) -> _Passes:
    """The passes over CSR and dense rows, compiled for groups of ``n_lanes`` classes, each
    row's scores turned into its residuals by `_softmax_residuals` (``softmax``) or
    `_binary_row`. Both are named here as module globals and ``softmax`` is a constant the
    compiler folds (a function held in the closure would make numba's cache miss in every
    new process: the passes compiled again, ~3 s).

    ``W`` and ``G`` are flat, laid out as groups x features x ``n_lanes``: a feature's
    coefficients of one group are one vector (one cache line for 16 float32), read (``W``)
    or updated (``G``) with one vector multiply-add per non-zero entry."""

    @_kernel
    def _csr_pass(
        data,
        indices,
        indptr,
        table,
        codes,
        weights,
        positives,
        W,
        intercept,
        G,
        G_total,
        g0,
        losses,
    ):
        """Rows of a CSR matrix: add their loss to ``losses``, their gradient to ``G_total``
        (features x classes, float64) and their intercept gradient to ``g0`` (the softmax loss,
        or one binary problem per class of ``positives``). Values are ``data``, or
        ``table[data]`` where ``data`` holds one-byte codes (`_entry`).

        ``W`` holds the coefficients (padded classes are 0) in the data's precision; ``G``,
        of the same layout and dtype, sums the gradient of up to `PART_ROWS` rows before it
        is added to ``G_total``."""
        n_classes = intercept.shape[0]
        n_features = G_total.shape[0]
        width = W.shape[0] // n_features
        lanes = numba.carray(_lane_buffer(W, n_lanes), n_lanes)  # type: ignore[call-arg]
        odd = numba.carray(_lane_buffer(W, n_lanes), n_lanes)
        owned = np.zeros(width)
        # The arrays the per-row helpers take, without reference counting (`_borrowed`).
        scores, intercept = _borrowed(owned), _borrowed(intercept)
        positives, losses = _borrowed(positives), _borrowed(losses)
        for i in range(indptr.shape[0] - 1):
            if i % PART_ROWS == 0:
                _flush(G, G_total, n_lanes)
            lo, hi = indptr[i] & _NON_NEGATIVE, indptr[i + 1] & _NON_NEGATIVE
            for group in range(0, width, n_lanes):
                base = group // n_lanes * n_features  # this group's first vector of W, G
                # Two sums, even and odd entries: two chains of multiply-adds in flight.
                lanes[:] = 0
                odd[:] = 0
                for p in range(lo, hi - 1, 2):
                    p &= _NON_NEGATIVE
                    j, j2 = indices[p] & _NON_NEGATIVE, indices[p + 1] & _NON_NEGATIVE
                    x, x2 = _entry(data, table, p), _entry(data, table, p + 1)
                    _add_scaled(lanes, 0, W, (base + j) * n_lanes, x, n_lanes)
                    _add_scaled(odd, 0, W, (base + j2) * n_lanes, x2, n_lanes)
                if (hi - lo) % 2:
                    j = indices[hi - 1] & _NON_NEGATIVE
                    x = _entry(data, table, hi - 1)
                    _add_scaled(lanes, 0, W, (base + j) * n_lanes, x, n_lanes)
                for k in range(n_lanes):
                    scores[group + k] = lanes[k] + odd[k]
            weight = weights[i] if weights.shape[0] else 1.0
            if softmax:
                _softmax_residuals(scores, intercept, codes[i], weight, positives, losses)
            else:
                _binary_row(scores, intercept, codes[i], weight, positives, losses)
            for k in range(n_classes):
                g0[k] += scores[k]
            for group in range(0, width, n_lanes):
                base = group // n_lanes * n_features  # this group's first vector of W, G
                for k in range(n_lanes):  # the padding classes' scores stay 0 (their W is 0)
                    lanes[k] = scores[group + k]
                for p in range(lo, hi):
                    p &= _NON_NEGATIVE
                    j = indices[p] & _NON_NEGATIVE
                    _add_scaled(G, (base + j) * n_lanes, lanes, 0, _entry(data, table, p), n_lanes)
        _flush(G, G_total, n_lanes)

    @_kernel
    def _dense_pass(X, codes, weights, positives, W, intercept, G, G_total, g0, losses):
        """`_csr_pass` for the rows of a dense C-ordered matrix: the same arithmetic over every
        column, in one thread, so a block gives the same bits in any process (BLAS's products
        would split their sums by its thread count)."""
        n_classes = intercept.shape[0]
        n_features = X.shape[1]
        width = W.shape[0] // n_features
        lanes = numba.carray(_lane_buffer(W, n_lanes), n_lanes)  # type: ignore[call-arg]
        odd = numba.carray(_lane_buffer(W, n_lanes), n_lanes)
        owned = np.zeros(width)
        # The arrays the per-row helpers take, without reference counting (`_borrowed`).
        scores, intercept = _borrowed(owned), _borrowed(intercept)
        positives, losses = _borrowed(positives), _borrowed(losses)
        for i in range(X.shape[0]):
            if i % PART_ROWS == 0:
                _flush(G, G_total, n_lanes)
            for group in range(0, width, n_lanes):
                base = group // n_lanes * n_features  # this group's first vector of W, G
                lanes[:] = 0
                odd[:] = 0
                for j in range(0, n_features - 1, 2):
                    j &= _NON_NEGATIVE
                    _add_scaled(lanes, 0, W, (base + j) * n_lanes, X[i, j], n_lanes)
                    _add_scaled(odd, 0, W, (base + j + 1) * n_lanes, X[i, j + 1], n_lanes)
                if n_features % 2:
                    last = (n_features - 1) & _NON_NEGATIVE
                    _add_scaled(lanes, 0, W, (base + last) * n_lanes, X[i, last], n_lanes)
                for k in range(n_lanes):
                    scores[group + k] = lanes[k] + odd[k]
            weight = weights[i] if weights.shape[0] else 1.0
            if softmax:
                _softmax_residuals(scores, intercept, codes[i], weight, positives, losses)
            else:
                _binary_row(scores, intercept, codes[i], weight, positives, losses)
            for k in range(n_classes):
                g0[k] += scores[k]
            for group in range(0, width, n_lanes):
                base = group // n_lanes * n_features  # this group's first vector of W, G
                for k in range(n_lanes):
                    lanes[k] = scores[group + k]
                for j in range(n_features):
                    j &= _NON_NEGATIVE
                    _add_scaled(G, (base + j) * n_lanes, lanes, 0, X[i, j], n_lanes)
        _flush(G, G_total, n_lanes)

    return _Passes(_csr_pass, _dense_pass)


#: The softmax passes: the classes in groups of `LANES`.
_SOFTMAX = _make_passes(LANES, softmax=True)
#: The class-versus-rest passes: problems in groups of `BINARY_LANES`.
_BINARY = _make_passes(BINARY_LANES, softmax=False)


@_kernel
def _count_nonzeros(X, counts):
    """Non-zero entries of each row of a dense matrix into ``counts``."""
    for i in range(X.shape[0]):
        n = 0
        for j in range(X.shape[1]):
            if X[i, j] != 0:
                n += 1
        counts[i] = n


@_kernel
def _fill_csr(X, indptr, data, indices):
    """The non-zero entries of a dense matrix, row by row, into CSR arrays."""
    for i in range(X.shape[0]):
        p = indptr[i]
        for j in range(X.shape[1]):
            if X[i, j] != 0:
                data[p] = X[i, j]
                indices[p] = j
                p += 1


_FLOATS = (np.float32, np.float64)


def index_dtype(n_features: int) -> type[np.integer[Any]]:
    """The column index type of a block: uint16 where every column fits (784 for MNIST), a
    quarter less memory per block and per pass than int32 (the pass ~14 % faster)."""
    return np.uint16 if n_features <= 2**16 else np.int32


def _narrow(indices: np.ndarray, n_features: int) -> np.ndarray:
    return np.ascontiguousarray(indices, dtype=index_dtype(n_features))


def block_csr(
    shape: tuple[int, int], data: np.ndarray, indices: np.ndarray, indptr: np.ndarray
) -> sp.csr_matrix:
    """A CSR matrix holding these very arrays (scipy's constructor would check and widen
    uint16 indices; only the kernels read these)."""
    csr = sp.csr_matrix(shape, dtype=data.dtype)
    csr.data, csr.indices, csr.indptr = data, indices, indptr
    return csr


@dataclass(frozen=True, eq=False)
class CodedCSR:
    """CSR rows whose values are one-byte codes into a table of 256 floats.

    MNIST's pixels take 256 values: a value as its code is 1 byte instead of 4, and with
    uint16 column indices an entry costs 3 bytes to read instead of 6 (float32 CSR) or 8
    (float32 with int32 indices). The passes look each code up in the table (it stays in
    the L1 cache) and compute with the table's value: the same bits as the decoded rows.

    Attributes
    ----------
    shape : (n_rows, n_features)
    data : ndarray of uint8
        Each stored entry's code.
    indices, indptr : ndarray
        As a CSR matrix's (uint16 or int32 indices, int64 ``indptr``).
    table : ndarray of shape (256,)
        float32 or float64: the value of each code.
    """

    shape: tuple[int, int]
    data: np.ndarray
    indices: np.ndarray
    indptr: np.ndarray
    table: np.ndarray

    @property
    def dtype(self) -> np.dtype[Any]:
        """The rows' precision: the table's."""
        return self.table.dtype

    @property
    def nnz(self) -> int:
        return len(self.data)

    def decoded(self) -> sp.csr_matrix:
        """The rows as a CSR matrix of the table's floats."""
        return block_csr(self.shape, self.table[self.data], self.indices, self.indptr)


#: What the passes take: dense rows, CSR rows, or CSR rows with coded values.
Rows: TypeAlias = np.ndarray | sp.csr_matrix | CodedCSR


def dense_to_csr(X: np.ndarray) -> sp.csr_matrix:
    """``sp.csr_matrix(X)`` in two compiled passes (scipy's takes 0.4 s for 30,000 MNIST
    rows here; this ~30 ms)."""
    counts = np.empty(X.shape[0], dtype=np.int64)
    _run(_count_nonzeros, X, counts)
    indptr = np.zeros(X.shape[0] + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    data = np.empty(int(indptr[-1]), dtype=X.dtype)
    indices = np.empty(int(indptr[-1]), dtype=index_dtype(X.shape[1]))
    _run(_fill_csr, X, indptr, data, indices)
    return block_csr(X.shape, data, indices, indptr)


def rows_at(X: Rows, positions: np.ndarray) -> sp.csr_matrix:
    """Rows ``positions`` (increasing) of ``X`` as a CSR matrix of floats with int32 (or
    int64) column indices, as scipy and `hessian_product` take it."""
    if not isinstance(X, CodedCSR | sp.spmatrix | sp.sparray):
        dense = np.ascontiguousarray(np.asarray(X)[positions])
        return sp.csr_matrix(dense if dense.dtype in _FLOATS else dense.astype(np.float64))
    starts, stops = X.indptr[positions], X.indptr[np.asarray(positions) + 1]
    counts = (stops - starts).astype(np.int64)
    entries = np.repeat(starts - np.cumsum(counts) + counts, counts) + np.arange(counts.sum())
    data = X.data[entries]
    values = X.table[data] if isinstance(X, CodedCSR) else data
    if values.dtype not in _FLOATS:
        values = values.astype(np.float64)
    indices = X.indices[entries].astype(np.int32 if X.shape[1] < 2**31 else np.int64)
    indptr = np.concatenate([[0], np.cumsum(counts)])
    return sp.csr_matrix((values, indices, indptr), shape=(len(positions), X.shape[1]))


_COMPILE_LOCK = threading.Lock()
_COMPILED: set[tuple[Any, ...]] = set()


@contextlib.contextmanager
def _vectorize_across_lanes() -> Iterator[None]:
    """Compile with LLVM's SLP vectorizer (numba leaves it off by default) and without its
    loop vectorizer (which would vectorize the loop over a row's entries with gathers,
    slower than scalar code here). Measured: 26 -> 8 ms for the scores of 30,000 rows."""
    config: Any = numba.config
    saved = config.SLP_VECTORIZE, config.LOOP_VECTORIZE
    config.SLP_VECTORIZE, config.LOOP_VECTORIZE = 1, 0
    try:
        yield
    finally:
        config.SLP_VECTORIZE, config.LOOP_VECTORIZE = saved


def _types_of(args: tuple[Any, ...]) -> tuple[Any, ...]:
    """What numba compiles a kernel for, read cheaply (``numba.typeof`` costs ~9 us each)."""
    return tuple(
        (a.dtype.str, a.ndim, a.flags.c_contiguous, a.flags.writeable, a.flags.aligned)
        if isinstance(a, np.ndarray)
        else type(a)
        for a in args
    )


def _run(kernel: Any, *args: Any) -> Any:
    """Call a kernel, compiling it first (vectorized) for these argument types if needed."""
    key = (kernel, _types_of(args))
    if key not in _COMPILED:
        with _COMPILE_LOCK, _vectorize_across_lanes():
            kernel.compile(tuple(numba.typeof(a) for a in args))
            _COMPILED.add(key)
    return kernel(*args)


def prepare(X: Rows) -> Rows:
    """``X`` as `loss_grad` takes it best: float32 or float64, C-ordered, and CSR unless
    more than `DENSE_ABOVE` of its entries are non-zero (the CSR pass skips zeros, the dense
    pass reads no indices); a `CodedCSR` as it is. A copy only where needed; blocks of rows
    convert once, when they are loaded."""
    if isinstance(X, CodedCSR):
        return X
    if sp.issparse(X):
        given: Any = X
        if given.format == "csr" and given.indices.dtype == np.uint16 and X.dtype in _FLOATS:
            return X  # prepared already (scipy would widen the indices back)
        csr = sp.csr_matrix(X)
        dtype = csr.dtype if csr.dtype in _FLOATS else np.float64
        return block_csr(
            csr.shape,
            np.ascontiguousarray(csr.data, dtype=dtype),
            _narrow(csr.indices, csr.shape[1]),
            np.ascontiguousarray(csr.indptr),
        )
    X = np.asarray(X)
    dtype = X.dtype if X.dtype in (np.float32, np.float64) else np.float64
    X = np.ascontiguousarray(X, dtype=dtype)
    if X.ndim == 2 and np.count_nonzero(X) <= DENSE_ABOVE * X.size:
        return dense_to_csr(X)
    return X


def _aligned_zeros(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """Zeros whose first entry starts a cache line (`CACHE_LINE` bytes).

    The passes read and write one vector of ``W`` and ``G`` per non-zero entry; 16 float32
    are one cache line when aligned, two when not (numpy aligns to 16 bytes).
    Measured on all 60,000 MNIST rows here: 27 ms a pass aligned, 34-41 ms misaligned."""
    itemsize = np.dtype(dtype).itemsize
    raw = np.zeros(int(np.prod(shape)) * itemsize + CACHE_LINE, dtype=np.uint8)
    skip = -raw.ctypes.data % CACHE_LINE
    return raw[skip : skip + int(np.prod(shape)) * itemsize].view(dtype).reshape(shape)


class PassSums:
    """The loss and gradient sums of one pass over rows that come in consecutive pieces.

    `loss_grad` gives all the rows as one piece; a block streamed from disk gives them a
    piece at a time (`add`), and gets the same bits where every piece but the last holds a
    multiple of `PART_ROWS` rows: the pass flushes its low-precision partial gradient at
    the same rows either way.

    Parameters
    ----------
    coef : ndarray of shape (n_classes, n_features)
    intercept : ndarray of shape (n_classes,)
    dtype : float32 or float64
        The rows' precision (a `CodedCSR`'s table's): the products' and the coefficients'.
    positives : ndarray of shape (n_classes,), optional
        One class-versus-rest problem per row of ``coef`` (its positive class); None: the
        softmax loss.
    """

    def __init__(
        self,
        coef: np.ndarray,
        intercept: np.ndarray,
        dtype: Any,
        positives: np.ndarray | None = None,
    ) -> None:
        n_classes, n_features = coef.shape
        self.n_classes, self.n_features = n_classes, n_features
        if positives is None:
            self.positives = np.empty(0, dtype=np.intp)
            self.losses = np.zeros(1)
            self.passes, n_lanes = _SOFTMAX, LANES
        else:
            self.positives = np.ascontiguousarray(positives, dtype=np.intp)
            if self.positives.shape != (n_classes,):
                raise DataError(
                    f"{self.positives.size} positive classes for {n_classes} rows of coef: one each"
                )
            self.losses = np.zeros(n_classes)
            self.passes, n_lanes = _BINARY, BINARY_LANES
        self.intercept = np.ascontiguousarray(intercept, dtype=np.float64)
        self.W = _lane_layout(coef, dtype, n_lanes)
        self.G = _aligned_zeros(self.W.shape, dtype)
        self.G_total = np.zeros((n_features, n_classes))
        self.g0 = np.zeros(n_classes)
        self._ragged = False  # a piece ended inside a part of `PART_ROWS` rows

    def add(self, X: Rows, codes: np.ndarray, weights: np.ndarray | None = None) -> None:
        """Add the rows of ``X`` (the next piece: `prepare`'s output or a `CodedCSR`), their
        class indices ``codes`` and their weights (None: 1 each)."""
        X = prepare(X)
        n_classes, n_features = self.n_classes, self.n_features
        if X.shape != (len(codes), n_features) or (
            weights is not None and len(weights) != len(codes)
        ):
            raise DataError(
                f"X has shape {X.shape}, codes {np.shape(codes)}, weights "
                f"{None if weights is None else np.shape(weights)} and coef "
                f"{(n_classes, n_features)}: they must agree (rows, features)"
            )
        if X.dtype != self.W.dtype:
            raise DataError(f"rows of {X.dtype} in a pass of {self.W.dtype} rows")
        if self._ragged:
            raise ValueError(f"only the last piece of a pass may hold other than a multiple "
                             f"of {PART_ROWS} rows")  # fmt: skip
        self._ragged = len(codes) % PART_ROWS != 0
        codes = np.ascontiguousarray(codes, dtype=np.intp)
        if not self.positives.size and codes.size and (codes.min() < 0 or codes.max() >= n_classes):
            raise DataError(f"class indices must lie in 0..{n_classes - 1} (one row of coef each)")
        weights = np.empty(0) if weights is None else np.ascontiguousarray(weights, np.float64)
        sums = (self.positives, self.W, self.intercept, self.G, self.G_total, self.g0, self.losses)
        if isinstance(X, CodedCSR):
            _run(self.passes.csr, X.data, X.indices, X.indptr, X.table, codes, weights, *sums)
        elif sp.issparse(X):
            csr: Any = X
            table = _NO_TABLE[csr.dtype.type]
            _run(self.passes.csr, csr.data, csr.indices, csr.indptr, table, codes, weights, *sums)
        else:
            _run(self.passes.dense, X, codes, weights, *sums)

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """The losses (one, or one per problem) and the gradient as (classes, features + 1)."""
        grad = np.empty((self.n_classes, self.n_features + 1))
        grad[:, :-1] = self.G_total.T
        grad[:, -1] = self.g0
        return self.losses.copy(), grad


_NO_TABLE = {dtype: np.zeros(0, dtype=dtype) for dtype in _FLOATS}


def _make_hessian_pass(n_lanes: int, softmax: bool) -> Any:
    """The Hessian's product over CSR rows, compiled for groups of ``n_lanes`` classes:
    the softmax Hessian (``softmax``) or independent binary problems' (`_make_passes`
    explains the constants)."""

    @_kernel
    def _csr_hessian_pass(data, indices, indptr, P, weights, V, v0, H, H_total, h0):
        """Rows of a CSR matrix: add their Hessian times the direction ``V`` (laid out as
        `_make_passes`' ``W``, intercept ``v0``) into ``H_total`` (features x classes,
        float64) and ``h0``: row ``i`` adds ``x_i r_i`` with ``u_i = V x_i + v0`` and, for
        the softmax, ``r_i = w_i p_i * (u_i - p_i . u_i)``, ``p_i`` its probabilities
        (``P[i]``, fixed); for binary problems (a class each) ``r_i = w_i P[i] * u_i``,
        ``P[i]`` each problem's curvature ``p (1 - p)`` at the row.

        The scores' and the gradient's loops of `_make_passes`' CSR pass, with the residual
        taken from ``P`` in place of the softmax (no exps)."""
        n_classes = v0.shape[0]
        n_features = H_total.shape[0]
        width = V.shape[0] // n_features
        lanes = numba.carray(_lane_buffer(V, n_lanes), n_lanes)  # type: ignore[call-arg]
        odd = numba.carray(_lane_buffer(V, n_lanes), n_lanes)
        owned = np.zeros(width)
        u = _borrowed(owned)
        for i in range(indptr.shape[0] - 1):
            if i % PART_ROWS == 0:
                _flush(H, H_total, n_lanes)
            lo, hi = indptr[i] & _NON_NEGATIVE, indptr[i + 1] & _NON_NEGATIVE
            for group in range(0, width, n_lanes):
                base = group // n_lanes * n_features
                lanes[:] = 0
                odd[:] = 0
                for p in range(lo, hi - 1, 2):
                    p &= _NON_NEGATIVE
                    j, j2 = indices[p] & _NON_NEGATIVE, indices[p + 1] & _NON_NEGATIVE
                    _add_scaled(lanes, 0, V, (base + j) * n_lanes, data[p], n_lanes)
                    _add_scaled(odd, 0, V, (base + j2) * n_lanes, data[p + 1], n_lanes)
                if (hi - lo) % 2:
                    j = indices[hi - 1] & _NON_NEGATIVE
                    _add_scaled(lanes, 0, V, (base + j) * n_lanes, data[hi - 1], n_lanes)
                for k in range(n_lanes):
                    u[group + k] = lanes[k] + odd[k]
            weight = weights[i] if weights.shape[0] else 1.0
            mean = 0.0
            for k in range(n_classes):
                u[k] += v0[k]
                if softmax:
                    mean += P[i, k] * u[k]
            for k in range(n_classes):
                u[k] = weight * P[i, k] * (u[k] - mean)
                h0[k] += u[k]
            for group in range(0, width, n_lanes):
                base = group // n_lanes * n_features
                for k in range(n_lanes):  # the padding classes' stay 0 (their V is 0)
                    lanes[k] = u[group + k]
                for p in range(lo, hi):
                    p &= _NON_NEGATIVE
                    j = indices[p] & _NON_NEGATIVE
                    _add_scaled(H, (base + j) * n_lanes, lanes, 0, data[p], n_lanes)
        _flush(H, H_total, n_lanes)

    return _csr_hessian_pass


_SOFTMAX_HESSIAN = _make_hessian_pass(LANES, softmax=True)
_BINARY_HESSIAN = _make_hessian_pass(BINARY_LANES, softmax=False)


def _lane_layout(coef: np.ndarray, dtype: Any, n_lanes: int = LANES) -> np.ndarray:
    """``coef`` (classes x features) as the passes read it: flat, groups x features x
    ``n_lanes``, padded with zeros, aligned to a cache line (`_make_passes`)."""
    n_classes, n_features = coef.shape
    n_groups = -(-n_classes // n_lanes)
    W = _aligned_zeros((n_groups, n_features, n_lanes), dtype)
    for group in range(n_groups):
        classes = coef[group * n_lanes : (group + 1) * n_lanes]
        W[group, :, : len(classes)] = classes.T
    return W.reshape(-1)


def probabilities(X: Matrix, coef: np.ndarray, intercept: np.ndarray) -> np.ndarray:
    """Each row's softmax probabilities (rows x classes, float64)."""
    scores = np.asarray(X @ coef.T.astype(np.float64)) + intercept
    scores -= scores.max(axis=1, keepdims=True)
    np.exp(scores, out=scores)
    scores /= scores.sum(axis=1, keepdims=True)
    return scores


def hessian_product(
    X: sp.csr_matrix,
    P: np.ndarray,
    weights: np.ndarray | None,
    V: np.ndarray,
    *,
    softmax: bool = True,
) -> np.ndarray:
    """The rows' summed softmax Hessian, at the coefficients that give probabilities ``P``,
    times the direction ``V``; or, with ``softmax=False``, the Hessians of independent
    binary problems (a row of ``V`` each) times their directions.

    Parameters
    ----------
    X : csr_matrix of shape (n_rows, n_features)
        float32 or float64 values, int32 or int64 column indices.
    P : ndarray of shape (n_rows, n_classes)
        Each row's probabilities (`probabilities`); with ``softmax=False`` each problem's
        curvature ``p (1 - p)`` at each row.
    weights : ndarray of shape (n_rows,) or None
        Each row's weight; 1 when None.
    V : ndarray of shape (n_classes, n_features + 1)
        The direction: coefficients, then the intercept.
    softmax : bool
        The softmax Hessian, or the binary problems' (each problem's product the same bits
        whichever problems share the call).

    Returns
    -------
    ndarray of shape (n_classes, n_features + 1)
        ``sum_i w_i (diag(p_i) - p_i p_i^T) (V x~_i) x~_i^T`` with ``x~_i = (x_i, 1)``
        (binary: ``sum_i w_i P[i, k] (V[k] . x~_i) x~_i`` for each problem ``k``), summed
        in one thread in a fixed order (the same bits in any process).
    """
    n_rows, n_features = X.shape
    n_classes = P.shape[1]
    if P.shape != (n_rows, n_classes) or V.shape != (n_classes, n_features + 1):
        raise DataError(f"X {X.shape}, P {P.shape} and V {V.shape} disagree")
    dtype = X.dtype if X.dtype in _FLOATS else np.float64
    kernel, n_lanes = (_SOFTMAX_HESSIAN, LANES) if softmax else (_BINARY_HESSIAN, BINARY_LANES)
    packed = _lane_layout(V[:, :-1], dtype, n_lanes)
    H = _aligned_zeros(packed.shape, dtype)
    H_total = np.zeros((n_features, n_classes))
    h0 = np.zeros(n_classes)
    w = np.empty(0) if weights is None else np.ascontiguousarray(weights, dtype=np.float64)
    v0 = np.ascontiguousarray(V[:, -1], dtype=np.float64)
    P = np.ascontiguousarray(P, dtype=np.float64)
    _run(kernel, X.data.astype(dtype, copy=False), X.indices, X.indptr, P, w, packed, v0, H,
         H_total, h0)  # fmt: skip
    return np.column_stack([H_total.T, h0])


def _evaluate(
    X: Rows,
    codes: np.ndarray,
    coef: np.ndarray,
    intercept: np.ndarray,
    weights: np.ndarray | None,
    positives: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray]:
    """One pass over the rows: the softmax loss (``positives`` None, one loss) or one
    binary loss per row of ``coef``, and the gradient as (classes, features + 1)."""
    X = prepare(X)
    sums = PassSums(coef, intercept, X.dtype, positives)
    sums.add(X, codes, weights)
    return sums.result()


def loss_grad(
    X: Rows,
    codes: np.ndarray,
    coef: np.ndarray,
    intercept: np.ndarray,
    weights: np.ndarray | None = None,
) -> tuple[float, np.ndarray]:
    """Summed softmax loss of the rows of ``X`` and its gradient.

    Parameters
    ----------
    X : ndarray, csr_matrix or CodedCSR of shape (n_rows, n_features)
        float32 or float64 (`prepare` converts anything else, once if you keep the result).
    codes : ndarray of shape (n_rows,)
        Each row's class index, 0 .. n_classes - 1.
    coef : ndarray of shape (n_classes, n_features)
    intercept : ndarray of shape (n_classes,)
    weights : ndarray of shape (n_rows,), optional
        Each row's weight (class and sample weights); 1 when omitted.

    Returns
    -------
    loss : float
        ``sum_i w_i * (logsumexp(z_i) - z_i[y_i])`` with ``z_i = coef @ x_i + intercept``.
    grad : ndarray of shape (n_classes, n_features + 1)
        Its gradient: coefficients, then the intercept (float64).
    """
    losses, grad = _evaluate(X, codes, coef, intercept, weights, None)
    return float(losses[0]), grad


def binary_loss_grad(
    X: Matrix,
    codes: np.ndarray,
    positives: np.ndarray,
    coef: np.ndarray,
    intercept: np.ndarray,
    weights: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Summed losses and gradients of several class-versus-rest problems, in one pass.

    Row ``i`` is positive in problem ``k`` when ``codes[i] == positives[k]``. Each problem's
    loss and gradient are the same bits whichever other problems share the pass.

    Parameters
    ----------
    X : ndarray or csr_matrix of shape (n_rows, n_features)
    codes : ndarray of shape (n_rows,)
        Each row's class (any integers).
    positives : ndarray of shape (n_problems,)
        The positive class of each problem.
    coef : ndarray of shape (n_problems, n_features)
    intercept : ndarray of shape (n_problems,)
    weights : ndarray of shape (n_rows,), optional
        Each row's weight, the same in every problem; 1 when omitted.

    Returns
    -------
    losses : ndarray of shape (n_problems,)
        ``sum_i w_i * (log(1 + exp(z_ik)) - y_ik * z_ik)``: scikit-learn's half binomial
        loss, with ``z_ik = coef[k] @ x_i + intercept[k]``.
    grad : ndarray of shape (n_problems, n_features + 1)
        Their gradients: coefficients, then the intercept (float64).
    """
    return _evaluate(X, codes, coef, intercept, weights, positives)


def warm_up(
    losses: tuple[str, ...] = ("softmax", "binary"),
    dtypes: tuple[type[np.floating[Any]], ...] = (np.float32, np.float64),
) -> None:
    """Compile, or load from numba's cache, the kernels of ``losses`` (``softmax``,
    ``binary``: class-versus-rest) for rows of ``dtypes``, CSR and dense: a worker that
    runs this before a fit neither waits for them nor counts their code (~25 MB) in the
    fit's memory. Each kernel loads from the cache in ~40 ms; others load when first
    called."""
    codes, zeros = np.zeros(2, dtype=np.intp), np.zeros((2, 2))

    def evaluate(X: Matrix) -> None:
        if "softmax" in losses:
            loss_grad(X, codes, zeros, zeros[0])
        if "binary" in losses:
            binary_loss_grad(X, codes, codes[:1], zeros[:1], zeros[0, :1])

    for dtype in dtypes:
        for index in (np.int32, np.int64):
            eye = sp.csr_matrix(np.eye(2, dtype=dtype))
            indices, indptr = eye.indices.astype(np.uint16), eye.indptr.astype(index)
            evaluate(block_csr(eye.shape, eye.data, indices, indptr))
        if "binary" in losses:  # Newton-CG's products on its sample (`rows_at`'s CSR)
            sample = rows_at(np.eye(2, dtype=dtype), np.arange(2))
            hessian_product(sample, np.ones((2, 1)), None, np.ones((1, 3)), softmax=False)
        dense_to_csr(np.zeros((1, 2), dtype=dtype))
        evaluate(np.ones((2, 2), dtype=dtype))
        if "softmax" in losses:  # rows streamed from disk: codes into a table
            eye = sp.csr_matrix(np.eye(2, dtype=np.uint8))
            indices, indptr = eye.indices.astype(np.uint16), eye.indptr.astype(np.int64)
            table = np.arange(256, dtype=dtype)
            loss_grad(CodedCSR(eye.shape, eye.data, indices, indptr, table), codes, zeros, zeros[0])
