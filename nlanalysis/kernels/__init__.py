"""Native CPU kernels for the statistics of softmax maps (ViT heads, gaussian / embedded-Gaussian NL
blocks), built on first use with the system C compiler; :func:`uses_native` says where they run.

:func:`row_stats` is the one-pass equivalent of :func:`nlanalysis.measure.head_rows._chunk_stats` (the
eager reference; tests check that they agree), :func:`token_stats` of ``nlanalysis.measure.heads._token_stats``,
:func:`feature_stats` of ``nlanalysis.measure.blocks._feature_stats``' eager path, and
:func:`pair_jsd` of ``nlanalysis.measure.jsd_pairs._pair_jsd``, :func:`table_jsd` of
``nlanalysis.metrics.divergence._jsd_normalized`` (float64, for an NL block's sampled pairs) and
:func:`unit_sum` of ``nlanalysis.metrics.CosineAccumulator`` (both in :mod:`.sums`). Their source, ``row_stats.c``, is compiled once per machine into
``~/.cache/nlanalysis/kernels`` (or ``$NLANALYSIS_CACHE``; a temporary folder when that cannot be
written) with ``$CC`` (default ``cc``) and ``-O3 -march=native -ffast-math -fopenmp``, in well under
a second, written to a temporary file and renamed, so concurrent processes never load a
half-written library. It is linked without ``-ffast-math``, so loading it never changes the
process's floating-point mode: the kernels flush denormals only while they run. With GCC the
library's OpenMP is the ``libgomp.so.1`` torch has already loaded, so the kernels run on torch's
threads; a compiler with another OpenMP runtime (clang's libomp) brings a second thread pool.

Where the compiler refuses a flag (``-mprefer-vector-width`` is x86-only; Apple's clang has no
``-fopenmp``) the next, plainer flag set is tried, down to a single-threaded build.
:func:`available` says whether the library could be built; without a compiler the caller keeps to
eager PyTorch (same numbers, slower).
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
import threading
import warnings
from array import array
from pathlib import Path

import torch
from torch import Tensor

from ..nograd import no_grad

__all__ = ["KERNELS", "KernelUnavailable", "SuiteSums", "all_finite", "available", "uses_native", "pair_jsd", "row_stats", "table_jsd", "unit_sum", "clear_workspace", "feature_stats", "head_finalise", "log_positive", "token_stats", "why_unavailable", "workspace"]

_SOURCE = Path(__file__).with_name("row_stats.c")  # includes sums.c, suite.c and finalise.c
# compile flags to try, best first: where the compiler refuses one (-mprefer-vector-width is x86 only,
# Apple's clang has no -fopenmp, ...) the next is tried; without -fopenmp the kernels run on one thread
_FLAG_SETS = [
    ["-O3", "-march=native", "-mprefer-vector-width=512", "-ffast-math", "-fopenmp", "-fPIC", "-std=c99"],
    ["-O3", "-march=native", "-ffast-math", "-fopenmp", "-fPIC", "-std=c99"],
    ["-O3", "-ffast-math", "-fopenmp", "-fPIC", "-std=c99"],
    ["-O3", "-ffast-math", "-fPIC", "-std=c99"],
]
# linked without -ffast-math: GCC < 13 would link crtfastmath.o into the library, whose constructor
# turns on flush-to-zero for the whole process when it is loaded (the kernels set it per call instead)
_LINK = ["-shared"]
_LOCK = threading.Lock()
_LIB: list[ctypes.CDLL] = []
_ERROR: list[str] = []


class KernelUnavailable(RuntimeError):
    """The native kernel could not be built or loaded (message says why)."""


def _cache_dir() -> Path:
    root = os.environ.get("NLANALYSIS_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "nlanalysis")
    return Path(root) / "kernels"


_CPU_KEYS = ("vendor_id", "cpu family", "model", "model name", "flags", "CPU implementer", "CPU architecture",
             "CPU variant", "CPU part", "Features", "isa")  # fmt: skip


def _cpu_tag() -> str:
    """What ``-march=native`` depends on: the first CPU's model and features (Linux x86 and ARM), else the platform."""
    try:
        with open("/proc/cpuinfo") as f:
            block = f.read().split("\n\n", 1)[0]
    except OSError:
        block = ""
    lines = [ln for ln in block.splitlines() if ln.split(":", 1)[0].strip() in _CPU_KEYS]
    return "\n".join(lines) + platform.machine() + platform.processor()


