"""Hostile and careless checkpoints and configs (issue 14): refused in one line naming the file,
never a hang, a memory blow-up or a traceback.

Config limits are reached by counting (sizes, bits, work units), so these tests time nothing."""
from __future__ import annotations

import os

import pytest
import torch

from nlanalysis.checkpoints import CheckpointError, load_checkpoint, parse_config_file, parse_config_text
from nlanalysis.checkpoints.config import DEFAULT_LIMITS, ConfigLimits
from nlanalysis.checkpoints.errors import ConfigLimitError
from nlanalysis.cli import main
from nlanalysis.models import BlockSpec, ResNetArch, build_model

REFUSED = "configs are parsed, never run, and this one is refused"
MUL_CHAIN = "a = 10 ** 64\n" + "a = a * a\n" * 40
LIST_DOUBLING = "a = [1, 2]\n" + "a = a + a\n" * 40


def refusal(call, *args, **kw) -> str:
    """The one-line message of the :class:`ConfigLimitError` ``call`` raises."""
    with pytest.raises(ConfigLimitError) as info:
        call(*args, **kw)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.fixture(scope="module")
def resnet_state() -> dict[str, torch.Tensor]:
    """A small mmdetection-style ResNet with one NL block (real key names)."""
    arch = ResNetArch((1, 1, 1), [BlockSpec("layer3.0.nonlocal_block", "NonLocal2d", 1024)], prefix="backbone.")
    torch.manual_seed(0)
    return build_model(arch, truncate=False).state_dict()


def test_number_chain_is_refused_at_its_line(tmp_path):
    """``10 ** 64`` is 213 bits; squared: 426, 851, then >= 1701 bits at the third ``a = a * a``
    (line 4), refused before it is computed."""
    assert (10**64).bit_length() == 213 and (10**128).bit_length() == 426 and (10**256).bit_length() == 851
    cfg = tmp_path / "mul.py"
    cfg.write_text(MUL_CHAIN)
    assert refusal(parse_config_file, cfg) == f"{cfg}: line 4: a number of about 1,701 bits (limit 1,024); {REFUSED}"
    assert parse_config_text("a = 10 ** 64\na = a * a\na = a * a\n")["a"] == 10**256  # below the limit: exact
    assert parse_config_text("big = 2 ** 1023\n")["big"] == 2**1023
    assert refusal(parse_config_text, "a = 2 ** 1024\n", "t") == f"t: line 1: a number of about 1,025 bits (limit 1,024); {REFUSED}"
    assert refusal(parse_config_text, "a = 7\nb = 3 ** 10 ** 9\n", "t").startswith("t: line 2: a number of about 1,000,000,001 bits")


def test_list_doubling_is_refused_at_its_line(tmp_path):
    """``[1, 2]`` counts 3 (the list and two items); k doublings make 2 ** (k + 1) + 1, past the
    1,000,000 limit at k = 19 (line 20)."""
    cfg = tmp_path / "lists.py"
    cfg.write_text(LIST_DOUBLING)
    expected = f"{cfg}: line 20: a list of 1,048,577 elements and characters (limit 1,000,000); {REFUSED}"
    assert refusal(parse_config_file, cfg) == expected
    assert len(parse_config_text("a = [1, 2]\n" + "a = a + a\n" * 10)["a"]) == 2**11


def test_shared_and_nested_values_count_as_printed():
    """``a = [a, a]`` shares memory but prints twice as long: 3 * 2 ** k - 1 after k steps, past
    1,000,000 at k = 19; ``a = [a]`` nests one level per line, past 100 at line 101."""
    message = refusal(parse_config_text, "a = [1]\n" + "a = [a, a]\n" * 40, "t")
    assert message == f"t: line 20: a list of {3 * 2**19 - 1:,} elements and characters (limit 1,000,000); {REFUSED}"
    message = refusal(parse_config_text, "a = [1]\n" + "a = [a]\n" * 200, "t")
    assert message == f"t: line 101: containers nested 101 deep (limit 100); {REFUSED}"


def test_repetition_is_never_evaluated():
    """``*`` on lists and strings is not literal-like: the assignment is skipped, nothing is built."""
    names = parse_config_text("a = [0] * 10 ** 9\ns = 'x' * 10 ** 9\nt = (1,) * 10 ** 9\nok = 1\n")
    assert names == {"ok": 1}


def test_deep_expressions_are_refused():
    text = "a = " + "-" * 150 + "1\n"
    assert refusal(parse_config_text, text, "t") == f"t: line 1: an expression nested more than 100 deep; {REFUSED}"
    assert refusal(parse_config_text, "a = " + "-" * 100_000 + "1\n", "t") == "t: config nested too deeply for the Python parser; refused"


def test_total_work_is_bounded():
    """A 999,000-character string costs 999,002 units (its node and its size); each ``x = [s]``
    1 + 1 (List and Name nodes) + 1 (one item) + 999,002 (its size) = 999,005. Five of those with
    the string pass 5,000,000 at line 6."""
    text = f"s = '{'x' * 999_000}'\n" + "x = [s]\n" * 10
    assert 999_002 + 4 * 999_005 <= DEFAULT_LIMITS.max_work < 999_002 + 5 * 999_005
    message = refusal(parse_config_text, text, "t")
    assert message == f"t: line 6: more than 5,000,000 units of work (syntax nodes plus sizes of the values built); {REFUSED}"
    # dict(b=1, c=[2, 3]): the call 1; b=1: node 1 + size 1; the list: node 1, items 2 * (1 + 1), its
    # 2 items sized 2, its size 3; the dict: its 4 keys and values sized 4, its size 1 + 2 + 1 + 2 + 3
    cost = 1 + 2 + (1 + 4 + 2 + 3) + (4 + 9)
    text = "a = dict(b=1, c=[2, 3])\nb = a\n"  # the second line costs 1 (a name)
    assert parse_config_text(text, limits=ConfigLimits(max_work=cost + 1)) == {"a": {"b": 1, "c": [2, 3]}, "b": {"b": 1, "c": [2, 3]}}
    assert refusal(parse_config_text, text, "t", limits=ConfigLimits(max_work=cost)).startswith(f"t: line 2: more than {cost} units")
    assert refusal(parse_config_text, text, "t", limits=ConfigLimits(max_work=cost - 1)).startswith("t: line 1: more than")


