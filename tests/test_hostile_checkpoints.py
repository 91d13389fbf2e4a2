"""Hostile and careless checkpoints and configs (issue 14): refused in one line naming the file,
never a hang, a memory blow-up or a traceback.

Config limits are reached by counting (sizes, bits, work units), so these tests time nothing."""
from __future__ import annotations

import os
import shutil
import struct
import zipfile
from pathlib import Path

import pytest
import torch
from PIL import Image

import nlanalysis
from nlanalysis.checkpoints import CheckpointError, load_checkpoint, parse_config_file, parse_config_text
from nlanalysis.checkpoints.config import DEFAULT_LIMITS, ConfigLimits
from nlanalysis.checkpoints.errors import ConfigLimitError
from nlanalysis.checkpoints.vit.models import load_vit, vit_checkpoint_layout
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
    """A 200,000-character string costs 200,002 units (its node, 1 + its length); each
    ``x = [s, s, s, s]`` 1 (List) + 4 (Names) + 4 (its items) + 1 + 4 * 200,001 (its size) = 800,014.
    Six of those with the string pass 5,000,000 at line 7."""
    text = f"s = '{'x' * 200_000}'\n" + "x = [s, s, s, s]\n" * 10
    assert 200_002 + 5 * 800_014 <= DEFAULT_LIMITS.max_work < 200_002 + 6 * 800_014
    message = refusal(parse_config_text, text, "t")
    assert message == f"t: line 7: more than 5,000,000 units of work (syntax nodes plus sizes of the values built); {REFUSED}"
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
    assert refusal(parse_config_file, fifo) == f"{fifo}: config is a named pipe, not a regular file; refused"
    (tmp_path / "uses_fifo.py").write_text("x = 1\n_base_ = ['fifo.py']\n")
    assert refusal(parse_config_file, tmp_path / "uses_fifo.py").endswith("line 2: config _base_ file 'fifo.py' is a named pipe, not a regular file; refused")
    assert refusal(parse_config_file, tmp_path) == f"{tmp_path}: config is a folder, not a regular file; refused"
    big = tmp_path / "big.py"
    big.write_text("# " + "x" * DEFAULT_LIMITS.max_bytes + "\n")
    assert refusal(parse_config_file, big) == f"{big}: config file larger than 262,144 bytes; refused"
    text = "#" * (DEFAULT_LIMITS.max_bytes + 1)
    assert refusal(parse_config_text, text, "t") == "t: config text of 262,145 characters (limit 262,144); refused"


