"""zoo defaults against torchvision's default builders.

A zoo model that names a torchvision builder and declares no departure must build, with no
arguments, a model with that builder's published parameter count (``zoo.TORCHVISION_PARAMS``,
each count sourced in ``zoo/torchvision_params.py``); every other model declares, in one line,
how it departs. torchvision is not installed here, so its published counts are the oracle.
"""

from __future__ import annotations

import pytest

import zoo

# Builds that allocate and initialise 88 M parameters or more: 2 s and up each on 2 cores.
SLOW_BUILDS = {"convnext_base"} | {f"vgg{d}{bn}" for d in (11, 13, 16, 19) for bn in ("", "_bn")}


def _cases(names: list[str]) -> list:
    return [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_BUILDS else n for n in names]


MATCHING = [name for name in zoo.names() if zoo.spec(name).departs is None]
DEPARTING = [name for name in zoo.names() if zoo.spec(name).departs is not None]


@pytest.mark.parametrize("name", _cases(MATCHING))
def test_default_model_has_torchvisions_parameter_count(name):
    spec = zoo.spec(name)
    assert spec.torchvision is not None, (
        f"{name} names no torchvision builder and declares no departure: register it with "
        "torchvision=<builder> or departs=<one line saying how>"
    )
    assert zoo.get(name).num_parameters() == zoo.TORCHVISION_PARAMS[spec.torchvision]


@pytest.mark.parametrize("name", _cases(DEPARTING))
def test_a_departure_is_one_line_and_real(name):
    spec = zoo.spec(name)
    assert spec.departs.strip() and "\n" not in spec.departs, repr(spec.departs)
    if spec.torchvision is not None:  # a declared departure from a torchvision model shows
        assert zoo.get(name).num_parameters() != spec.torchvision_params


def test_zoo_models_named_as_torchvision_builders_claim_them():
    """A zoo model under a torchvision builder's name is that model, or says how it is not."""
    for name in set(zoo.names()) & set(zoo.TORCHVISION_PARAMS):
        spec = zoo.spec(name)
        assert spec.torchvision == name and spec.departs is None, (name, spec.departs)


def test_every_recorded_count_is_used():
    claimed = {zoo.spec(name).torchvision for name in zoo.names()}
    assert set(zoo.TORCHVISION_PARAMS) <= claimed, set(zoo.TORCHVISION_PARAMS) - claimed


def test_spec_reports_the_torchvision_reference():
    assert zoo.spec("resnet18_cifar").torchvision == "resnet18"
    assert zoo.spec("resnet18_cifar").torchvision_params == 11_689_512
    assert zoo.spec("resnet18_cifar").departs.startswith("CIFAR form")
    assert zoo.spec("inception_v3").torchvision_params == 27_161_264
    assert zoo.spec("inception_v3").departs is None
    assert zoo.spec("lenet5").torchvision is None and zoo.spec("lenet5").torchvision_params is None


def test_register_checks_the_declaration():
    with pytest.raises(ValueError, match=r"'densenet121', whose parameter count is not in"):
        zoo.register("dense_test", (3, 8, 8), 10, torchvision="densenet121")(lambda: None)
    with pytest.raises(ValueError, match=r"departs must say how, but got ' '"):
        zoo.register("blank_test", (3, 8, 8), 10, departs=" ")(lambda: None)
    assert "dense_test" not in zoo.names() and "blank_test" not in zoo.names()
