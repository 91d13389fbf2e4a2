"""list_blocks keeps a model's blocks between calls: every change of the module tree is seen, nothing is kept alive."""
import gc
import weakref
from collections import OrderedDict

from torch import nn

from nlanalysis.adapters import list_blocks, registry
from nlanalysis.blocks import ContextBlock, NonLocal2d


def _net() -> nn.Sequential:
    """Three blocks in two stages, one a GC block, behind a stem."""
    stages = OrderedDict(stem=nn.Conv2d(3, 8, 3, padding=1), layer3=nn.Sequential(nn.Identity(), NonLocal2d(8)),
                         layer4=nn.Sequential(ContextBlock(8, 0.5), NonLocal2d(8, mode="gaussian")))  # fmt: skip
    return nn.Sequential(stages)


def _uncached(model: nn.Module) -> list[tuple[str, nn.Module, str]]:
    """The blocks as a fresh search finds them (the cache emptied first): the independent answer."""
    registry._FOUND.clear()
    return [(b.name, b.module, b.family) for b in list_blocks(model)]


def _listed(model: nn.Module) -> list[tuple[str, nn.Module, str]]:
    return [(b.name, b.module, b.family) for b in list_blocks(model)]


def test_second_call_is_served_from_the_cache(monkeypatch):
    net = _net()
    first = _listed(net)
    asked = []
    monkeypatch.setattr(registry, "find_adapter", lambda m: asked.append(m))  # a search would call it
    assert _listed(net) == first
    assert asked == []
    assert [b.name for b in list_blocks(net, include="layer4.*")] == ["layer4.0", "layer4.1"]
    assert [b.name for b in list_blocks(net, exclude=["layer4.0"])] == ["layer3.1", "layer4.1"]


def test_every_change_of_the_tree_is_seen():
    net = _net()
    _listed(net)
    net.layer3[0] = NonLocal2d(8, mode="dot_product")  # replaced: a block where there was none
    assert _listed(net) == _uncached(net)
    assert [n for n, _, _ in _listed(net)] == ["layer3.0", "layer3.1", "layer4.0", "layer4.1"]
    _listed(net)
    net.layer4[1] = NonLocal2d(8, mode="gaussian")  # the same class and name, another object
    assert _listed(net)[-1][1] is net.layer4[1]
    del net.layer4[0]  # removed
    assert _listed(net) == _uncached(net)
    _listed(net)
    net.extra = nn.Sequential(ContextBlock(8, 0.25))  # added
    assert _listed(net) == _uncached(net)
    _listed(net)
    net.layer3[0].__class__ = type("Plain", (nn.Module,), {"forward": lambda self, x: x})  # given another class
    assert "layer3.0" not in [n for n, _, _ in _listed(net)]
    assert _listed(net) == _uncached(net)
    _listed(net)
    net.layer5 = net.layer4  # the same module under a second name: named_modules lists it once
    del net.layer4
    assert [n for n, _, _ in _listed(net)] == [n for n, _, _ in _uncached(net)]
    assert any(n.startswith("layer5.") for n, _, _ in _listed(net))


def test_moved_between_parents_is_seen():
    net = nn.Sequential(nn.Sequential(NonLocal2d(8)), nn.Sequential())
    _listed(net)
    block = net[0][0]
    del net[0][0]
    net[1].add_module("0", block)  # the same object, now under the second parent
    assert [n for n, _, _ in _listed(net)] == ["1.0"]


def test_the_cache_keeps_no_model_alive():
    block = NonLocal2d(8)  # a model that is itself a block
    assert [b.name for b in list_blocks(block)] == [""]
    ref = weakref.ref(block)
    del block
    gc.collect()
    assert ref() is None
