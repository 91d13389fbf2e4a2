"""Throughput and peak memory of ``nlanalysis extract`` against the model's bare forward.

Model: ResNet-50 up to res4 with an embedded-Gaussian NL block before the last block of res4
(the NL paper's Mask R-CNN placement; :func:`nlanalysis.examples.example_arch`), saved as a native
checkpoint with mmdetection's preprocessing (fit 1333 x 800, pad to 32). Images: the real sample
photos (:func:`nlanalysis.data.sample_photos`) as JPEG files, cycled to the image count; they are
resized to 800 x 800 ... 800 x 1216 inputs (NL block over ~2,500-3,800 positions).

Measured in the same run, each configuration in its own subprocess (peak RSS is per process):

* ``bare``    -- read, preprocess (``load_image`` + ``prepare_image``) and ``model(x)``, nothing else;
* ``extract`` -- :func:`nlanalysis.extract.run_extract` of a :class:`~nlanalysis.extract.RunSpec` on the same
  files (all statistics, JSD with 512 pairs, parts written atomically, ``metrics.csv`` assembled;
  ``--save-maps`` adds maps).

Both from before the checkpoint is loaded to the end, in wall time and in CPU time (the latter is
steadier on a shared machine). Reported per image count (default 10 and
100): images/s, the ratio extract / bare (target >= 0.8) and peak RSS (target: flat from 10 to 100
images), the RSS of the extract process over its run (max in each fifth: flat when nothing
accumulates), plus peak CUDA memory on a GPU.

Measured once here (shared 2-core CPU machine, other jobs running, torch 2.14.1, 1 thread):
10 images: CPU-time ratio 0.81 (wall 0.55, contended), peak RSS bare 1256 / extract 1291 MiB;
100 images: CPU-time ratio 0.85, wall ratio 0.94, peak RSS bare 1125 / extract 1393 MiB. The
peak-RSS spread (bare moved by -130 MiB between its two runs) is allocator noise; a 400-image run
of a small model kept its RSS within 890-907 MiB in every fifth of the run.

Run: ``python benchmarks/extract.py [--counts 10 100] [--threads 1] [--device cpu] [--batch-size 1]``.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def prepare(root: Path, count: int) -> tuple[Path, Path]:
    from nlanalysis.checkpoints import Preprocess, save_checkpoint
    from nlanalysis.examples import example_arch, example_model

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the test inputs live with the tests
    from extract_inputs import write_photos

    ckpt = save_checkpoint(root / "r50_nl.pth", example_model("embedded_gaussian"), Preprocess(), arch=example_arch("embedded_gaussian"))
    write_photos(root / "images", n=count)
    return ckpt, root / "images"


def child(config: str, root: Path, count: int, threads: int, device: str, batch_size: int, workers: int, save_maps: bool) -> None:
    import torch

    torch.set_num_threads(threads)
    files = sorted((root / "images").glob("*.jpg"))[:count]
    cpu0 = sum(u.ru_utime + u.ru_stime for u in (resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)))
    t0 = time.perf_counter()
    if config == "bare":
        from nlanalysis.checkpoints import load_checkpoint
        from nlanalysis.data import load_image, prepare_image

        loaded = load_checkpoint(root / "r50_nl.pth")
        model = loaded.model.to(device)
        with torch.inference_mode():
            for f in files:
                x = prepare_image(load_image(f), loaded.preprocess).tensor[None].to(device)
                model(x)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
    else:
        from nlanalysis.extract import DataSpec, ModelSpec, OutputSpec, RunningSpec, RunSpec, run_extract

        sampler = _RssSampler()
        with sampler, tempfile.TemporaryDirectory() as out:
            spec = RunSpec(model=ModelSpec(root / "r50_nl.pth"), data=DataSpec(images=[str(f) for f in files]),
                           output=OutputSpec(Path(out) / "run", save_maps=save_maps),
                           running=RunningSpec(device=device, batch_size=batch_size, workers=workers))  # fmt: skip
            report = run_extract(spec, progress=False)
            assert report.done == count, report
    seconds = time.perf_counter() - t0
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    cpu = sum(u.ru_utime + u.ru_stime for u in usage) - cpu0
    peak = usage[0].ru_maxrss / 1024
    cuda_peak = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else None
    trajectory = sampler.fifths() if config == "extract" else None
    print(json.dumps({"seconds": seconds, "cpu_seconds": cpu, "peak_rss_mib": peak, "cuda_peak_mib": cuda_peak, "rss_fifths_mib": trajectory}))


class _RssSampler:
    """Samples this process's RSS every 50 ms in a thread; ``fifths()``: the max in each fifth of the run."""

    def __enter__(self) -> "_RssSampler":
        import threading

        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        import os

        while not self._stop.wait(0.05):
            with open("/proc/self/statm") as f:
                self.samples.append(int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def fifths(self) -> list[int]:
        q = max(len(self.samples) // 5, 1)
        return [round(max(self.samples[i * q : (i + 1) * q] or [0])) for i in range(5)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--counts", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: stable on a shared machine)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--save-maps", action="store_true")
    parser.add_argument("--child", choices=["bare", "extract"])
    parser.add_argument("--root", type=Path)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.root, args.counts[0], args.threads, args.device, args.batch_size, args.workers, args.save_maps)
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        prepare(root, max(args.counts))
        rows = []
        for count in args.counts:
            result = {}
            for config in ("bare", "extract"):
                cmd = [sys.executable, __file__, "--child", config, "--root", str(root), "--counts", str(count),
                       "--threads", str(args.threads), "--device", args.device, "--batch-size", str(args.batch_size),
                       "--workers", str(args.workers)] + (["--save-maps"] if args.save_maps else [])  # fmt: skip
                out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
                result[config] = json.loads(out.strip().splitlines()[-1])
                print(f"  {config:<8} {count:>4} images: {result[config]}", file=sys.stderr, flush=True)
            rows.append((count, result))
    print(f"ResNet-50 to res4 + embedded-Gaussian NL (layer3.5), inputs fit 1333x800 (pad 32); device {args.device}, "
          f"threads {args.threads}, batch {args.batch_size}, workers {args.workers}, save_maps {args.save_maps}")  # fmt: skip
    print("img/s from wall time, and from CPU time (user + sys, this process and its workers: steadier on a shared machine)")
    print(f"{'images':>6} {'bare img/s':>11} {'extract img/s':>14} {'ratio':>6} {'ratio (CPU)':>11} {'bare peak MiB':>14} {'extract peak MiB':>17}")
    for count, r in rows:
        bare, ext = count / r["bare"]["seconds"], count / r["extract"]["seconds"]
        cpu_ratio = r["bare"]["cpu_seconds"] / r["extract"]["cpu_seconds"]
        print(f"{count:>6} {bare:11.3f} {ext:14.3f} {ext / bare:6.2f} {cpu_ratio:11.2f} {r['bare']['peak_rss_mib']:14.0f} {r['extract']['peak_rss_mib']:17.0f}"
              + (f"  (CUDA peak {r['bare']['cuda_peak_mib']:.0f} / {r['extract']['cuda_peak_mib']:.0f} MiB)" if r["bare"]["cuda_peak_mib"] else ""))  # fmt: skip
    for count, r in rows:
        print(f"extract RSS over the run of {count} images, max per fifth (MiB): {r['extract']['rss_fifths_mib']}")
    print("target: extract >= 0.8x bare throughput; extract peak memory flat from the smallest to the largest count")


if __name__ == "__main__":
    main()
