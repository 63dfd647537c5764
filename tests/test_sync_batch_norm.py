"""SyncBatchNorm in fused blocks: several processes (gloo, CPU) training on shards of a
batch must equal one process training on the whole batch, which is SyncBatchNorm's
definition (weights, BatchNorm buffers and loss).

The CIFAR ResNets here keep BatchNorm only inside their residual blocks (stem and final
BatchNorm replaced by Identity): a BatchNorm outside a block is not fused, and
nn.SyncBatchNorm itself refuses CPU tensors once a process group exists.
"""
from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import fused_resnet
from fused_resnet import sync_batch_norm
from fused_resnet.models import cifar_resnet

IMAGE, CLASSES, LR = 8, 10, 0.1
# fp64 results differ from the single process only by the order of sums; fp32 (the
# Triton interpreter) by rounding of the kernels' fp32 accumulation over a few steps.
TOL = {torch.float64: dict(rtol=1e-9, atol=1e-11), torch.float32: dict(rtol=2e-4, atol=2e-5)}


def _model(version: int, dtype: torch.dtype) -> nn.Module:
    torch.manual_seed(0)
    m = cifar_resnet(8, version=version, shortcut="B", num_classes=CLASSES)
    for name in ("bn1", "bn_final"):
        if getattr(m, name, None) is not None:
            setattr(m, name, nn.Identity())
    if version == 2:  # the other running-statistics rule: a cumulative average
        for bn in m.modules():
            if isinstance(bn, nn.BatchNorm2d):
                bn.momentum = None
    return m.to(dtype).train()


def _batch(n: int, dtype: torch.dtype, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, IMAGE, IMAGE, generator=g, dtype=torch.float64).to(dtype)
    return x, torch.randint(0, CLASSES, (n,), generator=g)


def _shard(t: torch.Tensor, sizes: list[int], rank: int) -> torch.Tensor:
    start = sum(sizes[:rank])
    return t[start:start + sizes[rank]]


def _sgd(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)


def _state(model: nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _init(rank: int, world: int, port: int) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=120))


# ---------------------------------------------------------------- one process, the whole batch


def _whole_batch(version: int, dtype: torch.dtype, n: int, steps: int, micro: int) -> dict:
    """The definition: plain BatchNorm, unfused, one process, mean loss over each whole
    micro-batch, ``micro`` micro-batches' gradients accumulated per step."""
    model = _model(version, dtype)
    opt = _sgd(model)
    batches = [_batch(n, dtype, seed) for seed in range(1, micro + 1)]
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        for x, y in batches:
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
        opt.step()
        losses.append(loss.item())
    model.eval()
    return {"state": _state(model), "losses": losses, "eval": model(batches[0][0]).detach()}


# ---------------------------------------------------------------- the ranks


def _ddp(model: nn.Module, **kwargs) -> DistributedDataParallel:
    # DDP refuses SyncBatchNorm layers in CPU modules because nn.SyncBatchNorm's own
    # kernels need a GPU; the fused blocks' statistics run on any device, so on the CPU
    # (gloo) these tests lift that check and keep the rest of DDP: buckets, no_sync,
    # static graph.
    DistributedDataParallel._passing_sync_batchnorm_handle = lambda self, module: None
    return DistributedDataParallel(model, **kwargs)


