"""The thread policy of the eager statistics (nlanalysis.metrics.threads): one intra-op thread inside,
torch's setting restored after, nested and concurrent uses, the environment override."""
import threading

import pytest
import torch

import nlanalysis.metrics.cosine as cosine
import nlanalysis.metrics.threads as threads
from nlanalysis.metrics import CosineAccumulator, mean_pairwise_cosine_distance
from nlanalysis.metrics.threads import statistics_thread_count, statistics_threads


@pytest.fixture
def two_threads():
    found = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(found)


def test_one_thread_inside_restored_after(two_threads, monkeypatch):
    monkeypatch.delenv("NLANALYSIS_STAT_THREADS", raising=False)
    with statistics_threads() as inside:
        assert inside == torch.get_num_threads() == 1
        with statistics_threads():  # nested: still one, and the outer exit restores
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2


def test_restored_after_an_error(two_threads):
    with pytest.raises(RuntimeError, match="boom"):
        with statistics_threads():
            raise RuntimeError("boom")
    assert torch.get_num_threads() == 2


def test_environment_override(two_threads, monkeypatch):
    monkeypatch.setenv("NLANALYSIS_STAT_THREADS", "0")  # leave torch's count alone
    with statistics_threads() as inside:
        assert inside == 2
    monkeypatch.setenv("NLANALYSIS_STAT_THREADS", "2")
    assert statistics_thread_count() == 2
    for bad in ("two", "-1"):
        monkeypatch.setenv("NLANALYSIS_STAT_THREADS", bad)
        with pytest.raises(ValueError, match="NLANALYSIS_STAT_THREADS must be an integer >= 0"):
            statistics_thread_count()


def test_the_cosine_statistic_runs_on_one_thread(two_threads, monkeypatch):
    monkeypatch.delenv("NLANALYSIS_STAT_THREADS", raising=False)
    seen = []
    real = cosine._unit_sum

    def spy(v, used):
        seen.append(torch.get_num_threads())
        return real(v, used)

    monkeypatch.setattr(cosine, "_unit_sum", spy)
    v = torch.randn(3, 50, 7)
    mean_pairwise_cosine_distance(v, chunk_size=16)
    CosineAccumulator(7, (3,)).update(v)
    assert seen and set(seen) == {1}
    assert torch.get_num_threads() == 2


def test_concurrent_users_restore_the_count(two_threads, monkeypatch):
    monkeypatch.delenv("NLANALYSIS_STAT_THREADS", raising=False)
    inside, go = threading.Event(), threading.Event()

    def worker():
        with statistics_threads():
            inside.set()
            go.wait(10)

    t = threading.Thread(target=worker)
    t.start()
    inside.wait(10)
    with statistics_threads():  # the second user enters while the first holds it
        pass
    go.set()
    t.join(10)
    assert torch.get_num_threads() == 2


def _loadavg(tmp_path, monkeypatch, runnable: int, here: int) -> None:
    path = tmp_path / "loadavg"
    path.write_text(f"3.10 2.00 1.00 {runnable}/300 4242\n")
    monkeypatch.setattr(threads, "_LOADAVG", str(path))
    monkeypatch.setattr(threads, "_runnable_here", lambda: here)
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)


@pytest.mark.parametrize(("runnable", "here", "free"), [(1, 1, 4), (3, 2, 3), (3, 1, 2), (9, 1, 1), (0, 0, 4)])
def test_free_cores_counts_other_runnable_tasks(tmp_path, monkeypatch, runnable, here, free):
    _loadavg(tmp_path, monkeypatch, runnable, here)
    assert threads.free_cores() == free


def test_free_core_threads_caps_and_restores(tmp_path, monkeypatch, two_threads):
    _loadavg(tmp_path, monkeypatch, 4, 1)  # three others runnable on four CPUs: one free
    with threads.free_core_threads() as inside:
        assert inside == torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2
    _loadavg(tmp_path, monkeypatch, 1, 1)  # quiet: torch's count stays
    with threads.free_core_threads() as inside:
        assert inside == 2
    monkeypatch.setattr(threads, "_LOADAVG", str(tmp_path / "missing"))  # not Linux: unknown, unchanged
    assert threads.free_cores() is None
    with threads.free_core_threads() as inside:
        assert inside == 2


def test_free_cores_off_by_environment(tmp_path, monkeypatch, two_threads):
    _loadavg(tmp_path, monkeypatch, 4, 1)  # one free core, but the user pinned the count
    monkeypatch.setenv("NLANALYSIS_FREE_CORES", "0")
    with threads.free_core_threads() as inside:
        assert inside == torch.get_num_threads() == 2


def test_analyze_runs_on_the_free_cores(tmp_path, monkeypatch, two_threads):
    """analyze caps torch's threads at the free cores while it runs (the model sees 1 of 2 here)."""
    from nlanalysis import analyze
    from nlanalysis.blocks import NonLocal2d

    _loadavg(tmp_path, monkeypatch, 4, 1)
    monkeypatch.delenv("NLANALYSIS_FREE_CORES", raising=False)
    seen = []
    block = NonLocal2d(8, mode="embedded_gaussian").eval()
    block.register_forward_pre_hook(lambda m, a: seen.append(torch.get_num_threads()))
    analyze(torch.nn.Sequential(block), torch.randn(1, 8, 5, 6), jsd_pairs=0)
    assert seen == [1] and torch.get_num_threads() == 2


@pytest.mark.skipif(not __import__("nlanalysis.kernels", fromlist=["available"]).available(), reason="needs a C compiler")
def test_native_kernels_do_not_depend_on_the_thread_count(two_threads):
    """The kernels' statistics at 1, 2 and 3 threads agree to float64 rounding (one image, so its rows are
    split between threads and their partial sums added in another order)."""
    from nlanalysis import kernels

    torch.manual_seed(0)
    logits, qm = torch.randn(1, 1, 500, 420) * 3, torch.rand(1, 500) > 0.2
    x, z = torch.randn(1, 500, 48), torch.randn(1, 500, 48)
    pairs = torch.randint(0, 500, (2, 64))
    found = []
    for count in (1, 2, 3):
        torch.set_num_threads(count)
        s, sums = kernels.row_stats(logits, None, qm, 0, 0, mean=False)
        s2, zeros = kernels.token_stats(x, z, None, None, qm)
        us, _, _ = kernels.unit_sum(x.transpose(1, 2).contiguous().transpose(1, 2))  # columns contiguous
        ur, _, _ = kernels.unit_sum(x)  # rows contiguous
        jsd = kernels.table_jsd(logits[0, 0].softmax(-1), pairs[0], pairs[1])
        found.append((s, sums, s2, zeros.double(), us, ur, jsd))
    for other in found[1:]:
        for a, b in zip(found[0], other):
            assert torch.allclose(a, b, rtol=1e-12, atol=1e-12 * float(a.abs().max()))