def _compile(cc: list[str], flags: list[str], target: Path) -> None:
    """Compile and link ``row_stats.c`` with ``flags`` into ``target`` (temporary file, then rename)."""
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    obj = tmp[:-3] + ".o"
    link = [*_LINK, *(["-fopenmp"] if "-fopenmp" in flags else [])]
    try:
        for cmd in ([*cc, *flags, "-c", str(_SOURCE), "-o", obj], [*cc, *link, obj, "-o", tmp, "-lm"]):
            try:
                done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
            except subprocess.TimeoutExpired as err:
                raise KernelUnavailable(f"{' '.join(cmd)} took over {err.timeout:.0f} s") from err
            if done.returncode != 0:
                raise KernelUnavailable(f"{' '.join(cmd)} failed: {done.stderr.strip()[-300:]}")
        os.chmod(tmp, 0o755)  # mkstemp makes it 0600: others sharing the cache must be able to load it
        os.replace(tmp, target)
    finally:
        for leftover in (tmp, obj):
            if os.path.exists(leftover):
                os.unlink(leftover)


def _writable_cache() -> Path:
    """The cache folder, or a fresh temporary one when it cannot be created or written."""
    folder = _cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if os.access(folder, os.W_OK):
            return folder
    except OSError:
        pass
    return Path(tempfile.mkdtemp(prefix="nlanalysis-kernels-"))


def _build() -> ctypes.CDLL:
    cc = shlex.split(os.environ.get("CC", "cc"))
    if not cc or shutil.which(cc[0]) is None:
        raise KernelUnavailable(f"no C compiler ({os.environ.get('CC', 'cc')!r} not found on PATH; set $CC)")
    source = b"".join(_SOURCE.with_name(name).read_bytes() for name in ("row_stats.c", "sums.c", "suite.c", "finalise.c"))  # the includes
    errors = []
    folder = None
    for flags in _FLAG_SETS:
        key = hashlib.sha256(source + " ".join([*cc, *flags, *_LINK]).encode() + _cpu_tag().encode()).hexdigest()[:16]
        target = _cache_dir() / f"row_stats-{key}.so"
        try:
            if not target.exists():
                folder = folder or _writable_cache()
                target = folder / target.name
                if not target.exists():
                    _compile(cc, flags, target)
            lib = ctypes.CDLL(str(target))
        except (KernelUnavailable, OSError) as err:  # this flag set is refused, or its library will not load
            errors.append(str(err))
            continue
        break
    else:
        raise KernelUnavailable("; ".join(errors[-2:]))
    p, i64 = ctypes.c_void_p, ctypes.c_int64
    signatures = {
        "nl_row_stats": [p, ctypes.c_float, p, p, p, p, p, p, i64, i64, i64, i64, i64, i64, i64, i64, i64, p, p, p, p, p, p, p],
        "nl_token_stats": [p, i64, p, i64, p, p, i64, p, p, p, i64, i64, i64, i64, i64, p, p],
        "nl_feature_stats": [p, i64, i64, p, i64, i64, ctypes.c_int, p, i64, i64, i64, p, p, p],
        "nl_pair_jsd": [p, p, p, p, p, i64, i64, i64, p, p],
        "nl_jsd_by_image": [p, p, p, i64, i64, i64, p, p, p],
        "nl_table_jsd64": [p, i64, p, p, i64, i64, p, p],
        "nl_unit_sum": [p, i64, i64, i64, i64, i64, i64, p, p, p, p, p, p, i64],
        "nl_all_finite": [p, i64],
        "nl_head_finalise_packed": [p],
        "nl_row_stats_packed": [p, ctypes.c_float],
        "nl_token_stats_packed": [p],
        "nl_suite_columns": [p, ctypes.c_double],
        "nl_log_positive": [p, i64, p],
    }
    for name, argtypes in signatures.items():
        f = getattr(lib, name)
        f.argtypes, f.restype = argtypes, ctypes.c_int
    return lib