def _train_ranks(rank, world, port, out, version, dtype, backend, sizes, steps, micro, ddp_kwargs):
    """One rank: a converted SyncBatchNorm model under DDP, trained on this rank's shard
    of each micro-batch; all but the last micro-batch of a step under no_sync."""
    if backend == "triton":
        os.environ["TRITON_INTERPRET"] = "1"
    _init(rank, world, port)
    try:
        model = fused_resnet.convert(nn.SyncBatchNorm.convert_sync_batchnorm(_model(version, dtype)), backend)
        ddp = _ddp(model, **ddp_kwargs)
        opt = _sgd(ddp)
        batches = [_batch(sum(sizes), dtype, seed) for seed in range(1, micro + 1)]
        losses = []
        for _ in range(steps):
            opt.zero_grad()
            for k, (x, y) in enumerate(batches):
                with ddp.no_sync() if k < micro - 1 else contextlib.nullcontext():
                    # DDP averages the ranks' gradients: a rank's share of the micro-batch's
                    # mean loss, times the world size, makes that average the whole one's.
                    local = nn.functional.cross_entropy(ddp(_shard(x, sizes, rank)), _shard(y, sizes, rank),
                                                        reduction="sum") / sum(sizes)
                    (local * world).backward()
            opt.step()
            total = local.detach().clone()
            dist.all_reduce(total)
            losses.append(total.item())
        model.eval()
        torch.save({"state": _state(model), "losses": losses, "eval": model(batches[0][0]).detach(),
                    "kinds": sorted({type(m).__name__ for m in model.modules()})}, os.path.join(out, f"{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _spawn(fn, world: int, tmp_path, *args) -> list[dict]:
    mp.spawn(fn, args=(world, _free_port(), str(tmp_path), *args), nprocs=world, join=True)
    return [torch.load(tmp_path / f"{r}.pt") for r in range(world)]


def _assert_state_close(got: dict, want: dict, tol: dict, who: str) -> None:
    assert got.keys() == want.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], **tol, msg=lambda m: f"{who}: {k}: {m}")


@pytest.mark.parametrize("version,backend,dtype,sizes,steps,micro,ddp_kwargs", [
    (1, "reference", torch.float64, [4, 4], 3, 1, {}),
    (2, "reference", torch.float64, [5, 2], 3, 1, {}),
    (1, "reference", torch.float64, [3, 3], 2, 2, {}),
    (2, "reference", torch.float64, [2, 4], 2, 1, {"static_graph": True, "bucket_cap_mb": 0.001}),
    (1, "triton", torch.float32, [3, 2], 2, 1, {}),
], ids=["even", "uneven-preact", "no_sync", "static-graph-small-buckets", "triton"])
def test_shards_train_as_the_whole_batch(tmp_path, version, backend, dtype, sizes, steps, micro, ddp_kwargs):
    ranks = _spawn(_train_ranks, len(sizes), tmp_path, version, dtype, backend, sizes, steps, micro, ddp_kwargs)
    want = _whole_batch(version, dtype, sum(sizes), steps, micro)
    tol = TOL[dtype]
    for r, got in enumerate(ranks):
        assert {"SyncBatchNorm", "FusedBasicBlock" if version == 1 else "FusedPreActBasicBlock"} <= set(got["kinds"])
        _assert_state_close(got["state"], want["state"], tol, f"rank {r}")
        torch.testing.assert_close(torch.tensor(got["losses"]), torch.tensor(want["losses"]), **tol)
        torch.testing.assert_close(got["eval"], want["eval"], **tol, msg=lambda m: f"rank {r} eval: {m}")


def _subset_ranks(rank, world, port, out):
    """Ranks 0 and 1 synchronise over their own group; rank 2 is outside it and
    normalises its shard alone, as nn.SyncBatchNorm does for a rank outside its group."""
    _init(rank, world, port)
    try:
        group = dist.new_group([0, 1])
        model = nn.SyncBatchNorm.convert_sync_batchnorm(_model(1, torch.float64), process_group=group)
        model = fused_resnet.convert(model, "reference")
        x, y = _batch(sum(SUBSET_SIZES), torch.float64)
        xs, ys = _shard(x, SUBSET_SIZES, rank), _shard(y, SUBSET_SIZES, rank)
        n = sum(SUBSET_SIZES[:2]) if rank < 2 else SUBSET_SIZES[2]
        (nn.functional.cross_entropy(model(xs), ys, reduction="sum") / n).backward()
        grads = {k: p.grad for k, p in model.named_parameters()}
        if rank < 2:
            for g in grads.values():
                dist.all_reduce(g, group=group)
        torch.save({"state": _state(model), "grads": grads}, os.path.join(out, f"{rank}.pt"))
    finally:
        dist.destroy_process_group()


SUBSET_SIZES = [3, 2, 4]


def _one_step(x, y) -> dict:
    model = _model(1, torch.float64)
    nn.functional.cross_entropy(model(x), y).backward()
    return {"state": _state(model), "grads": {k: p.grad for k, p in model.named_parameters()}}


