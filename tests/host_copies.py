"""A spy on copies to the host: :class:`HostCopies` records every tensor the code under test moves to the CPU."""
import traceback

import torch


class HostCopies:
    """Records ``(numel, where)`` of every ``.cpu()``, ``.to("cpu")``, ``.numpy()`` and ``.tolist()`` while open
    (``monkeypatch`` undoes it). On a CPU run these calls copy nothing, but each marks a tensor the code moves to
    the host, which a CUDA run pays for. Counted there: floating-point tensors (maps, features, queries, keys; not a
    generator's state), ``.to("cpu")`` but not ``.to(device)`` with a device object (on the CPU it cannot be told
    from keeping data on its own device; nor are ``copy_`` or item assignment into a CPU buffer, for the same reason: a
    CUDA run, or ``only_cuda`` under an emulator, sees those). ``only_cuda``: CUDA tensors of any type only, ``.to`` any CPU target."""

    def __init__(self, monkeypatch, only_cuda: bool = False):
        self.copies: list[tuple[int, str]] = []
        self.only_cuda = only_cuda
        for name in ("cpu", "to", "numpy", "tolist"):
            monkeypatch.setattr(torch.Tensor, name, self._spy(getattr(torch.Tensor, name), name))

    def _spy(self, real, name):
        def wrapped(t, *args, **kwargs):
            if (t.is_cuda if self.only_cuda else t.is_floating_point()) and (name != "to" or self._to_host(args, kwargs)):
                frame = next((f for f in reversed(traceback.extract_stack()[:-1]) if "/nlanalysis/" in f.filename), None)
                self.copies.append((t.numel(), f"{frame.filename.split('/nlanalysis/')[-1]}:{frame.lineno}" if frame else "?"))
            return real(t, *args, **kwargs)

        return wrapped

    def _to_host(self, args, kwargs) -> bool:
        target = kwargs.get("device", args[0] if args else None)
        if self.only_cuda:
            return isinstance(target, (str, torch.device)) and torch.device(target).type == "cpu"
        return target == "cpu"

    @property
    def sizes(self) -> list[int]:
        return [n for n, _ in self.copies]

    def total(self) -> int:
        """All elements copied (a map copied in row chunks is as large as one copied whole)."""
        return sum(self.sizes)

    def largest(self) -> tuple[int, str]:
        """The largest copy and where it was made (``(0, "")`` without any)."""
        return max(self.copies, default=(0, ""))
