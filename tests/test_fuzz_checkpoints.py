"""Property-based fuzzing (hypothesis) of the checkpoint readers and the config evaluator (issue 14).

Random bytes, truncations and byte mutations of real checkpoint files, and random or mutated
config text, must each end in the project's error for that concern -- a ``CheckpointError`` whose
one-line message starts with the file's name -- or in a success that returns exactly the original
data. Any other exception, a hang (hypothesis' per-case ``deadline``) or wrong data fails.

The cases are derandomized (the same ones every run, so CI never flakes); set
``NLANALYSIS_FUZZ=N`` to explore N fresh random cases per test instead.
"""
from __future__ import annotations

import ast
import json
import os
import struct
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

import nlanalysis
from nlanalysis.checkpoints import CheckpointError, load_checkpoint, parse_config_file, parse_config_text
from nlanalysis.checkpoints.config import DEFAULT_LIMITS
from nlanalysis.checkpoints.vit.convert import CheckpointError as ViTConvertError
from nlanalysis.checkpoints.vit.models import load_vit

WEIGHTS = Path(nlanalysis.__file__).parent / "weights"
GC = (WEIGHTS / "gc.pth").read_bytes()
EXPLORE = int(os.environ.get("NLANALYSIS_FUZZ", "0"))
set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "nlanalysis-hypothesis")  # its caches stay out of the checkout


def fuzz(max_examples: int, deadline_s: float) -> settings:
    """Hypothesis settings: ``max_examples`` fixed cases (or ``NLANALYSIS_FUZZ`` random ones), each
    within ``deadline_s`` seconds (generous: the machine may be shared)."""
    return settings(
        max_examples=EXPLORE or max_examples, deadline=timedelta(seconds=deadline_s), derandomize=not EXPLORE,
        database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large], print_blob=True,
    )  # fmt: skip


def assert_refused(err: BaseException, path: Path | str) -> None:
    """The project's checkpoint error, one line, naming the file (or a file inside the folder)."""
    message = str(err)
    assert message.startswith(str(path)), message
    assert "\n" not in message, message


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@pytest.fixture(scope="module")
def gc_reference() -> dict[str, torch.Tensor]:
    """What the intact shipped checkpoint loads as: the model's weights."""
    return load_checkpoint(WEIGHTS / "gc.pth").model.state_dict()


def check_checkpoint(path: Path, data: bytes, reference: dict[str, torch.Tensor] | None) -> str:
    """Write ``data`` to ``path`` and load it: refused naming the file, or exactly ``reference``."""
    path.write_bytes(data)
    try:
        loaded = load_checkpoint(path)
    except CheckpointError as err:
        assert_refused(err, path)
        return "refused"
    assert reference is not None, "random bytes loaded as a checkpoint"
    got = loaded.model.state_dict()
    assert got.keys() == reference.keys()
    assert all(torch.equal(got[k], reference[k]) for k in reference), "a damaged checkpoint loaded with different weights"
    return "same data"


RANDOM_FILES = st.one_of(
    st.binary(max_size=4096),
    st.binary(max_size=4096).map(lambda b: b"PK\x03\x04" + b),  # past the zip magic
    st.binary(max_size=4096).map(lambda b: b"\x80\x02" + b),  # past the pickle protocol byte
)


@fuzz(120, 5)
@given(data=RANDOM_FILES)
def test_random_bytes_are_refused(workdir, data):
    check_checkpoint(workdir / "random.pth", data, None)


@fuzz(60, 5)
@given(cut=st.integers(0, len(GC) - 1))
def test_truncated_checkpoint_is_refused(workdir, cut):
    check_checkpoint(workdir / "cut.pth", GC[:cut], None)


def positions(size: int, head: int = 12_000, tail: int = 4_000) -> st.SearchStrategy[int]:
    """Byte positions, a third each in the whole file, its head (the pickle and first headers) and
    its tail (the zip central directory)."""
    return st.one_of(st.integers(0, size - 1), st.integers(0, min(head, size) - 1), st.integers(max(size - tail, 0), size - 1))


def mutate(data: bytes, edits: list[tuple[int, int]]) -> bytes:
    out = bytearray(data)
    for pos, flip in edits:
        out[pos] ^= flip  # flip in 1..255: the byte always changes
    return bytes(out)


