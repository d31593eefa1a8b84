"""Synchronised BatchNorm on the CPU (graph/ops/sync_norm.py, backends/cpu/sync_norm.py).

In one process ``allreduce_mean`` is a copy, so ``compile(..., sync_batch_norm=1)`` must give
what ``batch_norm_train`` gives (``sync_batch_norm=None``) and what torch's train-mode
``F.batch_norm`` gives: loss, gradients and running statistics, in float32 and float64 on
NaN-poisoned buffers, and the gradients also by central differences.

Several processes are simulated without MPI, as ``engine.distributed`` runs them: one
executable per process (``sync_batch_norm=N``) on its slice of the batch; the training plans
run segment by segment, each ``allreduce_mean`` output is averaged across the processes
between segments, and the parameter gradients are averaged at the end. That must equal one
executable on the whole batch with local statistics.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import engine
import graph.functional as F
import graph.memory
import graph.nn as nn
from engine.checkpoint import load_checkpoint, save_checkpoint
from engine.optim import SGD
from graph.ops.optim import UPDATES
from tests.gradcheck import check_directional_derivative, check_gradients, randomize_params
from tests.helpers import DTYPES, NET_TOLERANCE, OP_TOLERANCE, Lambda, Net, rel_error
from zoo.resnet import BasicBlock, ResNet

SHAPE = (4, 3, 5, 5)


class ConvBnNet(nn.Module):
    """conv -> BatchNorm2d -> ReLU -> linear -> BatchNorm1d: both ranks the op takes. No
    biases before the BatchNorms: their gradient is zero up to rounding, which no relative
    test can compare."""

    def __init__(self, affine: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4, affine=affine)
        self.relu = nn.ReLU()
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(4 * 5 * 5, 6, bias=False)
        self.bn1d = nn.BatchNorm1d(6, affine=affine)

    def forward(self, x):
        return self.bn1d(self.fc(self.flatten(self.relu(self.bn(self.conv(x))))))


def torch_conv_bn_net(x: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
    """``ConvBnNet`` in train mode with torch functionals; updates the running statistics in
    ``p`` in place, as torch's BatchNorm does."""

    def bn(h, layer):
        stats = p[f"{layer}.running_mean"], p[f"{layer}.running_var"]
        affine = p.get(f"{layer}.weight"), p.get(f"{layer}.bias")
        return TF.batch_norm(h, *stats, *affine, training=True, momentum=0.1, eps=1e-5)

    h = TF.relu(bn(TF.conv2d(x, p["conv.weight"], padding=1), "bn"))
    return bn(TF.linear(h.flatten(1), p["fc.weight"]), "bn1d")


def small_resnet() -> ResNet:
    """Six BatchNorm layers: the stem, two blocks and a downsampling shortcut."""
    return ResNet(BasicBlock, [1, 1], num_classes=5, cifar_stem=True, widths=(4, 8))


def compile_training(model, shape, dtype, sync_batch_norm, loss="mse", **options):
    return engine.compile(
        model,
        shape[1:],
        shape[0],
        dtype=dtype,
        train=True,
        loss=loss,
        sync_batch_norm=sync_batch_norm,
        **options,
    )


def float_state(exe) -> dict[str, np.ndarray]:
    return {k: v.copy() for k, v in exe.params.items()}


