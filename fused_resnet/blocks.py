"""Drop-in fused residual blocks.

Each fused block subclasses its unfused twin (same constructor, attributes and
state_dict keys) and replaces only ``forward`` with a chain of fused ops:

* a BatchNorm that uses running statistics (eval mode, FrozenBatchNorm2d) is
  folded into the convolution before it (weights scaled, shift as bias), or
  into the prologue of the convolution after it (pre-activation blocks);
* a BatchNorm that uses batch statistics (training mode, or no running stats)
  takes its statistics from the convolution's epilogue, and its
  normalize + ReLU is applied in the next convolution's prologue, so the
  normalized activation is never stored;
* the residual add and final ReLU run in the last convolution's epilogue, or
  in one ``bn_act`` pass when the last BatchNorm needs batch statistics.

Between stages an activation travels as an ``_Act``: a tensor plus, when a
BatchNorm is still pending, the per-channel scale/shift (and whether a ReLU
follows) that its consumer applies while loading it.
"""
from __future__ import annotations

import logging
from typing import NamedTuple, Optional

import torch
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck
from torchvision.ops.misc import FrozenBatchNorm2d

from . import backends, ops, sync_batch_norm
from .backends import speed_table
from .models.preact import PlainBasicBlock, PlainPreActBasicBlock, PreActBasicBlock, PreActBottleneck, ShortcutA

_log = logging.getLogger("fused_resnet")
_BN_TYPES = (nn.BatchNorm2d, nn.SyncBatchNorm, FrozenBatchNorm2d)
_BATCH_STATS_TYPES = (nn.BatchNorm2d, nn.SyncBatchNorm)


class _Act(NamedTuple):
    t: Tensor
    scale: Optional[Tensor] = None
    shift: Optional[Tensor] = None
    relu: bool = True

    @property
    def pending(self) -> bool:
        return self.scale is not None


class _Run(NamedTuple):
    """What every stage of one forward call needs to know."""
    backend: str
    dtype: torch.dtype


# ---------------------------------------------------------------- structure checks


def _conv_reason(conv: nn.Module, name: str) -> str:
    if type(conv) is not nn.Conv2d:
        return f"{name} is {type(conv).__name__}, not nn.Conv2d"
    if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        return f"{name} uses padding {conv.padding!r} / mode {conv.padding_mode!r}; only explicit zero padding fuses"
    return ""


def _bn_reason(bn: nn.Module, name: str) -> str:
    if type(bn) not in _BN_TYPES:
        return f"{name} is {type(bn).__name__}; only BatchNorm2d, SyncBatchNorm and FrozenBatchNorm2d fuse"
    return ""


def _relu_reason(relu: nn.Module, name: str) -> str:
    # Either inplace flag: the block's ReLUs act on intermediates, never on its input.
    if type(relu) is not nn.ReLU:
        return f"{name} is {type(relu).__name__}, not nn.ReLU (the fused block computes ReLU)"
    return ""


_HOOKS = ("_forward_pre_hooks", "_forward_hooks", "_backward_pre_hooks", "_backward_hooks")


def _call_reason(m: nn.Module, name: str) -> str:
    """Why computing ``m``'s job without calling it would differ from calling it ('' when it would not)."""
    d = m.__dict__  # read directly: this runs at every forward of every block
    if "forward" in d:
        return f"{name} has its own forward (set on the instance), which the fused block would never call"
    for hooks in _HOOKS:
        if d[hooks]:
            return f"{name} has {hooks.strip('_').replace('_', ' ')}, which the fused block would never call"
    return ""


def _computed_in_place(m: nn.Module) -> bool:
    """Whether the fused path may compute ``m`` (a shortcut module) without calling it."""
    return not _call_reason(m, "")


def _is_conv_bn(m: Optional[nn.Module]) -> bool:
    return (
        isinstance(m, nn.Sequential) and len(m) == 2
        and not _conv_reason(m[0], "") and not _bn_reason(m[1], "")
        and all(_computed_in_place(c) for c in (m, m[0], m[1]))
    )