@fuzz(150, 10)
@given(edits=st.lists(st.tuples(positions(len(GC)), st.integers(1, 255)), min_size=1, max_size=4))
def test_mutated_checkpoint_is_refused_or_identical(workdir, gc_reference, edits):
    check_checkpoint(workdir / "mutated.pth", mutate(GC, edits), gc_reference)


@pytest.fixture(scope="module")
def vit_file(workdir) -> tuple[bytes, int, dict[str, torch.Tensor]]:
    """A tiny Hugging Face Dinov2 state dict as ``.safetensors``: its bytes, the length of its
    8-byte prefix plus JSON header, and what :func:`load_vit` builds from it."""
    transformers = pytest.importorskip("transformers", reason="safetensors fuzzing: transformers is not installed")
    safetensors_torch = pytest.importorskip("safetensors.torch")
    config = transformers.Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                       patch_size=14, image_size=28)  # fmt: skip
    torch.manual_seed(0)
    state = transformers.Dinov2Model(config).eval().state_dict()
    path = workdir / "vit-original.safetensors"
    safetensors_torch.save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    data = path.read_bytes()
    header = 8 + struct.unpack("<Q", data[:8])[0]
    return data, header, load_vit(path, img_size=28, num_heads=2).state_dict()


def check_vit(path: Path, data: bytes, reference: dict[str, torch.Tensor]) -> str:
    path.write_bytes(data)
    try:
        model = load_vit(path, img_size=28, num_heads=2)
    except (CheckpointError, ViTConvertError) as err:
        assert_refused(err, path)
        return "refused"
    got = model.state_dict()
    assert got.keys() == reference.keys()
    assert all(torch.equal(got[k], reference[k]) for k in reference), "a damaged safetensors file loaded with different weights"
    return "same data"


@fuzz(40, 10)
@given(cut=st.integers(0, 10**9))
def test_truncated_safetensors_is_refused(workdir, vit_file, cut):
    data, _, reference = vit_file
    check_vit(workdir / "cut.safetensors", data[: cut % len(data)], reference)


@fuzz(80, 10)
@given(edits=st.lists(st.tuples(st.integers(0, 10**9), st.integers(1, 255)), min_size=1, max_size=3))
def test_mutated_safetensors_header_is_refused_or_identical(workdir, vit_file, edits):
    """Only the header: safetensors carries no checksum, so a changed tensor byte is undetectable
    by any reader. A same-size dtype swap in the header ("F32" -> "I32") is refused: ViT weights
    must be floating point (tests/test_hostile_vit_checkpoints.py builds that case on purpose)."""
    data, header, reference = vit_file
    check_vit(workdir / "mutated.safetensors", mutate(data, [(pos % header, flip) for pos, flip in edits]), reference)


# ---- the config evaluator ----

REAL_CONFIG = """\
norm_cfg = dict(type='BN', requires_grad=True)
model = dict(
    type='MaskRCNN',
    backbone=dict(
        type='ResNet', depth=50, num_stages=4, out_indices=(0, 1, 2, 3), frozen_stages=1,
        norm_cfg=norm_cfg, norm_eval=True, style='pytorch',
        plugins=[dict(cfg=dict(type='NonLocal2d', reduction=2, use_scale=True, mode='embedded_gaussian'),
                      stages=(False, False, True, False), position='after_conv3')],
        gcb=dict(ratio=1. / 16, pooling_type='att'), stage_with_gcb=(False, True, True, True)),
    neck=dict(type='FPN', in_channels=[256, 512, 1024, 2048], out_channels=256, num_outs=5),
    roi_head=dict(bbox_head=dict(num_classes=80, loss_weight=2 ** -1, scale=-1.0 * 3)))
img_norm_cfg = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)
train_pipeline = [dict(type='LoadImageFromFile'), dict(type='Resize', img_scale=(1333, 800), keep_ratio=True),
                  dict(type='Normalize', **img_norm_cfg), dict(type='Pad', size_divisor=32)]
data = dict(samples_per_gpu=2, workers_per_gpu=2, train=dict(pipeline=train_pipeline), test=dict(pipeline=train_pipeline[:1] + [dict(type='Pad', size_divisor=32)]))
lr = 0.02 / 8 * 2
total_epochs = 12
dist_params = dict(backend='nccl')
"""
HOSTILE_LINES = ["a = a * a", "a = a + a", "a = [a, a]", "a = (a, a)", "a = dict(x=a, y=a)", "a = 10 ** 64", "a = [1, 2]",
                 "a = 2 ** a", "a = -a", "a = a // 3", "a = list(a)", "a = {**a}", "a = a + [a]", "a = 'x' * a", "a = 1e308 * a"]  # fmt: skip