# **** One process: equal to batch_norm_train and to torch ****


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
def test_one_process_equals_local_statistics_and_torch(affine, dtype, rng):
    """Two forward_backward calls (so the running statistics move twice) on fresh batches."""
    model = ConvBnNet(affine)
    local = compile_training(model, SHAPE, dtype, None, input_grad=True)
    synced = compile_training(model, SHAPE, dtype, 1, input_grad=True)
    randomize_params(synced, rng)
    local.load_state_dict(synced.state_dict())
    params = {k: torch.tensor(v) for k, v in synced.params.items()}
    for p in (params[k] for k in synced.grads if k != "input"):
        p.requires_grad_(True)
    # a network's worth of rounding: the synchronised form keeps its statistics in the
    # graph's dtype between steps, batch_norm_train in float64 inside one kernel
    tol = net_tol = NET_TOLERANCE[dtype]
    for _ in range(2):
        x = (2.0 * rng.standard_normal(SHAPE) + 0.5).astype(dtype)
        target = rng.standard_normal((SHAPE[0], 6)).astype(dtype)
        local.poison_buffers()
        synced.poison_buffers()
        loss, ref_loss = synced.forward_backward(x, target), local.forward_backward(x, target)
        tx = torch.tensor(x, requires_grad=True)
        for p in params.values():
            p.grad = None
        torch_loss = TF.mse_loss(torch_conv_bn_net(tx, params), torch.from_numpy(target))
        torch_loss.backward()
        assert rel_error(np.array([loss]), np.array([ref_loss])) < tol
        assert rel_error(np.array([loss]), np.array([torch_loss.item()])) < net_tol
        torch_grads = {
            "input": tx.grad,
            **{k: p.grad for k, p in params.items() if p.grad is not None},
        }
        assert set(synced.grads) == set(local.grads) == set(torch_grads)
        for name, grad in synced.grads.items():
            assert rel_error(grad, local.grads[name]) < tol, name
            assert rel_error(grad, torch_grads[name].numpy()) < net_tol, name
    for name, value in synced.params.items():
        assert rel_error(value, local.params[name]) < tol, name
        assert rel_error(value, params[name].detach().numpy()) < net_tol, name
    assert synced.state_dict()["bn.num_batches_tracked"] == 2


@pytest.mark.parametrize("dtype", DTYPES)
def test_parallel_kernels_equal_local_statistics(dtype, rng):
    """A layer large enough for the parallel kernel variants (above PARALLEL_MIN_WORK)."""
    shape = (4, 8, 32, 32)
    model = Net(nn.BatchNorm2d(8))
    local = compile_training(model, shape, dtype, None, input_grad=True)
    synced = compile_training(model, shape, dtype, 1, input_grad=True)
    randomize_params(synced, rng)
    local.load_state_dict(synced.state_dict())
    x, target = (rng.standard_normal(shape).astype(dtype) for _ in range(2))
    synced.poison_buffers()
    loss = synced.forward_backward(x, target)
    reference = local.forward_backward(x, target)
    assert rel_error(np.array([loss]), np.array([reference])) < OP_TOLERANCE[dtype]
    for name, grad in synced.grads.items():
        assert rel_error(grad, local.grads[name]) < OP_TOLERANCE[dtype], name
    for name, value in synced.params.items():
        assert rel_error(value, local.params[name]) < OP_TOLERANCE[dtype], name


def test_one_process_finite_differences(rng):
    """Central differences of the loss along a random direction (input and parameters)."""
    exe = compile_training(ConvBnNet(True), (3, 3, 5, 5), "float64", 1, input_grad=True)
    randomize_params(exe, rng)
    x = 2.0 * rng.standard_normal((3, 3, 5, 5)) + 0.5
    check_directional_derivative(exe, x, rng.standard_normal((3, 6)), rng)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gradient_written_over_the_output_gradient(dtype, monkeypatch, rng):
    """sync_batch_norm_grad may write grad_x over gy (its declared in-place variant): the
    same bits as with separate buffers."""
    model = ConvBnNet(True)
    plain = compile_training(model, SHAPE, dtype, 1, inplace=False)
    monkeypatch.setattr(graph.memory, "worth_aliasing", lambda aliased, plain: True)
    aliased = compile_training(model, SHAPE, dtype, 1)
    written_over = {
        aliased._training.graph.values[name].producer.op
        for name in aliased._training.memory.aliases
    }
    assert "sync_batch_norm_grad" in written_over
    randomize_params(plain, rng)
    aliased.load_state_dict(plain.state_dict())
    x, target = (rng.standard_normal(s).astype(dtype) for s in (SHAPE, (4, 6)))
    assert aliased.forward_backward(x, target) == plain.forward_backward(x, target)
    for name, grad in plain.grads.items():
        np.testing.assert_array_equal(aliased.grads[name], grad, err_msg=name)