def _is_option_a(m: Optional[nn.Module]) -> bool:
    return type(m) is ShortcutA and _computed_in_place(m)


def unsupported_reason(block: nn.Module) -> str:
    """Why ``block`` cannot be fused ('' when it can): a convolution, BatchNorm or activation
    the fused block computes differently, or one with hooks it would never call. A
    shortcut (``downsample``) with hooks or of another type is called as a module."""
    for name, child in block._modules.items():
        if name.startswith("conv"):
            reason = _conv_reason(child, name)
        elif name.startswith("bn"):
            reason = _bn_reason(child, name)
        elif name == "relu":
            reason = _relu_reason(child, name)
        else:
            continue
        reason = reason or _call_reason(child, name)
        if reason:
            return reason
    return ""


# ---------------------------------------------------------------- BatchNorm helpers


def _uses_batch_stats(bn: nn.Module) -> bool:
    # nn.BatchNorm2d and nn.SyncBatchNorm normalise with batch statistics in training
    # mode, and also in eval mode when they keep no running statistics.
    return isinstance(bn, _BATCH_STATS_TYPES) and (bn.training or bn.running_mean is None)


def _vec_dtype(dtype: torch.dtype) -> torch.dtype:
    """Per-channel vectors are fp32, or fp64 in an fp64 model (the ops' contract)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


class _EvalBN(NamedTuple):
    """A running-statistics BatchNorm's vectors in the per-channel dtype (gamma, beta may be None)."""
    mean: Tensor
    var: Tensor
    gamma: Optional[Tensor]
    beta: Optional[Tensor]
    eps: float


def _eval_bn_vectors(bn: nn.Module, dtype: torch.dtype) -> _EvalBN:
    """bn's vectors as _vec_dtype(dtype): as they are when they have it, else upcast together
    (two launches, not one per vector: folding runs at every forward)."""
    v = _vec_dtype(dtype)
    vecs = [t for t in (bn.running_mean, bn.running_var, bn.weight, bn.bias) if t is not None]
    if any(t.dtype != v for t in vecs):
        vecs = list(torch.stack(vecs).to(v).unbind())
    mean, var = vecs[0].detach(), vecs[1].detach()  # buffers: stacked with gamma, they would record
    gamma = vecs[2] if bn.weight is not None else None
    beta = vecs[-1] if bn.bias is not None else None
    return _EvalBN(mean, var, gamma, beta, bn.eps)


def _eval_bn(t: Tensor, s: _EvalBN, mean: Tensor, beta: Optional[Tensor]) -> Tensor:
    """(t - mean) * gamma / sqrt(var + eps) + beta per channel (dim 1 of t) in one eval-mode
    batch-norm kernel, differentiable in t, gamma and beta. Folding runs at every forward (no
    cache could tell a weight written through ``.data`` from an unchanged one): each folded
    tensor costs one launch."""
    return torch.nn.functional.batch_norm(t, mean, s.var, s.gamma, beta, False, 0.0, s.eps)


# Constant [1, n] tensors the folds read as an input or a mean, made once per value, size,
# dtype and device (never written). Not cached while a CUDA graph is captured (its fill
# would only run at replay) or traced by torch.compile.
_CONSTANTS: dict[tuple, Tensor] = {}


def _constant(value: float, n: int, like: Tensor) -> Tensor:
    def make():
        return torch.full((1, n), value, dtype=like.dtype, device=like.device)
    if torch.compiler.is_compiling() or (like.is_cuda and torch.cuda.is_current_stream_capturing()):
        return make()
    key = (value, n, like.dtype, like.device)
    if key not in _CONSTANTS:
        with torch.inference_mode(False):  # usable where autograd records too
            _CONSTANTS[key] = make()
    return _CONSTANTS[key]