def test_a_config_that_is_no_regular_file_is_refused_before_it_is_opened(tmp_path, monkeypatch, capsys):
    """``--config`` is looked at by name before it is opened, as images and checkpoints are. It was opened first (non-blocking)
    and checked on the descriptor: opening a named pipe wakes a writer waiting on it, and opening a device may act (a tape
    rewinds, a terminal may become the controlling one); and with a checkpoint in this project's format it was not looked
    at at all, so a pipe, a broken link or a missing file given as ``--config`` went without a word."""
    fifo, link = tmp_path / "fifo.py", tmp_path / "link.py"
    os.mkfifo(fifo)
    link.symlink_to(tmp_path / "moved" / "cfg.py")
    opened: list[str] = []
    real_open = os.open

    def spy(path, flags, *args, **kwargs):
        opened.append(os.fspath(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", spy)
    assert refusal(parse_config_file, fifo) == f"{fifo}: config is a named pipe, not a regular file; refused"
    assert refusal(parse_config_file, "/dev/zero") == "/dev/zero: config is a character device, not a regular file; refused"
    assert opened == []
    with pytest.raises(CheckpointError) as info:
        parse_config_file(link)
    assert str(info.value) == f"{link}: config is a broken symbolic link (to {str(tmp_path / 'moved' / 'cfg.py')!r}), not a file"
    with pytest.raises(CheckpointError) as info:
        parse_config_file(tmp_path / "none.py")
    assert str(info.value) == f"{tmp_path / 'none.py'}: no such config file"
    monkeypatch.undo()

    arch = ResNetArch((1, 1, 1), [BlockSpec("layer3.0.nonlocal_block", "NonLocal2d", 1024)], prefix="backbone.")
    native = nlanalysis.checkpoints.save_checkpoint(tmp_path / "native.pth", build_model(arch))
    for config, reason in ((fifo, "config is a named pipe, not a regular file; refused"), (tmp_path / "none.py", "no such config file")):
        assert main(["inspect", "--ckpt", str(native), "--config", str(config)]) == 2
        assert capsys.readouterr().err.strip().splitlines() == [f"nlanalysis inspect: error: {config}: {reason}"]
    (tmp_path / "cfg.py").write_text("model = dict(backbone=dict(type='ResNet', depth=50))\n")
    loaded = load_checkpoint(native, config=tmp_path / "cfg.py")
    assert loaded.notes == [f"--config {tmp_path / 'cfg.py'} not used: a checkpoint in this project's format states its architecture and "
                            "preprocessing"]  # fmt: skip


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


WEIGHTS = Path(nlanalysis.__file__).parent / "weights"


def test_nonfinite_weights_blame_the_checkpoint_once(tmp_path, capsys):
    """NaN/inf weights refuse the checkpoint at load, naming the first bad tensor (counted here by
    hand); ``inspect`` still shows it, with a warning; ``extract`` stops before any image."""
    obj = torch.load(WEIGHTS / "gc.pth", weights_only=True)
    keys = [k for k, v in obj["state_dict"].items() if v.is_floating_point()]
    first, second = keys[3], keys[10]
    obj["state_dict"][first].view(-1)[[0, 2]] = float("nan")
    obj["state_dict"][second].view(-1)[1] = float("-inf")
    ckpt = tmp_path / "nan.pth"
    torch.save(obj, ckpt)
    n = obj["state_dict"][first].numel()
    expected = (f"{ckpt}: weights contain NaN or inf: 2 of the {n:,} values of {first} and 1 more tensor(s); "
                "the checkpoint is broken (diverged training or a damaged file) and every analysis of it would fail")  # fmt: skip
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(ckpt)
    assert str(info.value) == expected
    assert load_checkpoint(ckpt, allow_nonfinite=True).nonfinite == [first, second]
    assert load_checkpoint(WEIGHTS / "gc.pth").nonfinite == []
    assert main(["inspect", "--ckpt", str(ckpt)]) == 0
    out = capsys.readouterr().out
    assert f"WARNING: NaN or inf in 2 weight tensor(s), first {first}: the checkpoint is broken and extract refuses it" in out
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (64, 48), (120, 30, 200)).save(images / "a.png")
    assert main(["extract", "--ckpt", str(ckpt), "--images", str(images), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"nlanalysis extract: error: {expected}"]


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory) -> Path:
    """A tiny Hugging Face Dinov2 folder (``config.json`` + ``model.safetensors``)."""
    transformers = pytest.importorskip("transformers", reason="Hugging Face folders: transformers is not installed")
    config = transformers.Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                       patch_size=14, image_size=28)  # fmt: skip
    folder = tmp_path_factory.mktemp("hf") / "dinov2"
    transformers.Dinov2Model(config).eval().save_pretrained(folder)
    return folder