@pytest.mark.parametrize("dtype", DTYPES)
def test_allreduce_mean_is_a_copy_with_its_vjp(dtype, rng):
    """In one process the op and its gradient (the allreduce_mean of the output gradient)
    are the identity: against torch and central differences (float64)."""
    model = Lambda(lambda x: F.relu(F._emit("allreduce_mean", [x])))
    x = rng.standard_normal((2, 3, 4, 4))
    x[np.abs(x) < 1e-3] = 1e-3
    check_gradients(model, lambda t, params: TF.relu(t), x.shape, dtype, rng, x=x)


# **** Several processes, simulated ****


def run_processes(exes, xs, targets) -> list[float]:
    """One forward_backward of ``len(exes)`` processes as ``engine.distributed`` runs it: the
    training plans run up to the update, stopping after each allreduce_mean step to average
    that node's output across the processes; then the parameter gradients are averaged.
    Returns each process's loss."""
    plans = [exe._training for exe in exes]
    for plan, x, target in zip(plans, xs, targets, strict=True):
        plan.buffer(plan.graph.inputs[0])[...] = x
        plan.buffer(plan.graph.values["target"])[...] = target
    nodes = [{node.name: node for node in plan.graph.nodes} for plan in plans]
    points = [
        [
            (i + 1, found[name])
            for i, name in enumerate(plan.step_nodes)
            if found[name].op == "allreduce_mean"
        ]
        for plan, found in zip(plans, nodes, strict=True)
    ]
    assert all([n.name for _, n in p] == [n.name for _, n in points[0]] for p in points)
    assert len(points[0]) > 0
    stop = plans[0].first_step_of(lambda node: node.op in UPDATES)
    done = 0
    for k, (step, _) in enumerate(points[0]):
        for plan in plans:
            plan.execute(done, step)
        outputs = [plan.buffer(p[k][1].outputs[0]) for plan, p in zip(plans, points, strict=True)]
        mean = sum(np.array(out) for out in outputs) / len(outputs)
        for out in outputs:
            out[...] = mean
        done = step
    for plan in plans:
        plan.execute(done, stop)
    for name in exes[0].grads:
        grads = [plan.buffer(plan.graph.grads[name]) for plan in plans]
        mean = sum(np.array(g) for g in grads) / len(grads)
        for g in grads:
            g[...] = mean
    return [float(plan.buffer(plan.graph.outputs[0])[0]) for plan in plans]


def _same_gradient(actual: np.ndarray, expected: np.ndarray) -> bool:
    """Within 1e-10 relative, or 1e-12 absolute: a gradient can be zero in exact arithmetic
    and rounding noise in both (a BatchNorm2d bias whose channel the ReLU passes whole for
    every sample: BatchNorm1d's input gradient sums to zero over the batch, and so does what
    reaches that channel), which no relative test can compare (seed 1638727067)."""
    difference = float(np.linalg.norm(np.asarray(actual) - expected))
    return difference <= 1e-10 * float(np.linalg.norm(expected)) + 1e-12