def _eval_scale_shift(bn: nn.Module, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """A running-statistics BatchNorm as per-channel (scale, shift): scale = gamma*invstd (the BN
    of ones around mean 0), shift = beta - mean*scale (the BN of zeros)."""
    s = _eval_bn_vectors(bn, dtype)
    n = s.var.shape[0]
    scale = _eval_bn(_constant(1.0, n, s.var), s, _constant(0.0, n, s.var).view(n), None)
    shift = _eval_bn(_constant(0.0, n, s.var), s, s.mean, s.beta)
    return scale.view(n), shift.view(n)


def _check_count(count: int, shape) -> None:
    # As nn.BatchNorm2d: one value per channel has no variance; none (an empty batch) is served.
    if count == 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {shape}")


def _batch_norm_params(y: Tensor, mean: Tensor, var: Tensor, bn: nn.Module, run: _Run):
    """Per-channel (scale, shift) of a batch-statistics BatchNorm; updates its running statistics.

    ``mean``/``var`` are of this process's batch; a SyncBatchNorm that synchronises
    merges them over its process group first (sync_batch_norm.py). An empty batch, as in
    nn.BatchNorm2d, is counted in num_batches_tracked and leaves the running statistics
    alone; its statistics (0/0) are replaced by 0 and 1, so that the affine parameters'
    gradients are zeros, not NaN.
    """
    count = y.numel() // y.shape[1]
    group = sync_batch_norm.process_group(bn)
    if group is None:
        _check_count(count, y.shape)
        running_var, running_count = var.detach(), count
    else:  # every rank takes part, an empty shard too: it weighs nothing in the merge
        mean, var, total = sync_batch_norm.sync_batch_stats(mean, var, count, group)
        running_var, running_count = sync_batch_norm.running_var_operands(var.detach(), total)
    tracking = bn.training and bn.track_running_stats
    if running_count == 0:
        if tracking and bn.num_batches_tracked is not None:
            bn.num_batches_tracked.add_(1)
        mean, var = torch.zeros_like(mean), torch.ones_like(var)
    elif tracking:
        ops.bn_update_running(
            mean.detach(), running_var, running_count, bn.running_mean, bn.running_var,
            bn.num_batches_tracked, bn.momentum, run.backend,
        )
    scale, shift, _ = ops.bn_finalize(mean, var, bn.weight, bn.bias, bn.eps, run.backend)
    return scale, shift


# ---------------------------------------------------------------- stages


def _materialize(a: _Act, run: _Run) -> Tensor:
    if not a.pending:
        return a.t
    return ops.bn_act(a.t, a.scale, a.shift, None, None, None, a.relu, run.backend)


def _conv_bias(conv: nn.Conv2d, dtype: torch.dtype) -> Optional[Tensor]:
    return conv.bias.to(_vec_dtype(dtype)) if conv.bias is not None else None


def _conv_args(conv: nn.Conv2d) -> tuple:
    return list(conv.stride), list(conv.padding), list(conv.dilation), conv.groups


def _fold(conv: nn.Conv2d, bn: nn.Module, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    # bn(conv(x) + b) = conv_{W*scale}(x) + (b - mean)*scale + beta, scale = gamma*invstd: W*scale
    # is the eval BN of W (output channels on dim 1) around mean 0, the bias the eval BN of b.
    s = _eval_bn_vectors(bn, dtype)
    k = conv.weight.shape[0]
    weight = _eval_bn(conv.weight.reshape(1, k, -1), s, _constant(0.0, k, s.var).view(k), None)
    b = conv.bias.to(s.var.dtype).view(1, k) if conv.bias is not None else _constant(0.0, k, s.var)
    bias = _eval_bn(b, s, s.mean, s.beta).view(k)
    return weight.view_as(conv.weight).to(dtype), bias


def _prologue_input(a: _Act, run: _Run) -> _Act:
    # The conv prologue applies relu(x*scale + shift); a pending BN without ReLU
    # (a projection shortcut's) has to be applied on its own first.
    return a if (not a.pending or a.relu) else _Act(_materialize(a, run))


class _Stage:
    """One convolution with the BatchNorm after it (or none) and its ReLU."""

    def __init__(self, block: "_FusedMixin", conv: nn.Conv2d, bn: Optional[nn.Module], relu: bool):
        self.block, self.conv, self.bn, self.relu = block, conv, bn, relu

    def batch_stats(self) -> bool:
        return self.bn is not None and _uses_batch_stats(self.bn)

    def __call__(self, a: _Act, run: _Run, residual: Optional[Tensor] = None) -> _Act:
        a = _prologue_input(a, run)
        conv, bn = self.conv, self.bn
        if self.batch_stats():
            assert residual is None, "a batch-statistics stage adds its residual in bn_act"
            y, mean, var = ops.conv(
                a.t, conv.weight.to(run.dtype), _conv_bias(conv, run.dtype), a.scale, a.shift, None,
                *_conv_args(conv), False, True, run.backend,
            )
            scale, shift = _batch_norm_params(y, mean, var, bn, run)
            return _Act(y, scale, shift, self.relu)
        weight, bias = self.folded(run)
        y, _, _ = ops.conv(
            a.t, weight, bias, a.scale, a.shift, residual, *_conv_args(conv), self.relu, False, run.backend
        )
        return _Act(y)

    def folded(self, run: _Run) -> tuple[Tensor, Optional[Tensor]]:
        """(weight, bias) with a running-statistics BatchNorm folded in (or the conv's own).

        Folded at every call: no cache could tell a weight written through ``.data``
        (no version bump) from an unchanged one.
        """
        if self.bn is None:
            return self.conv.weight.to(run.dtype), _conv_bias(self.conv, run.dtype)
        return _fold(self.conv, self.bn, run.dtype)


class _Shortcut(NamedTuple):
    """A shortcut not computed yet, so the block's last conv can compute it in its own kernel.

    ``stage`` is the projection (a 1x1 conv and its BN, if any) over ``a``; without
    one, ``module`` is an option-A ShortcutA over ``a``.
    """
    a: _Act
    stage: Optional[_Stage] = None
    module: Optional[ShortcutA] = None

    def fusable(self) -> bool:
        if self.stage is None:
            return True
        c = self.stage.conv
        return (
            c.kernel_size == (1, 1) and c.padding == (0, 0) and c.dilation == (1, 1) and c.groups == 1
            and c.stride[0] == c.stride[1] and not self.stage.batch_stats()
        )

    def stride(self) -> int:
        return self.stage.conv.stride[0] if self.stage is not None else self.module.stride

    def compute(self, run: _Run) -> _Act:
        if self.stage is not None:
            return self.stage(self.a, run)
        return _Act(self.module(_materialize(self.a, run)))


def _add_bias(a: Optional[Tensor], b: Optional[Tensor]) -> Optional[Tensor]:
    return b if a is None else (a if b is None else a + b)


def _conv_with_shortcut(stage: _Stage, a: _Act, sc: _Shortcut, run: _Run) -> Tensor:
    """[relu](conv(a) + shortcut) in one op: the shortcut never round-trips through memory."""
    a, sc_in = _prologue_input(a, run), _prologue_input(sc.a, run)
    weight, bias = stage.folded(run)
    sc_weight = None
    if sc.stage is not None:
        sc_weight, sc_bias = sc.stage.folded(run)
        bias = _add_bias(bias, sc_bias)
    return ops.conv_shortcut(
        a.t, weight, bias, a.scale, a.shift, sc_in.t, sc_weight, sc_in.scale, sc_in.shift, sc.stride(),
        *_conv_args(stage.conv), stage.relu, run.backend,
    )


def _finish(stage: _Stage, a: _Act, shortcut, run: _Run) -> Tensor:
    """Last stage: [relu](bn(conv(a)) + shortcut), in one epilogue or one bn_act pass.

    ``shortcut`` is None (no shortcut), an _Act, or a _Shortcut still to compute.
    """
    if isinstance(shortcut, _Shortcut):
        if not stage.batch_stats() and shortcut.fusable():
            return _conv_with_shortcut(stage, a, shortcut, run)
        shortcut = shortcut.compute(run)
    if stage.batch_stats():
        # Shortcut stages never end in a ReLU, so a pending shortcut BN is a plain affine.
        y = _Stage(stage.block, stage.conv, stage.bn, relu=False)(a, run)
        r = shortcut if shortcut is not None else _Act(None)
        return ops.bn_act(y.t, y.scale, y.shift, r.t, r.scale, r.shift, stage.relu, run.backend)
    residual = _materialize(shortcut, run) if shortcut is not None else None
    return stage(a, run, residual).t


# ---------------------------------------------------------------- the blocks


def _autocast_dtype(device_type: str) -> Optional[torch.dtype]:
    """The dtype autocast computes in on ``device_type``, or None where it is off. Meta
    tensors (shape inference, deferred initialisation) have no autocast to ask."""
    if device_type == "meta" or not torch.is_autocast_enabled(device_type):
        return None
    return torch.get_autocast_dtype(device_type)


class _FusedMixin:
    """Backend selection, input checks and autocast shared by every fused block."""

    _unfused: type[nn.Module]
    _has_shortcut = True
    _FUSED_ATTRS = ("requested_backend", "_last_backend", "_speed_key")

    def __init__(self, *args, backend: str = "auto", **kwargs) -> None:
        """The unfused block's constructor and arguments, plus the keyword ``backend``."""
        self._unfused.__init__(self, *args, **kwargs)
        self._init_fused(backend)

    def _init_fused(self, backend: str) -> None:
        self.requested_backend = backends.check_name(backend)
        self._last_backend: Optional[str] = None
        self._speed_key: Optional[str] = None

    def __getstate__(self) -> dict:
        # What past forwards found (where the original last ran, its signature in the speed
        # tables) stays behind: a copy, pickled or deep-copied, finds it out afresh.
        return {**self.__dict__, "_last_backend": None, "_speed_key": None}

    @classmethod
    def from_block(cls, block: nn.Module, backend: str = "auto"):
        """The fused twin of ``block``, sharing its parameters, buffers and submodules."""
        if type(block) is not cls._unfused:
            raise TypeError(f"{cls.__name__}.from_block expects a {cls._unfused.__name__}, got {type(block).__name__}")
        reason = unsupported_reason(block)
        if reason:
            raise ValueError(f"{type(block).__name__} cannot be fused: {reason}")
        new = cls.__new__(cls)
        new.__dict__.update({k: v.copy() if isinstance(v, dict) else v for k, v in block.__dict__.items()})
        new._init_fused(backend)
        return new

    def to_block(self) -> nn.Module:
        """The unfused twin of this block, sharing its parameters, buffers and submodules."""
        old = self._unfused.__new__(self._unfused)
        old.__dict__.update({
            k: v.copy() if isinstance(v, dict) else v for k, v in self.__dict__.items() if k not in self._FUSED_ATTRS
        })
        return old

    @property
    def backend(self) -> str:
        """The backend this block runs on: that of its last forward, else the one its parameters' device gets."""
        if self._last_backend is not None:
            return self._last_backend
        p = self.conv1.weight
        return backends.resolve(self.requested_backend, p.device, p.dtype)

    def _in_channels(self) -> int:
        return self.conv1.in_channels

    def _check_input(self, x) -> None:
        name = type(self).__name__
        if not isinstance(x, Tensor):
            raise TypeError(f"{name}: input x must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4:
            raise ValueError(f"{name}: input x must be 4-D (N, C, H, W), got {x.dim()}-D with shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"{name}: input x must be a floating-point tensor, got {x.dtype}")
        if x.shape[1] != self._in_channels():
            raise ValueError(f"{name}: input x must have {self._in_channels()} channels, got {x.shape[1]} (shape {tuple(x.shape)})")
        w = self.conv1.weight
        if x.device != w.device:
            raise RuntimeError(f"{name}: input x is on {x.device} but the block's parameters (conv1.weight) are on {w.device}")

    def _check_dtype(self, x: Tensor, autocast_dtype: Optional[torch.dtype]) -> None:
        w = self.conv1.weight
        if x.dtype != w.dtype and autocast_dtype is None:
            raise TypeError(
                f"{type(self).__name__}: input x has dtype {x.dtype} but conv1.weight has dtype {w.dtype}; "
                "cast the model to the input's dtype or run under torch.autocast"
            )

    def speed_key(self) -> str:
        """This block's signature in the measured speed tables (backends.speed_table); built
        once (the convolutions' shapes do not change)."""
        if self._speed_key is None:
            convs = [m for m in (self.conv1, self.conv2, getattr(self, "conv3", None)) if m is not None]
            self._speed_key = speed_table.block_key(
                type(self).__name__, [convs[0].in_channels] + [c.out_channels for c in convs],
                max(c.stride[0] for c in convs), max(c.groups for c in convs), max(c.dilation[0] for c in convs),
            )
        return self._speed_key

    def _run(self, x: Tensor, autocast_dtype: Optional[torch.dtype]) -> tuple[Tensor, _Run]:
        self._check_dtype(x, autocast_dtype)
        dtype = autocast_dtype or x.dtype
        mode = "train" if self.training else "infer"
        # Only "auto" consults the speed tables, so only it needs the block's signature.
        key = self.speed_key() if self.requested_backend == "auto" else ""
        backend = backends.resolve(self.requested_backend, x.device, dtype, key, mode, int(x.shape[-1]))
        if backend != self._last_backend and not torch.compiler.is_compiling():
            self._last_backend = backend
        return x.to(dtype), _Run(backend, dtype)

    def forward(self, x: Tensor) -> Tensor:
        if isinstance(x, torch.fx.Proxy):
            return self._fx_leaf(x)
        reason = unsupported_reason(self)
        if reason:  # changed since it was fused
            return self._unfused_forward(x, reason)
        self._check_input(x)
        autocast_dtype = _autocast_dtype(x.device.type)
        x, run = self._run(x, autocast_dtype)
        if autocast_dtype is None:
            return self._fused_forward(x, run)
        # The fused ops compute in the dtype chosen here; autocast must not recast their operands.
        with torch.autocast(x.device.type, enabled=False):
            return self._fused_forward(x, run)

    def __prepare_scriptable__(self):
        # torch.jit.script calls this on every submodule before compiling it.
        raise TypeError(
            f"{type(self).__name__}: TorchScript cannot compile a fused block (its forward picks a backend and "
            "calls the fused ops from Python); use torch.jit.trace, torch.export or torch.compile on the converted "
            "model, or script the unconverted one (fused_resnet.revert(model))"
        )

    def _fx_leaf(self, x: "torch.fx.Proxy") -> "torch.fx.Proxy":
        """Under torch.fx symbolic tracing, one call_module node: the fused forward reads
        shapes, dtypes and devices, which a Proxy does not have."""
        path = x.tracer.path_of_module(self)
        if not path:  # the root: a node calling itself would recurse
            raise TypeError(
                f"{type(self).__name__}: torch.fx traces a fused block as a leaf module, so it cannot trace one on "
                "its own; trace a model that contains it, or fused_resnet.revert(block) and trace that"
            )
        return x.tracer.create_proxy("call_module", path, (x,), {})

    def _unfused_forward(self, x: Tensor, reason: str) -> Tensor:
        """The unfused twin's forward, under backend "auto" (logged once per reason); a named
        backend raises, as convert does for a block it cannot fuse."""
        name = type(self).__name__
        if self.requested_backend != "auto":
            raise ValueError(f"{name}: backend {self.requested_backend!r} cannot run this block: {reason}; "
                             "fused_resnet.revert(model) restores the unfused blocks")
        if (name, reason) not in _logged_unfused:
            _logged_unfused.add((name, reason))
            _log.warning("%s runs unfused: %s", name, reason)
        return self._unfused.forward(self, x)


_logged_unfused: set[tuple[str, str]] = set()


class _FusedV1(_FusedMixin):
    """Post-activation blocks: conv -> BN -> ReLU ..., ReLU after the residual add."""

    def _stages(self) -> list[_Stage]:
        n = 3 if hasattr(self, "conv3") else 2
        return [_Stage(self, getattr(self, f"conv{i}"), getattr(self, f"bn{i}"), relu=True) for i in range(1, n + 1)]

    def _shortcut(self, x: Tensor, run: _Run):
        if not self._has_shortcut:
            return None
        ds = self.downsample
        if ds is None:
            return _Act(x)
        if _is_conv_bn(ds):
            return _Shortcut(_Act(x), stage=_Stage(self, ds[0], ds[1], relu=False))
        if _is_option_a(ds):
            return _Shortcut(_Act(x), module=ds)
        return _Act(ds(x))

    def _fused_forward(self, x: Tensor, run: _Run) -> Tensor:
        *body, last = self._stages()
        a = _Act(x)
        for stage in body:
            a = stage(a, run)
        return _finish(last, a, self._shortcut(x, run), run)


class _FusedPreAct(_FusedMixin):
    """Pre-activation blocks: every conv reads relu(bn(input)) through its prologue; no ReLU after the add."""

    def _in_channels(self) -> int:
        return self.bn1.num_features

    def _input_act(self, x: Tensor, run: _Run) -> _Act:
        bn = self.bn1
        if _uses_batch_stats(bn):
            mean, var = ops.batch_stats(x, run.backend)
            scale, shift = _batch_norm_params(x, mean, var, bn, run)
        else:
            scale, shift = _eval_scale_shift(bn, run.dtype)
        return _Act(x, scale, shift, relu=True)

    def _shortcut(self, x: Tensor, a0: _Act, run: _Run):
        if not self._has_shortcut:
            return None
        ds = self.downsample
        if ds is None:
            return _Act(x)
        if not _conv_reason(ds, "") and _computed_in_place(ds):
            return _Shortcut(a0, stage=_Stage(self, ds, None, relu=False))
        if _is_conv_bn(ds):
            return _Shortcut(a0, stage=_Stage(self, ds[0], ds[1], relu=False))
        if _is_option_a(ds):
            return _Shortcut(a0, module=ds)
        return _Act(ds(_materialize(a0, run)))

    def _fused_forward(self, x: Tensor, run: _Run) -> Tensor:
        n = 3 if hasattr(self, "conv3") else 2
        a0 = self._input_act(x, run)
        a = a0
        # conv_i is followed by bn_{i+1} + ReLU (the next prologue); the last conv has no BN after it.
        for i in range(1, n):
            a = _Stage(self, getattr(self, f"conv{i}"), getattr(self, f"bn{i + 1}"), relu=True)(a, run)
        last = _Stage(self, getattr(self, f"conv{n}"), None, relu=False)
        return _finish(last, a, self._shortcut(x, a0, run), run)


class FusedBasicBlock(_FusedV1, BasicBlock):
    """Fused twin of torchvision's BasicBlock."""
    _unfused = BasicBlock


class FusedBottleneck(_FusedV1, Bottleneck):
    """Fused twin of torchvision's Bottleneck (ResNet-50/101/152, ResNeXt, wide ResNets)."""
    _unfused = Bottleneck


class FusedPlainBasicBlock(_FusedV1, PlainBasicBlock):
    """Fused twin of PlainBasicBlock (no shortcut)."""
    _unfused = PlainBasicBlock
    _has_shortcut = False


class FusedPreActBasicBlock(_FusedPreAct, PreActBasicBlock):
    """Fused twin of the pre-activation BasicBlock."""
    _unfused = PreActBasicBlock


class FusedPreActBottleneck(_FusedPreAct, PreActBottleneck):
    """Fused twin of the pre-activation Bottleneck."""
    _unfused = PreActBottleneck


class FusedPlainPreActBasicBlock(_FusedPreAct, PlainPreActBasicBlock):
    """Fused twin of PlainPreActBasicBlock (no shortcut)."""
    _unfused = PlainPreActBasicBlock
    _has_shortcut = False


FUSED_BLOCKS = (
    FusedBasicBlock, FusedBottleneck, FusedPlainBasicBlock,
    FusedPreActBasicBlock, FusedPreActBottleneck, FusedPlainPreActBasicBlock,
)
FUSED_TWIN: dict[type, type] = {cls._unfused: cls for cls in FUSED_BLOCKS}

__all__ = [
    "FusedBasicBlock", "FusedBottleneck", "FusedPlainBasicBlock", "FusedPreActBasicBlock",
    "FusedPreActBottleneck", "FusedPlainPreActBasicBlock", "FUSED_BLOCKS", "FUSED_TWIN", "unsupported_reason",
]
