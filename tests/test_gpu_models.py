"""Whole converted models on a GPU against torchvision, per dtype and backend.

The fused model in fp16/bf16 must be within 2x of plain PyTorch's error in the
same dtype, both measured against the model run in fp64 on the same device.
Eval and train mode (outputs, input gradient, parameter gradients, BatchNorm
buffers after three steps).
"""
import copy

import pytest
import torch
import torchvision

import fused_resnet
from fused_resnet.models import cifar_resnet

from helpers import assert_rel_within_2x, rel_err

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def _heuristic_triton_configs(monkeypatch):
    """Parity does not depend on which Triton configuration is fastest, and timing every
    candidate of every kernel of six models is most of these tests' time on a GPU. Each
    candidate's correctness is triton/test_conv_backward.py's test_every_autotune_candidate_is_correct,
    the timed path the other @gpu Triton tests'."""
    monkeypatch.setenv("FUSED_RESNET_TRITON_AUTOTUNE", "0")

MODELS = {
    "resnet18": (lambda: torchvision.models.resnet18(), 224),
    "resnet50": (lambda: torchvision.models.resnet50(), 224),
    "resnext50_32x4d": (lambda: torchvision.models.resnext50_32x4d(), 224),
    "wide_resnet50_2": (lambda: torchvision.models.wide_resnet50_2(), 224),
    "cifar_resnet56": (lambda: cifar_resnet(56), 32),
    "cifar_resnet20_v2_B": (lambda: cifar_resnet(20, version=2, shortcut="B"), 32),
}
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
BACKENDS = ["triton", "cuda"]


def _backend_or_skip(name):
    ok, reason = fused_resnet.available_backends()[name]
    if not ok:
        pytest.fail(f"backend {name} unavailable on a GPU machine: {reason}")


def _models(name, dtype, backend):
    torch.manual_seed(0)
    build, hw = MODELS[name]
    base = build().cuda().to(memory_format=torch.channels_last)
    ref = copy.deepcopy(base).double()
    plain = copy.deepcopy(base).to(dtype)
    fused = fused_resnet.convert(copy.deepcopy(base), backend=backend).to(dtype)
    x = torch.randn(8, 3, hw, hw, device="cuda").contiguous(memory_format=torch.channels_last)
    return ref, plain, fused, x


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", sorted(MODELS))
def test_eval_logits(name, dtype, backend):
    _backend_or_skip(backend)
    ref, plain, fused, x = _models(name, dtype, backend)
    for m in (ref, plain, fused):
        m.eval()
    with torch.no_grad():
        y64, yp, yf = ref(x.double()), plain(x.to(dtype)), fused(x.to(dtype))
    assert yf.dtype == yp.dtype
    assert all(b.backend == backend for b in fused.modules() if isinstance(b, fused_resnet.blocks.FUSED_BLOCKS))
    if dtype == torch.float32:
        assert rel_err(yf, y64) < 1e-2  # tf32 convolutions on both sides
    assert_rel_within_2x(yf, yp, y64, f"{name} {dtype} logits")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", ["resnet50", "cifar_resnet56", "cifar_resnet20_v2_B"])
def test_train_steps_under_autocast(name, dtype, backend):
    _backend_or_skip(backend)
    ref, plain, fused, x = _models(name, torch.float32, backend)
    for m in (ref, plain, fused):
        m.train()
    for step in range(3):
        xs = x + 0.1 * step
        y64 = ref(xs.double())
        y64.float().square().mean().backward()
        outs = []
        for m in (plain, fused):
            with torch.autocast("cuda", dtype=dtype):
                y = m(xs)
            y.float().square().mean().backward()
            outs.append(y)
        assert_rel_within_2x(outs[1], outs[0], y64, f"{name} step {step} logits", atol=1e-3)
        for (n, p64), (_, pp), (_, pf) in zip(ref.named_parameters(), plain.named_parameters(), fused.named_parameters()):
            assert_rel_within_2x(pf.grad, pp.grad, p64.grad, f"{name} step {step} grad {n}", atol=1e-3)
        for m in (ref, plain, fused):
            m.zero_grad()
    for (n, b64), (_, bp), (_, bf) in zip(ref.named_buffers(), plain.named_buffers(), fused.named_buffers()):
        if b64.is_floating_point():
            assert_rel_within_2x(bf, bp, b64, f"{name} buffer {n}", atol=1e-3)
        else:
            assert torch.equal(bf, bp), n


