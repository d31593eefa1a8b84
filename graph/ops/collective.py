"""Collective ops: values that data-parallel training (``engine.distributed``) shares across
its processes.

``allreduce_mean(v) -> v'`` (same type) is a copy in one process. Under ``engine.distributed``
the executor splits its plan after each allreduce_mean step and, before any later step reads
it, averages the node's OUTPUT buffer across all processes in place (MPI Allreduce, then / N),
so the node is a plan split point. Every process compiles the same graph, so all of them reach
the same allreduce_mean nodes in the same order. The average is over processes, so it is the
global value of a per-process mean only when the batches are of equal size (they are: each
process compiles the same batch).

Its VJP follows the distributed loss's convention: each process differentiates its local
loss L_p and the driver averages the parameter gradients afterwards, so the gradients a
process computes are those of sum_p L_p. With v' = mean_p v_p, the gradient of sum_p L_p with
respect to v_q is sum_p g_p / N: the allreduce_mean of the output gradients (a copy in one
process). Synchronised BatchNorm never reaches this rule: its apply op returns no gradient
for the statistics it reads, because its own VJP emits the whole input gradient
(``graph.ops.sync_norm``).
"""

from __future__ import annotations

from graph.ops import no_macs, register, same_shape


def _allreduce_mean_vjp(node, grads, wants, emit):
    """grad_v = allreduce_mean(grad_v'): every process's output depends on every input."""
    return [emit("allreduce_mean", [grads[0]])[0]]


register("allreduce_mean", same_shape, no_macs, vjp=_allreduce_mean_vjp)

COLLECTIVES = frozenset({"allreduce_mean"})  # the ops after which a plan splits