def _lib() -> ctypes.CDLL:
    if _LIB:
        return _LIB[0]
    if _ERROR:
        raise KernelUnavailable(_ERROR[0])
    with _LOCK:
        if not _LIB and not _ERROR:
            try:
                _LIB.append(_build())
            except (KernelUnavailable, OSError) as err:
                _ERROR.append(str(err))
                raise KernelUnavailable(str(err)) from err
    return _lib()


def available() -> bool:
    """Whether the native kernel is built (building it now if needed)."""
    try:
        _lib()
    except KernelUnavailable:
        return False
    return True


_WORK = threading.local()


def workspace(name: str, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> Tensor:
    """A scratch tensor of ``shape`` for this thread, reused across calls (grown when too small).

    The kernels' large temporaries (logits, ``G_h o``) come from here: on Linux a fresh multi-MiB
    tensor is a new mmap, and its page faults and unmapping cost several times the BLAS call that
    fills it (measured: a [6, 2048, 64] bmm 0.5 ms into a reused buffer, 2 ms into a fresh one).
    The contents are overwritten by the next call with the same name: use the result before then.
    """
    store = getattr(_WORK, "buffers", None)
    if store is None:
        store = _WORK.buffers = {}
    buf = store.get((name, dtype))
    last = store.get((name, dtype, "view"))  # the last view handed out: every ViT layer asks for the same shape
    if last is not None and last[0] is buf and last[1] == shape:
        return last[2]
    size = 1
    for dim in shape:
        size *= dim
    if buf is None or buf.numel() < size:
        with torch.inference_mode(False):  # a normal tensor: usable in and out of inference mode
            buf = store[(name, dtype)] = torch.empty(size, dtype=dtype)
    view = buf[:size].view(shape)
    store[(name, dtype, "view")] = (buf, tuple(shape), view)
    return view


def clear_workspace() -> None:
    """Free this thread's scratch buffers (:func:`workspace`)."""
    _WORK.buffers = {}


KERNELS = ("auto", "native", "eager")
_WARNED: list[bool] = []


def uses_native(choice: str, device: torch.device | str = "cpu") -> bool:
    """Whether a measure (:func:`~nlanalysis.measure.heads.measure_heads`, :func:`~nlanalysis.measure.measure_block`)
    with ``kernels=choice`` runs the native kernels for maps on ``device`` (building them now if needed;
    ``"native"`` warns once when it cannot)."""
    if choice not in KERNELS:
        raise ValueError(f"kernels must be one of {KERNELS}, got {choice!r}")
    if choice == "eager":
        return False
    if torch.device(device).type == "cpu" and available():
        return True
    if choice == "native" and not _WARNED:
        _WARNED.append(True)
        why = why_unavailable() or f"maps on {torch.device(device)}, the kernels are for the CPU"
        warnings.warn(f"native statistics kernels unavailable ({why}); using eager PyTorch", stacklevel=3)
    return False


def why_unavailable() -> str | None:
    """Why the native kernel could not be built (None if it was, or was not tried yet)."""
    return _ERROR[0] if _ERROR else None


def _ptr(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _addr(t: Tensor | None) -> int:
    """``t``'s address for a packed argument array (``0``: NULL)."""
    return 0 if t is None else t.data_ptr()


def _on_cpu(name: str, t: Tensor | None) -> None:
    """Any dtype, but in host memory: a CUDA or meta tensor's pointer must never reach C."""
    if t is not None and t.device.type != "cpu":
        raise ValueError(f"{name} must be on the CPU, got {t.device}")


def _f32(t: Tensor | None) -> Tensor | None:
    """``t`` as a contiguous float32 tensor (itself when it already is), its elements in C order."""
    if t is None or (t.dtype == torch.float32 and t.is_contiguous()):
        return t
    return t.to(torch.float32).contiguous()


def _as_kernel(t: Tensor, shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
    """``t.reshape(shape).to(dtype).contiguous()``: ``t`` itself where it already is that (a mask made once per forward,
    passed to every layer: no view and no conversion call per layer)."""
    if t.dtype == dtype and t.shape == shape and t.is_contiguous():
        return t
    return t.reshape(shape).to(dtype).contiguous()


def _check_cpu(name: str, t: Tensor) -> None:
    if t.dtype != torch.float32 or t.device.type != "cpu":
        raise ValueError(f"{name} must be float32 on the CPU, got {t.dtype} on {t.device}")


def _indices(name: str, a: Tensor, b: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """``a``, ``b`` as contiguous int64 CPU ``[P]`` row indices below ``size`` (ValueError naming ``name`` otherwise)."""
    _on_cpu("a", a)
    _on_cpu("b", b)
    a, b = a.to(torch.int64).contiguous(), b.to(torch.int64).contiguous()
    if a.shape != b.shape or a.dim() != 1:
        raise ValueError(f"{name}: a and b must be [P] each, got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.numel() and not (0 <= min(int(a.min()), int(b.min())) and max(int(a.max()), int(b.max())) < size):
        raise ValueError(f"{name}: row indices must lie in [0, {size})")
    return a, b


def _labels(objects: tuple[Tensor, Tensor, Tensor] | None, b: int, nq: int, k: int) -> tuple[Tensor | None, ...]:
    """Query labels ``[B, nq]`` int32, key labels ``[B, K]`` int32, query shares ``[B, nq]`` float32, or Nones."""
    if objects is None:
        return None, None, None
    for name, t in zip(("query_labels", "key_labels", "query_share"), objects):
        _on_cpu(name, t)
    return (objects[0].reshape(b, nq).to(torch.int32).contiguous(), objects[1].reshape(b, k).to(torch.int32).contiguous(),
            objects[2].reshape(b, nq).to(torch.float32).contiguous())  # fmt: skip


def _table(rows: tuple[Tensor, Tensor, Tensor, Tensor] | None, b: int, nq: int, maps: int, k: int) -> tuple[Tensor | None, ...]:
    """``(sel, table, entropy, ok)`` checked against the kernel's layout (``maps`` rows per query), or Nones."""
    if rows is None:
        return None, None, None, None
    sel, table, ent, ok = rows
    _on_cpu("sel", sel)
    sel = sel.reshape(b, nq).to(torch.int64).contiguous()
    size = table.shape[0]
    for name, t, shape, dtype in (("table", table, (size, maps, k), torch.float32), ("entropy", ent, (size, maps), torch.float32),
                                  ("ok", ok, (size, maps), torch.uint8)):  # fmt: skip
        if t.dtype != dtype or t.device.type != "cpu" or tuple(t.shape) != shape or not t.is_contiguous():
            raise ValueError(f"row_stats: {name} must be a contiguous {dtype} CPU tensor {shape}, got {t.dtype} {tuple(t.shape)}")
    if sel.numel() and not -1 <= int(sel.min()) <= int(sel.max()) < size:
        raise ValueError(f"row_stats: sel points past the table's {size} rows")
    return sel, table, ent, ok


def _suite_args(suite: SuiteSums | None, start: int, b: int, h: int, maps: int, k: int, nq: int) -> int | None:
    """The address of ``suite``'s kernel arguments for queries ``start:start + nq``, checked against the pass."""
    if suite is None:
        return None
    if (suite.batch, suite.heads, suite.maps, suite.n_key) != (b, h, maps, k):
        raise ValueError(f"row_stats: the suite's sums are for (B, H, M, K) = {(suite.batch, suite.heads, suite.maps, suite.n_key)}, "
                         f"the pass has {(b, h, maps, k)}")  # fmt: skip
    return suite.call_args(start, start + nq)


@no_grad
def row_stats(
    logits: Tensor,
    km: Tensor | None,
    qm: Tensor | None,
    first: int,
    prefix: int,
    rows: tuple[Tensor, Tensor, Tensor, Tensor] | None = None,
    scale: float = 1.0,
    objects: tuple[Tensor, Tensor, Tensor] | None = None,
    probs: Tensor | None = None,
    pre: int = 0,
    mean: bool = True,
    suite: SuiteSums | None = None,
    suite_start: int = 0,
) -> tuple[Tensor, Tensor]:
    """Statistics of the attention rows of one site in one pass (see ``row_stats.c``).

    Args:
        logits: ``[B, H, pre + nq, N]`` float32 logits ``q_i . k_j`` over every key token (``pre`` class/register
            queries, then the ``nq`` queries measured); the softmax runs over ``scale * logits`` (``scale > 0``).
            Read in place when contiguous or a slice of rows of a contiguous ``[B, H, rows, N]`` tensor
            (copied otherwise). ``N`` need not be ``nq`` (keys sub-sampled, class/register keys).
        km: ``[B, K]`` key weights (``K = N - first``) or None; qm: ``[B, nq]`` valid queries or None.
        first: first key token; prefix: class/register tokens.
        rows: rows to hand out renormalised (the JSD's), as ``(sel, table, entropy, ok)``: ``sel``
            ``[B, nq]`` int64 row of the table for each query (``-1``: none); the table ``[S, M, K]``,
            entropies ``[S, M]`` (float32) and non-zero flags ``[S, M]`` (uint8) are filled at
            those rows, in place.
        objects: ``(query_labels [B, nq], key_labels [B, K], query_share [B, nq])``: each query's
            object (``> 0``; 0: none), each key's (``<= 0``: none), and the share of valid keys on the
            query's object; then ``sums`` rows 5-7 hold the own-object statistics.
        probs: ``[B, H, nq, N]`` float32 strided as ``logits`` (then read in place), filled with each
            row's softmax over every token (padding queries included: what the model attends with);
            may be ``logits`` itself.
        pre: leading rows of ``logits`` only softmaxed into ``probs`` (no statistics; needs ``probs``).
        mean: a last map, the mean of the ``H`` maps (``M = H + 1``); ``False``: the ``H`` maps only (``M = H``).
        suite: the cheap query-dependence suite's sums (:class:`.suite.SuiteSums` of the site), to which
            these rows' are added; ``suite_start``: the site's query at this call's first query row.

    Returns:
        ``s`` ``[B, M, K]`` float64 (sum of valid non-zero rows as unit vectors) and ``sums``
        ``[8, B, M]`` float64, as :func:`nlanalysis.measure.head_rows._chunk_stats`.

    Raises:
        KernelUnavailable: the library could not be built.
    """
    lib = _lib()
    _check_cpu("logits", logits)
    b, h, n_rows, n = logits.shape
    nq, maps = n_rows - pre, h + int(mean)
    if not 0 <= pre <= n_rows or (pre and probs is None) or not scale > 0:
        raise ValueError(f"row_stats: pre must be in [0, {n_rows}] and needs probs, scale > 0; got pre {pre}, scale {scale}")
    if not 0 <= prefix <= n or first not in (0, prefix):
        raise ValueError(f"row_stats: prefix must be in [0, {n}] and first 0 or prefix, got prefix {prefix}, first {first}")
    _on_cpu("km", km)
    _on_cpu("qm", qm)
    k = n - first
    lbh = logits.stride(1) if h > 1 else (logits.stride(0) if b > 1 else n_rows * n)  # one (image, head) to the next
    if logits.stride()[2:] != (n, 1) or lbh < n_rows * n or (b > 1 and logits.stride(0) != h * lbh):
        logits, lbh = logits.contiguous(), n_rows * n  # rows of a contiguous [B, H, rows, N] are read in place
    km = None if km is None else _as_kernel(km, (b, k), torch.float32)
    qm = None if qm is None else _as_kernel(qm, (b, nq), torch.uint8)
    s = torch.empty(b, maps, k, dtype=torch.float64)
    sums = torch.empty(8, b, maps, dtype=torch.float64)
    qlab, klab, qshare = _labels(objects, b, nq, k)
    sel, table, ent, ok = _table(rows, b, nq, maps, k)
    if probs is not None and (probs.dtype != torch.float32 or probs.device.type != "cpu" or probs.shape != logits.shape
                              or probs.stride() != logits.stride()):  # written with the logits' strides (after any copy)  # fmt: skip
        raise ValueError(f"row_stats: probs must be a float32 CPU tensor {tuple(logits.shape)} strided as the logits, "
                         f"got {probs.dtype} {tuple(probs.shape)} strides {probs.stride()}")  # fmt: skip
    args = array("q", (  # nl_row_stats' arguments but the scale, packed (NULL: 0): one ctypes conversion, not 24
        _addr(logits), _addr(km), _addr(qm), _addr(sel), _addr(qlab), _addr(klab), _addr(qshare), b, h, nq, n, lbh, pre, first,
        prefix, int(mean), _addr(s), _addr(sums), _addr(table), _addr(ent), _addr(ok), _addr(probs),
        _suite_args(suite, suite_start, b, h, maps, k, nq) or 0,
    ))  # fmt: skip
    rc = lib.nl_row_stats_packed(args.buffer_info()[0], scale)
    if rc != 0:
        raise MemoryError("row_stats: could not allocate its per-thread buffers")
    return s, sums


@no_grad
def pair_jsd(
    table: Tensor, ent: Tensor, ok: Tensor, a: Tensor, b: Tensor, image: Tensor | None = None, batch: int = 0
) -> Tensor | tuple[Tensor, Tensor, Tensor]:
    """JSD (bits) of row pairs ``(a, b)`` of renormalised rows ``table`` ``[S, H+1, K]`` -> ``[P, H+1]``
    float32, NaN where either row is all zero (``ok`` 0); as :func:`nlanalysis.measure.jsd_pairs._pair_jsd`.
    ``ent``: the rows' entropies ``[S, H+1]`` (nats) the row pass gives, for the fast form ``H(m) - (H(p) + H(q)) / 2``
    (within ~1e-4 relative above its cut, ``row_stats.c``'s ``JSD_EXACT_BELOW``); pairs below the cut are summed again
    as non-negative per-key terms (``jsd_term``), so near-identical rows' JSD (~1e-8 bits) keeps its float precision.

    With ``image`` (``[P]``, the image of each pair, ``< batch``): per image and head instead, the
    number of defined values, their mean and sample variance, each ``[batch, H+1]`` float64 (mean
    and variance 0 where no value is defined, variance 0 for one value).
    """
    lib = _lib()
    _check_cpu("table", table)
    s, h1, k = table.shape
    a, b = _indices("pair_jsd", a, b, s)
    for name, t in (("entropies", ent), ("flags", ok), ("image", image)):  # their pointers reach C
        _on_cpu(name, t)
    if tuple(ent.shape) != (s, h1) or tuple(ok.shape) != (s, h1):
        raise ValueError(f"pair_jsd: entropies and flags must be [{s}, {h1}], got {tuple(ent.shape)} and {tuple(ok.shape)}")
    out = torch.empty(a.numel(), h1)
    out_ok = torch.empty(a.numel(), h1, dtype=torch.uint8)
    lib.nl_pair_jsd(
        _ptr(table.contiguous()), _ptr(ent.to(torch.float32).contiguous()), _ptr(ok.to(torch.uint8).contiguous()),
        _ptr(a), _ptr(b), a.numel(), h1, k, _ptr(out), _ptr(out_ok),
    )  # fmt: skip
    if image is None:
        return out.masked_fill_(out_ok == 0, float("nan"))
    image = image.to(torch.int64).contiguous()
    if image.shape != a.shape or (image.numel() and not (0 <= int(image.min()) and int(image.max()) < batch)):
        raise ValueError(f"pair_jsd: image must be [P] with values in [0, {batch})")
    count, mean, var = (torch.empty(batch, h1, dtype=torch.float64) for _ in range(3))
    lib.nl_jsd_by_image(_ptr(out), _ptr(out_ok), _ptr(image), a.numel(), h1, batch, _ptr(count), _ptr(mean), _ptr(var))
    return count, mean, var



from .sums import all_finite, table_jsd, unit_sum  # noqa: E402  (they call _lib and the checks above)
from .finalise import head_finalise  # noqa: E402
from .suite import SuiteSums, log_positive  # noqa: E402
from .features import feature_stats, token_stats  # noqa: E402