def _distributed_matches_one_process(model, shape, processes, loss, targets, rng):
    whole = compile_training(model, shape, "float64", None, loss=loss, optimizer=SGD(0.1))
    randomize_params(whole, rng)
    local_shape = (shape[0] // processes, *shape[1:])
    exes = [
        compile_training(model, local_shape, "float64", processes, loss=loss, optimizer=SGD(0.1))
        for _ in range(processes)
    ]
    for exe in exes:
        exe.load_state_dict(whole.state_dict())
        exe.poison_buffers()
    whole.poison_buffers()
    x = 2.0 * rng.standard_normal(shape) + 0.5
    expected_loss = whole.forward_backward(x, targets)
    losses = run_processes(exes, np.split(x, processes), np.split(targets, processes))
    assert rel_error(np.array([np.mean(losses)]), np.array([expected_loss])) < 1e-10
    for exe in exes:
        assert set(exe.grads) == set(whole.grads)
        for name, grad in exe.grads.items():
            assert _same_gradient(grad, whole.grads[name]), name
        for name, value in exe.params.items():
            assert rel_error(value, whole.params[name]) < 1e-10, name


@pytest.mark.parametrize("affine", [True, False])
def test_two_processes_equal_one_with_the_whole_batch(affine, rng):
    shape = (4, 3, 5, 5)  # two values per BatchNorm1d channel in each process
    targets = rng.standard_normal((4, 6))
    _distributed_matches_one_process(ConvBnNet(affine), shape, 2, "mse", targets, rng)


def test_two_processes_with_parallel_kernels(rng):
    shape = (8, 8, 32, 32)
    targets = rng.standard_normal(shape)
    _distributed_matches_one_process(Net(nn.BatchNorm2d(8)), shape, 2, "mse", targets, rng)


def test_processes_with_a_resnet(rng):
    """Three processes of two images through six BatchNorm layers and a residual add."""
    shape = (6, 3, 6, 6)
    targets = rng.integers(0, 5, 6)
    _distributed_matches_one_process(small_resnet(), shape, 3, "cross_entropy", targets, rng)


# **** Options ****


def test_option_errors():
    model = ConvBnNet(True)
    with pytest.raises(ValueError, match="sync_batch_norm applies to training"):
        engine.compile(model, SHAPE[1:], 4, sync_batch_norm=2)
    with pytest.raises(ValueError, match="sync_batch_norm must be a positive number"):
        compile_training(model, SHAPE, "float32", 0)
    with pytest.raises(ValueError, match="recompute='sqrt' does not support sync_batch_norm"):
        compile_training(model, SHAPE, "float32", 2, recompute="sqrt")


def test_one_value_per_channel_needs_another_process():
    """BatchNorm1d on one vector per process: refused alone (the variance has one value, as
    torch refuses), fine when two processes share statistics."""
    model = nn.Sequential(nn.Flatten(), nn.BatchNorm1d(4))
    with pytest.raises(ValueError, match=r"^1: batch_norm in training mode needs more than 1"):
        compile_training(model, (1, 4, 1, 1), "float64", 1)
    exe = compile_training(model, (1, 4, 1, 1), "float64", 2)
    assert [n.op for n in exe._training.graph.nodes].count("sync_batch_norm") == 1


@pytest.mark.skipif(shutil.which("g++") is None, reason="the GPU emulation needs g++")
def test_gpu_backend_names_the_missing_ops_in_one_line():
    """The synchronised ops have CPU kernels only (distributed training runs on the CPU)."""
    with pytest.raises(NotImplementedError) as info:
        compile_training(ConvBnNet(True), SHAPE, "float32", 2, backend="gpu-emulated")
    message = str(info.value)
    assert "\n" not in message
    missing = message.split("has no kernel for ")[1].split("]")[0]
    for op in ("allreduce_mean", "batch_moments", "sync_batch_norm", "sync_batch_norm_grad"):
        assert f"'{op}'" in missing
    assert "bn.mean (allreduce_mean)" in message


def test_save_load_and_clone_keep_the_option(tmp_path, rng):
    exe = compile_training(ConvBnNet(True), SHAPE, "float64", 2, optimizer=SGD(0.1))
    randomize_params(exe, rng)
    path = tmp_path / "model.cf"
    engine.save(exe, path)
    loaded = engine.load(path)
    assert loaded.options.sync_batch_norm == 2
    ops = {node.op for node in loaded._training.graph.nodes}
    assert {"allreduce_mean", "sync_batch_norm", "sync_batch_norm_grad"} <= ops
    x, target = rng.standard_normal(SHAPE), rng.standard_normal((4, 6))
    assert loaded.train_step(x, target) == exe.train_step(x, target)
    clone = exe.clone()
    assert np.array_equal(clone.run(x), exe.eval().run(x))

    # a file saved before the option existed loads with local statistics
    tensors, metadata = load_checkpoint(path)
    del metadata["saved_model"]["options"]["sync_batch_norm"]
    save_checkpoint(path, tensors, metadata)
    old = engine.load(path)
    assert old.options.sync_batch_norm is None
    assert "batch_norm_train" in {node.op for node in old._training.graph.nodes}