def test_process_group_subset(tmp_path):
    ranks = _spawn(_subset_ranks, 3, tmp_path)
    x, y = _batch(sum(SUBSET_SIZES), torch.float64)
    pair = _one_step(x[:5], y[:5])
    alone = _one_step(x[5:], y[5:])
    tol = TOL[torch.float64]
    for r, want in ((0, pair), (1, pair), (2, alone)):
        _assert_state_close(ranks[r]["state"], want["state"], tol, f"rank {r}")
        _assert_state_close(ranks[r]["grads"], want["grads"], tol, f"rank {r} gradients")


# ---------------------------------------------------------------- one process


def _train_one(model: nn.Module, x, y, steps: int = 2) -> dict:
    opt = _sgd(model)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return _state(model)


@pytest.mark.parametrize("initialised", [False, True], ids=["no-process-group", "world-of-one"])
def test_one_process_is_plain_batch_norm(tmp_path, initialised):
    """Without an initialised process group, or in a world of one, a SyncBatchNorm is a
    plain BatchNorm, as nn.SyncBatchNorm is."""
    x, y = _batch(6, torch.float64)
    want = _train_one(_model(1, torch.float64), x, y)
    model = fused_resnet.convert(nn.SyncBatchNorm.convert_sync_batchnorm(_model(1, torch.float64)), "reference")
    if initialised:
        dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        got = _train_one(model, x, y)
    finally:
        if initialised:
            dist.destroy_process_group()
    _assert_state_close(got, want, TOL[torch.float64], "one process")


def test_a_process_group_that_is_not_one_is_refused(tmp_path):
    """A list of ranks where a group belongs (new_group's argument, not its result) is named
    in the error at the first training forward."""
    model = nn.SyncBatchNorm.convert_sync_batchnorm(_model(1, torch.float64), process_group=[0])
    model = fused_resnet.convert(model, "reference")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        with pytest.raises(TypeError, match=r"process_group must be a torch.distributed.ProcessGroup .* list: \[0\]"):
            model(_batch(2, torch.float64)[0])
    finally:
        dist.destroy_process_group()


def test_convert_fuses_sync_batch_norm_either_order(caplog):
    sync_first = fused_resnet.convert(nn.SyncBatchNorm.convert_sync_batchnorm(_model(1, torch.float32)))
    convert_first = nn.SyncBatchNorm.convert_sync_batchnorm(fused_resnet.convert(_model(1, torch.float32)))
    assert "leaving" not in caplog.text
    for model in (sync_first, convert_first):
        blocks = [m for m in model.modules() if isinstance(m, fused_resnet.blocks.FUSED_BLOCKS)]
        assert blocks and all(isinstance(b.bn1, nn.SyncBatchNorm) for b in blocks)
        assert not fused_resnet.blocks.unsupported_reason(blocks[0])


def test_revert_gives_back_sync_batch_norm():
    group = object()
    model = nn.SyncBatchNorm.convert_sync_batchnorm(_model(2, torch.float32), process_group=group)
    back = fused_resnet.revert(fused_resnet.convert(model))
    kinds = [(n, type(m).__name__) for n, m in back.named_modules()]
    assert kinds == [(n, type(m).__name__) for n, m in model.named_modules()]
    assert all(m.process_group is group for m in back.modules() if isinstance(m, nn.SyncBatchNorm))