def test_special_and_large_files_are_refused(tmp_path):
    cfg = tmp_path / "zero.py"
    cfg.write_text("_base_ = '/dev/zero'\n")
    expected = f"{cfg}: line 1: config _base_ file '/dev/zero' is a character device, not a regular file; refused"
    assert refusal(parse_config_file, cfg) == expected
    assert refusal(parse_config_file, "/dev/zero") == "/dev/zero: config is a character device, not a regular file; refused"
    fifo = tmp_path / "fifo.py"
    os.mkfifo(fifo)
    assert refusal(parse_config_file, fifo) == f"{fifo}: config is a FIFO, not a regular file; refused"
    (tmp_path / "uses_fifo.py").write_text("x = 1\n_base_ = ['fifo.py']\n")
    assert refusal(parse_config_file, tmp_path / "uses_fifo.py").endswith("line 2: config _base_ file 'fifo.py' is a FIFO, not a regular file; refused")
    assert refusal(parse_config_file, tmp_path) == f"{tmp_path}: config is a folder, not a regular file; refused"
    big = tmp_path / "big.py"
    big.write_text("# " + "x" * DEFAULT_LIMITS.max_bytes + "\n")
    assert refusal(parse_config_file, big) == f"{big}: config file larger than 2,097,152 bytes; refused"
    text = "#" * (DEFAULT_LIMITS.max_bytes + 1)
    assert refusal(parse_config_text, text, "t") == "t: config text of 2,097,153 characters (limit 2,097,152); refused"


def test_base_chains_are_bounded(tmp_path):
    for i in range(20):
        (tmp_path / f"c{i}.py").write_text(f"_base_ = 'c{i + 1}.py'\nv{i} = {i}\n")
    (tmp_path / "c20.py").write_text("end = 1\n")
    assert refusal(parse_config_file, tmp_path / "c0.py") == f"{tmp_path / 'c17.py'}: config _base_ chain deeper than 16 files; refused"
    assert parse_config_file(tmp_path / "c5.py")["v19"] == 19  # 15 levels: fine
    (tmp_path / "leaf.py").write_text("leaf = 1\n")
    (tmp_path / "fan.py").write_text(f"_base_ = {['leaf.py'] * 65!r}\n")
    assert refusal(parse_config_file, tmp_path / "fan.py") == f"{tmp_path / 'leaf.py'}: config with more than 64 _base_ files in all; refused"
    (tmp_path / "fan64.py").write_text(f"_base_ = {['leaf.py'] * 64!r}\n")
    assert parse_config_file(tmp_path / "fan64.py") == {"leaf": 1}
    (tmp_path / "a.py").write_text("_base_ = 'b.py'\n")
    (tmp_path / "b.py").write_text("_base_ = './a.py'\n")
    with pytest.raises(CheckpointError, match=r"b\.py: config _base_ files form a cycle: a\.py -> b\.py -> a\.py$"):
        parse_config_file(tmp_path / "a.py")
    (tmp_path / "odd.py").write_text("_base_ = 5\n")
    with pytest.raises(CheckpointError, match=r"odd\.py: config _base_ must be a file name or a list of them, not 5$"):
        parse_config_file(tmp_path / "odd.py")


def test_checkpoint_meta_config_refused_naming_the_checkpoint(tmp_path, resnet_state, capsys):
    """The issue's case: an mmdetection checkpoint whose ``meta['config']`` would hang ``inspect``."""
    ckpt = tmp_path / "hostile.pth"
    torch.save({"meta": {"mmdet_version": "2.28.2", "config": MUL_CHAIN}, "state_dict": resnet_state}, ckpt)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(ckpt)
    assert str(info.value) == f"{ckpt}: meta['config']: line 4: a number of about 1,701 bits (limit 1,024); {REFUSED}"
    assert main(["inspect", "--ckpt", str(ckpt)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"nlanalysis inspect: error: {info.value}"]
    torch.save({"meta": {"mmdet_version": "2.28.2", "config": "model = dict(\n"}, "state_dict": resnet_state}, tmp_path / "typo.pth")
    notes = load_checkpoint(tmp_path / "typo.pth").notes  # not hostile, just broken: ignored, with a note
    assert any(n.startswith("the checkpoint's meta['config'] was ignored: config is not valid Python (line 1") for n in notes)


def test_malformed_config_structure_is_a_checkpoint_error(tmp_path, resnet_state):
    ckpt = tmp_path / "m.pth"
    torch.save({"meta": {"mmdet_version": "2.28.2", "config": "model = dict(backbone=dict(plugins=[5]))\n"}, "state_dict": resnet_state}, ckpt)
    with pytest.raises(CheckpointError, match=r"malformed mmdetection 2\.x \(mmcv\) checkpoint or config \(AttributeError: "):
        load_checkpoint(ckpt)
