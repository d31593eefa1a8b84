"""Kernel error codes (backends/errors.py): one table, and messages that name the layer and
the cause, driven through compiled executables and the Cython executor.

A kernel cannot raise, so it returns a code; these tests pin that every code a CPU kernel can
return is in the table, that the codes are distinct, and that each reaches the user as
"layer: cause" with the values involved.
"""

from __future__ import annotations

import ast
import pathlib

import numpy as np
import pytest

import engine
from backends import errors, get_backend
from backends.errors import BAD_TARGET, ERRORS
from engine.compiler import plan_graph
from engine.executable import Executable, build_plan
from graph import nn
from graph.ir import Graph, TensorType

CPU_KERNELS = pathlib.Path(errors.__file__).parent / "cpu"


class Classifier(nn.Module):
    """conv1 -> flatten -> fc on 1x6x6 images, 10 classes."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(4 * 4 * 4, 10)

    def forward(self, x):
        return self.fc(self.flatten(self.conv1(x)))


def _trainable(loss: str = "cross_entropy") -> Executable:
    return engine.compile(Classifier(), (1, 6, 6), batch=4, train=True, loss=loss)


def _kernel_failure(run) -> str:
    with pytest.raises(RuntimeError) as failure:
        run()
    return str(failure.value)


# **** The table ****


def test_codes_are_distinct_non_zero_and_named_as_in_the_kernels():
    constants = {
        name: value
        for name, value in vars(errors).items()
        if name.isupper() and isinstance(value, int)
    }
    assert len(set(constants.values())) == len(constants), constants
    assert 0 not in constants.values()
    assert {code: error.name for code, error in ERRORS.items()} == {
        value: name for name, value in constants.items()
    }


def _outcomes(expr: ast.expr) -> list[ast.expr]:
    """What an expression can evaluate to: both branches of ``a if c else b``."""
    if isinstance(expr, ast.IfExp):
        return _outcomes(expr.body) + _outcomes(expr.orelse)
    return [expr]


def _kernel_functions():
    """(file, function) for each @kernel function."""
    for path in sorted(CPU_KERNELS.glob("*.py")):
        for fn in ast.walk(ast.parse(path.read_text())):
            if not isinstance(fn, ast.FunctionDef):
                continue
            if any(ast.unparse(d).startswith("kernel(") for d in fn.decorator_list):
                yield path, fn


def test_every_code_a_cpu_kernel_returns_is_in_the_table():
    """A kernel returns 0 or a code imported from the table, never a bare number; BLAS calls
    return nothing (the library is bound at import, so a GEMM cannot fail to find it)."""
    names = {error.name for error in ERRORS.values()}
    functions = list(_kernel_functions())
    assert len(functions) > 40  # the scan sees the kernels
    for path, fn in functions:
        where = f"{path.name}: {fn.name}"
        returns = [n for n in ast.walk(fn) if isinstance(n, ast.Return) and n.value is not None]
        for value in (o for r in returns for o in _outcomes(r.value)):
            ok = (isinstance(value, ast.Constant) and value.value == 0) or (
                isinstance(value, ast.Name) and value.id in names
            )
            assert ok, f"{where} line {value.lineno}: {ast.unparse(value)} is not a table code"
    for path in CPU_KERNELS.glob("*.py"):
        source = path.read_text()
        for name in names:
            assert f"\n{name} =" not in source, f"{path.name} defines its own {name}"
        if path.name != "blas.py":
            assert " gemm(" not in source, f"{path.name} calls BLAS without blas.matmul"


# **** Each code, through a compiled executable ****


def test_cross_entropy_target_out_of_range_names_layer_value_and_sample():
    exe = _trainable()
    # forward_backward checks targets in Python; write past that check, as a buggy data
    # pipeline writing into the target buffer would, so the kernel sees it
    exe._target[:] = [1, 2, 12, 3]
    message = _kernel_failure(exe._training.execute)
    assert message == "loss: cross_entropy target 12 out of range [0, 10) at sample 2"


def test_cross_entropy_fractional_target_is_not_a_class_index():
    exe = _trainable()
    exe._target[:] = [1, 2.5, 3, 4]
    message = _kernel_failure(exe._training.execute)
    assert message == "loss: cross_entropy target 2.5 at sample 1 is not a class index in [0, 10)"


def test_margin_target_out_of_range_names_the_margin_loss():
    exe = _trainable(loss="margin")
    exe._target[:] = [1, 2, 3, -1]
    message = _kernel_failure(exe._training.execute)
    assert message == "loss: margin target -1 out of range [0, 10) at sample 3"


def test_batch_norm_training_at_one_value_per_channel_fails_at_trace_time():
    model = nn.Sequential(nn.BatchNorm2d(16))
    with pytest.raises(ValueError, match=r"more than 1 value per channel"):
        engine.compile(model, (16, 1, 1), batch=1, train=True)


def _batch_norm_train_at_batch_one() -> Executable:
    """An executable whose one node, bn1, is batch_norm_train on [1, 16, 1, 1]. The shape rule
    rejects that graph at trace time, so it is built by hand; planning, lowering and running
    are the compiler's own, so the kernel's check is what fails."""
    graph = Graph()
    x = graph.add_value("input", TensorType((1, 16, 1, 1)), "input")
    channel = TensorType((16,))
    stats = [graph.add_value(f"bn1.{k}", channel, "state") for k in ("running_mean", "running_var")]
    affine = [graph.add_value(f"bn1.{k}", channel, "param") for k in ("weight", "bias")]
    attrs = {"eps": 1e-5, "momentum": 0.1}
    bn = graph.add_node(
        "batch_norm_train", [x, *stats, *affine], [x.type, channel, channel], attrs, "bn1"
    )
    graph.outputs = [bn.outputs[0]]
    storage = {v.name: np.ones(v.shape, np.float32) for v in [x, *stats, *affine, bn.outputs[0]]}
    device = get_backend("cpu")
    plan = build_plan(graph, device, storage, plan_graph(graph, device))
    return Executable(plan, None, storage, {}, None)


def test_batch_norm_train_kernel_reports_too_few_values_from_run_and_profile():
    exe = _batch_norm_train_at_batch_one()
    x = np.ones((1, 16, 1, 1), np.float32)
    expected = (
        "bn1: batch_norm in training mode needs more than 1 value per channel, but got input "
        "[1, 16, 1, 1] (1 per channel; torch raises the same)"
    )
    assert _kernel_failure(lambda: exe.run(x)) == expected
    assert _kernel_failure(lambda: exe.profile(x, repeat=1)) == expected


def test_unknown_code_names_the_layer_the_op_and_the_code():
    """A code missing from the table (a kernel out of step with errors.py), handed to the
    plan's check as the runner would hand it over."""
    plan = _trainable()._inference
    conv_step = plan.step_nodes.index("conv1")
    message = _kernel_failure(lambda: plan.check(conv_step, 99))
    assert message == (
        "conv1: conv2d kernel failed with error code 99, which backends/errors.py does not define"
    )
    plan.check(conv_step, 0)  # 0 is success


def test_bad_target_message_after_the_buffer_was_fixed_still_names_the_rule():
    exe = _trainable()
    loss = next(n for n in exe.training_graph.nodes if n.op == "cross_entropy")
    exe._target[:] = [1, 2, 3, 4]
    message = errors.kernel_error_message(loss, BAD_TARGET, exe._training.buffer)
    assert message == "loss: cross_entropy target out of range [0, 10)"