def _compiled_ranks(rank, world, port, out):
    """torch.compile traces the synchronised statistics (collectives included) without a
    graph break, and the compiled training step gives the eager one's loss and gradients."""
    _init(rank, world, port)
    try:
        model = fused_resnet.convert(nn.SyncBatchNorm.convert_sync_batchnorm(_model(1, torch.float32)), "reference")
        x, y = _batch(4, torch.float32)
        xs, ys = _shard(x, [2, 2], rank), _shard(y, [2, 2], rank)
        explained = torch._dynamo.explain(model)(xs)
        results = {"graph_breaks": explained.graph_break_count}
        for name, m in (("eager", model), ("compiled", torch.compile(model, backend="aot_eager"))):
            model.zero_grad()
            loss = nn.functional.cross_entropy(m(xs), ys)
            loss.backward()
            results[name] = {"loss": loss.detach(), **{k: p.grad.clone() for k, p in model.named_parameters()}}
        torch.save(results, os.path.join(out, f"{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_compiled_sync_has_no_graph_break(tmp_path):
    for r, got in enumerate(_spawn(_compiled_ranks, 2, tmp_path)):
        assert got["graph_breaks"] == 0, f"rank {r}"
        _assert_state_close(got["compiled"], got["eager"], TOL[torch.float32], f"rank {r} compiled")


def test_bench_script_runs_a_world_of_one_on_gloo(tmp_path):
    """bench/bench_sync_batch_norm.py, the GPU benchmark, as a CPU dry run: the fused
    SyncBatchNorm variant runs its collectives in a world of one; nn.SyncBatchNorm's
    CPU refusal is reported in its row, not raised."""
    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "sync.json"
    cmd = [sys.executable, str(root / "bench" / "bench_sync_batch_norm.py"), "--device", "cpu", "--model",
           "cifar_resnet8", "--batch", "4", "--no-ddp", "--sync-scope", "blocks", "--steps", "1", "--warmup", "0",
           "--json", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=str(root))
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {r["variant"]: r for r in json.loads(out.read_text())["rows"]}
    assert all(rows[v]["img_s"] > 0 for v in ("eager", "fused", "fused+sync")), rows
    assert "error" in rows["eager+sync"], rows["eager+sync"]


# ---------------------------------------------------------------- on a GPU: NCCL, DDP, CUDA graphs


@pytest.fixture
def nccl_world_of_one(tmp_path, monkeypatch):
    """A one-rank NCCL group in which the fused SyncBatchNorms run their collectives anyway
    (as bench/bench_sync_batch_norm.py forces them): the merged statistics are the rank's own,
    so a step must equal plain BatchNorm's, through NCCL's all-gather and all-reduce."""
    dist.init_process_group("nccl", init_method=f"file://{tmp_path / 'nccl'}", rank=0, world_size=1)
    monkeypatch.setattr(sync_batch_norm, "process_group",
                        lambda bn: dist.group.WORLD if isinstance(bn, nn.SyncBatchNorm) and bn.training else None)
    try:
        yield
    finally:
        dist.destroy_process_group()


def _cuda_batch():
    x, y = _batch(8, torch.float32)
    return x.cuda().contiguous(memory_format=torch.channels_last), y.cuda()


def _fused_sync(backend: str) -> nn.Module:
    model = nn.SyncBatchNorm.convert_sync_batchnorm(_model(1, torch.float32))
    return fused_resnet.convert(model, backend).cuda().to(memory_format=torch.channels_last)


@pytest.mark.gpu
@pytest.mark.usefixtures("nccl_world_of_one", "no_tf32")
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_gpu_synchronised_steps_under_ddp_equal_plain_batch_norm(backend):
    x, y = _cuda_batch()
    want = _train_one(_model(1, torch.float32).cuda().to(memory_format=torch.channels_last), x, y)
    model = _fused_sync(backend)
    got = _train_one(DistributedDataParallel(model, device_ids=[0]), x, y)
    _assert_state_close({k.removeprefix("module."): v for k, v in got.items()}, want, TOL[torch.float32], backend)


@pytest.mark.gpu
@pytest.mark.usefixtures("nccl_world_of_one", "no_tf32")
def test_gpu_synchronised_step_replays_from_a_cuda_graph():
    """Forward and backward with the collectives, captured once and replayed, give the
    eager step's gradients."""
    from fused_resnet.tools.timing import make_graph_step

    x, y = _cuda_batch()
    model = _fused_sync("auto")
    params = dict(model.named_parameters())

    def step():
        nn.functional.cross_entropy(model(x), y).backward()

    step()
    want = {k: p.grad.clone() for k, p in params.items()}
    model.zero_grad(set_to_none=True)
    replay = make_graph_step(step, reset=lambda: model.zero_grad(set_to_none=True))
    replay()
    torch.cuda.synchronize()
    _assert_state_close({k: p.grad for k, p in params.items()}, want, TOL[torch.float32], "replayed")
