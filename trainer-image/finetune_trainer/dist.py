"""The few collectives the commit and stop protocol needs; no-ops in a single process."""

from __future__ import annotations


def _initialized() -> bool:
    try:
        import torch.distributed as td
    except ImportError:  # pragma: no cover
        return False
    return bool(td.is_available() and td.is_initialized() and td.get_world_size() > 1)


def barrier() -> None:
    if _initialized():
        import torch.distributed as td

        td.barrier()


def any_rank(flag: bool) -> bool:
    """True on every rank if `flag` is true on any rank (all-reduce MAX)."""
    if not _initialized():
        return flag
    import torch
    import torch.distributed as td

    device = "cpu"
    if td.get_backend() == "nccl":
        device = f"cuda:{torch.cuda.current_device()}"
    tensor = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    td.all_reduce(tensor, op=td.ReduceOp.MAX)
    return bool(tensor.item())