@pytest.mark.parametrize("name", ["resnet50", "resnext50_32x4d", "cifar_resnet20_v2_B"])
def test_cuda_and_triton_agree(name):
    """The two GPU backends on the same inputs, one bf16 autocast training step: their logits
    and parameter gradients differ from each other by no more than each may differ from the
    fp64 model under the 2x rule (so by at most 4x plain PyTorch's relative error)."""
    for backend in BACKENDS:
        _backend_or_skip(backend)
    ref, plain, fused_t, x = _models(name, torch.float32, "triton")
    fused_c = fused_resnet.convert(copy.deepcopy(plain), backend="cuda")  # plain: the unconverted fp32 copy
    outs = {}
    for key, m in (("ref", ref), ("plain", plain), ("triton", fused_t), ("cuda", fused_c)):
        m.train()
        if key == "ref":
            y = m(x.double())
        else:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                y = m(x)
        y.float().square().mean().backward()
        outs[key] = [y] + [p.grad for p in m.parameters()]
    names = ["logits"] + [n for n, _ in ref.named_parameters()]
    for i, n in enumerate(names):
        bound = 4 * rel_err(outs["plain"][i], outs["ref"][i]) + 2e-3
        diff = rel_err(outs["cuda"][i], outs["triton"][i].double())
        assert diff <= bound, f"{name} {n}: cuda and triton differ by {diff:.3g} > {bound:.3g}"


@pytest.mark.parametrize("backend", BACKENDS)
def test_training_step_replays_from_a_cuda_graph(backend):
    """A whole bf16 training step (forward, backward, SGD) of a converted model captured in a
    CUDA graph and replayed takes the same steps as running it eagerly: nothing in the fused
    path syncs with the host, allocates outside the graph's pool, or caches a tensor that the
    replays would leave stale."""
    from fused_resnet.tools.models import make_input
    from fused_resnet.tools.timing import make_graph_step, make_train_step, prepare

    _backend_or_skip(backend)
    torch.manual_seed(0)
    base = fused_resnet.convert(cifar_resnet(20), backend=backend)
    eager, graphed = (prepare(copy.deepcopy(base), mode="train", dtype=torch.bfloat16, device=torch.device("cuda"))
                      for _ in range(2))
    x, target = make_input(32, 32, num_classes=10, seed=1, device="cuda", dtype=torch.float32)
    warmup, replays = 3, 4
    eager_step = make_train_step(eager, x, target, torch.bfloat16, lr=0.05)
    replay = make_graph_step(make_train_step(graphed, x, target, torch.bfloat16, lr=0.05, zero_grad=False),
                               warmup=warmup, reset=lambda: graphed.zero_grad(set_to_none=True))
    for _ in range(warmup):
        eager_step()
    start = {k: v.detach().clone() for k, v in eager.state_dict().items()}
    for _ in range(replays):
        eager_step()
        replay()
    torch.cuda.synchronize()
    got, want = graphed.state_dict(), eager.state_dict()
    for k, w in want.items():
        if k.endswith("num_batches_tracked"):
            assert got[k].item() == w.item() == warmup + replays, k
            continue
        moved = (w.double() - start[k].double()).norm().item()
        diff = (got[k].double() - w.double()).norm().item()
        assert diff <= 0.02 * moved + 1e-6, (k, diff, moved)