def inspect_error(capsys, path: Path) -> str:
    assert main(["inspect", "--ckpt", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("nlanalysis inspect: error: ")
    return err[0].removeprefix("nlanalysis inspect: error: ")


def copy_folder(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_damaged_safetensors_and_config_json_name_the_file(tmp_path, hf_folder, capsys):
    assert vit_checkpoint_layout(hf_folder) == "hf"
    data = (hf_folder / "model.safetensors").read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    incomplete = "truncated or corrupt safetensors file (Error while deserializing header: incomplete metadata, file not fully covered)"
    assert inspect_error(capsys, cut) == f"{cut}: {incomplete}"
    folder = copy_folder(hf_folder, tmp_path / "cut")
    (folder / "model.safetensors").write_bytes(data[:20])
    expected = f"{folder / 'model.safetensors'}: truncated or corrupt safetensors file (Error while deserializing header: invalid header length)"
    assert inspect_error(capsys, folder) == expected
    with pytest.raises(CheckpointError, match="invalid header length"):
        vit_checkpoint_layout(folder)
    folder = copy_folder(hf_folder, tmp_path / "json")
    (folder / "config.json").write_text('{"hidden_size": 32,')
    expected = f"{folder / 'config.json'}: not valid JSON text (Expecting property name enclosed in double quotes: line 1 column 20 (char 19))"
    assert inspect_error(capsys, folder) == expected
    with pytest.raises(CheckpointError, match="config.json: not valid JSON"):
        load_vit(folder, img_size=28)


def test_folder_with_a_malicious_pickle_says_what_and_why(tmp_path, hf_folder, capsys):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    folder = tmp_path / "evil"
    folder.mkdir()
    shutil.copy(hf_folder / "config.json", folder)
    torch.save({"embeddings.patch_embeddings.projection.weight": Exploit()}, folder / "pytorch_model.bin")
    expected = (f"{folder}: a Hugging Face model folder whose pytorch_model.bin is refused in safe mode: unpickling it would run code "
                "(Trying to load unsupported GLOBAL posix.system whose module posix is blocked.). Model folders are only read safely "
                "(--trust-checkpoint is for single checkpoint files); if you trust its origin, save its state dict as model.safetensors")  # fmt: skip
    assert inspect_error(capsys, folder) == expected
    assert main(["inspect", "--ckpt", str(folder), "--trust-checkpoint"]) == 2
    assert capsys.readouterr().err.strip() == f"nlanalysis inspect: error: {expected}"
    assert not marker.exists()
    (folder / "pytorch_model.bin").unlink()
    assert inspect_error(capsys, folder) == f"{folder}: a Hugging Face model folder, not a checkpoint file (no model.safetensors / pytorch_model.bin / model.pth in it)"
    torch.save({"conv.weight": torch.zeros(1)}, folder / "model.pth")
    assert inspect_error(capsys, folder) == f"{folder}: a Hugging Face model folder whose model.pth holds no ViT in a known layout (Hugging Face Dinov2/ViT or timm)"


def test_flipped_tensor_byte_fails_the_crc(tmp_path):
    """torch.load checks no CRC: a flipped byte inside a tensor record would load as a wrong weight."""
    data = bytearray((WEIGHTS / "gc.pth").read_bytes())
    with zipfile.ZipFile(WEIGHTS / "gc.pth") as archive:
        record = next(i for i in archive.infolist() if "/data/" in i.filename)
    name_len, extra_len = struct.unpack("<HH", data[record.header_offset + 26 : record.header_offset + 30])
    data[record.header_offset + 30 + name_len + extra_len + 5] ^= 0xFF  # a byte of the record's data
    (tmp_path / "flip.pth").write_bytes(bytes(data))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(tmp_path / "flip.pth")
    assert str(info.value) == (f"{tmp_path / 'flip.pth'}: truncated or corrupt checkpoint (record {record.filename!r} fails its "
                               "CRC-32 check: the file changed after it was written)")  # fmt: skip


def test_what_the_fuzzing_found(tmp_path, hf_folder):
    """Cases tests/test_fuzz_checkpoints.py found, kept as plain regression tests."""
    (tmp_path / "stack.pth").write_bytes(b"\x80\x02\x87")  # TUPLE3 on an empty stack: IndexError in torch
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(tmp_path / "stack.pth")
    assert str(info.value) == f"{tmp_path / 'stack.pth'}: truncated or corrupt checkpoint (IndexError: list index out of range)"
    (tmp_path / "long.py").write_text(f"_base_ = '{'a' * 300}'\n")
    with pytest.raises(CheckpointError) as info:
        parse_config_file(tmp_path / "long.py")
    assert str(info.value) == f"{tmp_path / 'long.py'}: line 1: config _base_ file '{'a' * 76}... cannot be read (File name too long)"
    data = (hf_folder / "model.safetensors").read_bytes()
    renamed = tmp_path / "renamed.safetensors"
    renamed.write_bytes(data.replace(b'"embeddings.patch_embeddings.projection.weight"', b'"dmbeddings.patch_embeddings.projection.weight"'))
    with pytest.raises(CheckpointError, match=r"^\S+renamed\.safetensors: not a ViT checkpoint in a known layout"):
        load_vit(renamed, img_size=28)
