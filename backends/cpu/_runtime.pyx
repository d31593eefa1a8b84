# cython: language_level=3, boundscheck=False, wraparound=False
"""The executor: a whole static plan run in one ``nogil`` loop over cfunc pointers.

Each step is ``int32 step(void** ptrs, int64* ints)`` (DESIGN.md): the runner passes the
step's slice of one flat pointer array and one flat int array. A non-zero return stops the
loop; ``run`` reports which step failed and its code, and the caller names the layer.
"""

from libc.stdint cimport int32_t, int64_t, uintptr_t
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

import numpy as np

ctypedef int32_t (*StepFunction)(void** ptrs, int64_t* ints) noexcept nogil


cdef class Runner:
    """Holds the packed plan (arrays made by a backend's ``pack``) and runs it."""

    cdef object _arrays
    cdef const uintptr_t[::1] _functions
    cdef const uintptr_t[::1] _pointers
    cdef const int64_t[::1] _ints
    cdef const int64_t[::1] _pointer_start
    cdef const int64_t[::1] _int_start
    cdef readonly Py_ssize_t count

    def __init__(self, functions, pointers, ints, pointer_start, int_start):
        self._arrays = (functions, pointers, ints, pointer_start, int_start)
        self._functions = np.ascontiguousarray(functions, np.uintp)
        self._pointers = np.ascontiguousarray(pointers, np.uintp)
        self._ints = np.ascontiguousarray(ints, np.int64)
        self._pointer_start = np.ascontiguousarray(pointer_start, np.int64)
        self._int_start = np.ascontiguousarray(int_start, np.int64)
        self.count = self._functions.shape[0]

    def run(self, Py_ssize_t repeat=1, Py_ssize_t start=0, Py_ssize_t stop=-1):
        """Run steps [start, stop) (stop -1: to the end) ``repeat`` times; returns
        (failed step index, code) or (-1, 0)."""
        cdef Py_ssize_t i = 0, _
        if stop < 0 or stop > self.count:
            stop = self.count
        cdef int32_t code = 0
        cdef void** pointers = <void**>&self._pointers[0]
        cdef int64_t* ints = <int64_t*>&self._ints[0]
        with nogil:
            for _ in range(repeat):
                for i in range(start, stop):
                    code = (<StepFunction>self._functions[i])(
                        pointers + self._pointer_start[i], ints + self._int_start[i]
                    )
                    if code != 0:
                        break
                if code != 0:
                    break
        if code != 0:
            return (i, code)
        return (-1, 0)

    def profile(self, Py_ssize_t repeat=1):
        """Run the plan ``repeat`` times timing each step; returns (seconds per step summed
        over the repeats as an array, failed step index, code)."""
        cdef Py_ssize_t i = 0, _
        cdef int32_t code = 0
        cdef timespec before, after
        cdef void** pointers = <void**>&self._pointers[0]
        cdef int64_t* ints = <int64_t*>&self._ints[0]
        times = np.zeros(self.count, np.float64)
        cdef double[::1] seconds = times
        with nogil:
            for _ in range(repeat):
                for i in range(self.count):
                    clock_gettime(CLOCK_MONOTONIC, &before)
                    code = (<StepFunction>self._functions[i])(
                        pointers + self._pointer_start[i], ints + self._int_start[i]
                    )
                    clock_gettime(CLOCK_MONOTONIC, &after)
                    seconds[i] += (after.tv_sec - before.tv_sec) + 1e-9 * (
                        after.tv_nsec - before.tv_nsec
                    )
                    if code != 0:
                        break
                if code != 0:
                    break
        if code != 0:
            return times, i, code
        return times, -1, 0