ALPHABET = "0123456789*+-/()[]{},.:'\"=\n _abcdex"


def plain(value: Any, depth: int = 0) -> bool:
    """Only literal-like data, integers within the limit, nesting within the limit."""
    if depth > DEFAULT_LIMITS.max_nesting:
        return False
    if isinstance(value, dict):
        return all(plain(k, depth + 1) and plain(v, depth + 1) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return all(plain(v, depth + 1) for v in value)
    if isinstance(value, int):
        return value.bit_length() <= DEFAULT_LIMITS.max_int_bits
    return value is None or isinstance(value, (str, bytes, float))


def check_config(text: str) -> str:
    """Parsed to plain data that agrees with :func:`ast.literal_eval` on every pure literal, or refused
    naming the source."""
    try:
        names = parse_config_text(text, "fuzz.py")
    except CheckpointError as err:
        assert_refused(err, "fuzz.py")
        return "refused"
    assert plain(names)
    last: dict[str, ast.expr] = {}
    for stmt in ast.parse(text).body:  # it parsed, so this does
        if isinstance(stmt, ast.Assign):
            last.update({t.id: stmt.value for t in stmt.targets if isinstance(t, ast.Name)})
    for name, expr in last.items():
        try:
            want = ast.literal_eval(expr)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            continue
        if isinstance(want, (complex, set)) or not plain(want):
            continue
        assert name in names and names[name] == want, (name, ast.unparse(expr))
    return "parsed"


@fuzz(300, 3)
@given(text=st.text(max_size=400))
def test_random_config_text(text):
    check_config(text)


@fuzz(300, 3)
@given(text=st.text(alphabet=ALPHABET, max_size=400))
def test_random_config_like_text(text):
    check_config(text)


@fuzz(300, 3)
@given(
    edits=st.lists(st.tuples(st.integers(0, len(REAL_CONFIG)), st.sampled_from("ird"), st.sampled_from(ALPHABET)), max_size=6),
    tail=st.lists(st.sampled_from(HOSTILE_LINES), max_size=60),
)
def test_mutated_real_config(edits, tail):
    text = REAL_CONFIG
    for pos, op, char in edits:
        pos = min(pos, len(text))
        text = text[:pos] + char + text[pos + (op == "r") :] if op != "d" else text[:pos] + text[pos + 1 :]
    check_config(text + "a = 3\n" + "\n".join(tail) + "\n")


BASES = ["/dev/zero", "/dev/null", ".", "..", "self.py", "other.py", "missing.py", "ok.py", "", "\x00", "a" * 300, "ok.py/x"]


@fuzz(120, 5)
@given(
    content=st.one_of(st.binary(max_size=300), st.text(alphabet=ALPHABET, max_size=200).map(str.encode)),
    bases=st.lists(st.sampled_from(BASES), max_size=4),
    other_bases=st.lists(st.sampled_from(BASES), max_size=3),
)
def test_config_files_and_bases(workdir, content, bases, other_bases):
    """Random file bytes, and ``_base_`` lists of devices, folders, cycles, missing and odd names."""
    folder = workdir / "configs"
    folder.mkdir(exist_ok=True)
    (folder / "ok.py").write_text("ok = 1\n")
    (folder / "other.py").write_text(f"_base_ = {json.dumps(other_bases)}\nother = 2\n")
    (folder / "self.py").write_bytes(content + f"\n_base_ = {json.dumps(bases)}\n".encode())
    try:
        cfg = parse_config_file(folder / "self.py")
    except CheckpointError as err:
        assert str(err).startswith(str(folder)) or str(err).startswith("/dev/"), str(err)
        assert "\n" not in str(err)
        return
    assert plain(cfg) and "_base_" not in cfg
