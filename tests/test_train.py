"""fused-resnet train and experiment on the CPU, at tiny sizes: the files they write, a falling
loss, resumption, the eager comparison, each experiment's table and plot, the residual-unit
variants against their definitions, and the errors bad options get."""
from __future__ import annotations

import csv
import json

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torchvision.models.resnet import BasicBlock

import fused_resnet
from fused_resnet import cli, data as D, experiments as E, train as T
from fused_resnet.blocks import FUSED_BLOCKS
from fused_resnet.models import ShortcutA, cifar_resnet, variants as V

TINY = dict(dataset="synthetic", batch=8, train_size=32, test_size=16, eval_every=1)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: on a shared, loaded machine two OpenMP threads wait on each other
    for most of a small step (measured: 20 images/s against 550 with one thread)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_data():
    return D.load("synthetic", train_size=TINY["train_size"], test_size=TINY["test_size"])


def _log(out) -> list[dict]:
    with open(out / "log.csv", newline="") as f:
        return list(csv.DictReader(f))


def _run(argv, capsys) -> tuple[int, str, str]:
    code = cli.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ---------------------------------------------------------------- train


def test_train_command_writes_its_files_and_the_loss_falls(tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, _ = _run(["train", "--model", "cifar_resnet8", "--dataset", "synthetic", "--steps", "30",
                            "--batch", "32", "--train-size", "960", "--test-size", "64", "--out", str(out), "-q"],
                           capsys)
    assert code == 0
    assert {"log.csv", "summary.json", "curves.png", "checkpoint.pt"} <= {p.name for p in out.iterdir()}
    rows = _log(out)
    assert [int(r["step"]) for r in rows] == list(range(3, 31, 3))
    assert set(rows[0]) == set(T.LOG_FIELDS)
    assert float(rows[-1]["train_loss"]) < 0.9 * float(rows[0]["train_loss"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["model"] == "cifar_resnet8" and summary["steps"] == 30
    assert summary["blocks"] == {"reference": 3}
    assert {"versions", "device", "final_test_error_pct", "total_seconds", "seconds_per_epoch"} <= set(summary)
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert "test error" in stdout and str(out / "log.csv") in stdout


class _Interrupted(Exception):
    pass


def test_resume_continues_as_the_uninterrupted_run(tmp_path, tiny_data, monkeypatch):
    config = T.TrainConfig(model="cifar_resnet8", steps=5, **TINY)
    whole = T.train(config, str(tmp_path / "whole"), quiet=True, data=tiny_data)
    evaluate, calls = T.evaluate, []

    def crash_at_third_row(*args):
        calls.append(1)
        if len(calls) == 3:
            raise _Interrupted
        return evaluate(*args)

    monkeypatch.setattr(T, "evaluate", crash_at_third_row)
    with pytest.raises(_Interrupted):
        T.train(config, str(tmp_path / "cut"), quiet=True, data=tiny_data)
    monkeypatch.setattr(T, "evaluate", evaluate)
    assert len(_log(tmp_path / "cut")) == 2
    resumed = T.train(config, str(tmp_path / "cut"), resume=True, quiet=True, data=tiny_data)
    keys = ("step", "train_loss", "train_error_pct", "test_error_pct")
    assert [[r[k] for k in keys] for r in _log(tmp_path / "cut")] == [[r[k] for k in keys]
                                                                      for r in _log(tmp_path / "whole")]
    assert resumed["final_train_loss"] == whole["final_train_loss"]
    other = T.TrainConfig(model="cifar_resnet8", steps=5, **{**TINY, "batch": 4})
    with pytest.raises(T.OptionError, match=r"--batch 8 \(now 4\)"):
        T.train(other, str(tmp_path / "cut"), resume=True, quiet=True, data=tiny_data)


def test_compare_eager_trains_the_same_seed_side_by_side(tmp_path, tiny_data):
    config = T.TrainConfig(model="cifar_resnet8", steps=2, backend="reference", **TINY)
    summary = T.compare(config, str(tmp_path), "eager", quiet=True)
    eager = summary["compare"]["eager"]
    assert eager["blocks"] == {"unfused BasicBlock": 3} and summary["blocks"] == {"reference": 3}
    # Same seed, same batches: the fused blocks compute what the eager ones do.
    assert summary["final_train_loss"] == pytest.approx(eager["final_train_loss"], rel=1e-3)
    table = (tmp_path / "compare.md").read_text()
    assert "| reference |" in table and "| eager |" in table and "s/epoch" in table
    assert (tmp_path / "eager" / "log.csv").is_file()


def test_lr_drops_tenfold_at_half_and_three_quarters():
    config = T.TrainConfig()
    assert [T.lr_at(config, s, 100) for s in (0, 49, 50, 74, 75, 99)] == pytest.approx(
        [0.1, 0.1, 0.01, 0.01, 0.001, 0.001])


def test_batches_are_a_function_of_seed_and_step(tiny_data):
    a = D.Batches(tiny_data[0], 8, 0, torch.device("cpu"))
    b = D.Batches(tiny_data[0], 8, 0, torch.device("cpu"))
    assert torch.equal(a(5)[0], b(5)[0]) and torch.equal(a(5)[1], b(5)[1])
    assert not torch.equal(a(5)[0], a(6)[0])


def test_augment_flips_and_crops_the_zero_padded_image():
    image = torch.arange(3 * 32 * 32, dtype=torch.float32).view(1, 3, 32, 32) + 1
    padded = F.pad(image, (4, 4, 4, 4))
    for seed in range(8):
        out = D.augment(image, torch.Generator().manual_seed(seed))
        crops = [padded[..., r:r + 32, c:c + 32] for r in range(9) for c in range(9)]
        assert any(torch.equal(out, c) or torch.equal(out, c.flip(3)) for c in crops)


# ---------------------------------------------------------------- experiments


@pytest.mark.parametrize("name,depths,runs", [
    ("degradation", (8, 14), 4), ("shortcuts", (8,), 6), ("activations", (8,), 5), ("lesion", (8,), 2)])
def test_experiment_writes_its_table_and_plot(name, depths, runs, tmp_path, capsys):
    code, stdout, _ = _run(["experiment", name, "--depth", ",".join(map(str, depths)), "--dataset", "synthetic",
                            "--steps", "2", "--batch", "8", "--train-size", "32", "--test-size", "16",
                            "--out", str(tmp_path), "-q"], capsys)
    assert code == 0
    with open(tmp_path / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert (tmp_path / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    assert "not CIFAR-10" in (tmp_path / "results.md").read_text() and "| " in stdout
    assert len([p for p in tmp_path.iterdir() if p.is_dir()]) == runs
    if name == "lesion":
        assert [r["deleted_block"] for r in rows] == ["none", "layer1.0", "layer2.0", "layer3.0"]
        # A plain net cannot lose a block that changes the shape; a residual net keeps its shortcut.
        assert rows[2]["plain-8_test_error_pct"] == "" and rows[2]["resnet-8_test_error_pct"] != ""
    else:
        assert len(rows) == runs


def test_lesion_deletes_a_block_down_to_its_shortcut():
    model = cifar_resnet(14).eval()
    assert isinstance(E.deleted(model.layer1[1]), nn.Identity)
    assert E.deleted(model.layer2[0]) is model.layer2[0].downsample
    plain = cifar_resnet(14, plain=True)
    assert isinstance(E.deleted(plain.layer2[1]), nn.Identity) and E.deleted(plain.layer2[0]) is None


# ---------------------------------------------------------------- variants


def _blocks(depth: int):
    """(inplanes, planes, stride) of every block of a CIFAR ResNet of ``depth``."""
    n = (depth - 2) // 6
    return [(w_in if j == 0 else w, w, 2 if (i and j == 0) else 1)
            for i, (w_in, w) in enumerate(zip((16, 16, 32), (16, 32, 64))) for j in range(n)]


def _extra_parameters(variant: str, depth: int) -> int:
    """Parameters a variant adds to the identity network: a gate (1x1 conv with bias) per block,
    or a 1x1 projection and its BatchNorm on the shortcuts that had none."""
    if variant in ("exclusive_gating", "shortcut_gating"):
        return sum(i * o + o for i, o, _ in _blocks(depth))
    if variant == "conv_shortcut":
        return sum(i * o + 2 * o for i, o, _ in _blocks(depth))
    return 0


def _params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("depth", [8, 14])
@pytest.mark.parametrize("variant", list(V.VARIANTS))
def test_variant_parameter_count(variant, depth):
    assert _params(cifar_resnet(depth, variant=variant)) == _params(cifar_resnet(depth)) + _extra_parameters(
        variant, depth)


def _bn(bn: nn.BatchNorm2d, x):
    return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)


def _randomized(block: nn.Module) -> nn.Module:
    """``block`` in eval mode with BatchNorm statistics and affine parameters away from the identity."""
    g = torch.Generator().manual_seed(0)
    for m in block.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(m.num_features, generator=g))
            m.bias.data.copy_(torch.randn(m.num_features, generator=g))
    return block.eval()


def _definition(variant: str, b: nn.Module, x):
    """The unit's output written out from "Identity Mappings" (F, h as in fused_resnet.models.variants)."""
    h = b.downsample(x) if b.downsample is not None else x
    relu = F.relu
    branch = lambda inp: _bn(b.bn2, b.conv2(relu(_bn(b.bn1, b.conv1(inp)))))  # noqa: E731
    if variant == "constant_scaling":
        return relu(0.5 * h + 0.5 * branch(x))
    if variant in ("exclusive_gating", "shortcut_gating"):
        g = torch.sigmoid(F.conv2d(x, b.gate.weight, b.gate.bias, stride=b.stride))
        return relu((1 - g) * h + (g if variant == "exclusive_gating" else 1) * branch(x))
    if variant == "dropout_shortcut":
        return relu(h + branch(x))  # eval mode: dropout is the identity
    if variant == "bn_after_add":
        return relu(_bn(b.bn2, h + b.conv2(relu(_bn(b.bn1, b.conv1(x))))))
    if variant == "relu_before_add":
        return h + relu(branch(x))
    if variant == "relu_preactivation":
        a = relu(x)
        return (b.downsample(a) if b.downsample is not None else x) + branch(a)
    raise AssertionError(variant)


_UNFUSED = [v for v, spec in V.VARIANTS.items() if spec.block is not None]


@pytest.mark.parametrize("variant", _UNFUSED)
@pytest.mark.parametrize("inplanes,planes,stride", [(16, 16, 1), (16, 32, 2)])
def test_variant_forward_matches_its_definition(variant, inplanes, planes, stride):
    torch.manual_seed(0)
    down = ShortcutA(inplanes, planes, stride) if stride != 1 else None
    block = _randomized(V.VARIANTS[variant].block(inplanes, planes, stride, down))
    x = torch.randn(2, inplanes, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(block(x.clone()), _definition(variant, block, x))


def test_dropout_shortcut_drops_half_the_shortcut_in_training():
    torch.manual_seed(0)
    block = V.DropoutShortcutBlock(16, 16).train()
    x = torch.rand(4, 16, 8, 8) + 1
    block.bn2.weight.data.zero_()  # F(x) = 0: the output is relu(dropout(x))
    out = block(x)
    assert torch.equal(out[out != 0], 2 * x[out != 0]) and 0.4 < (out == 0).float().mean() < 0.6


def test_relu_preactivation_network_wraps_its_units_in_bn_and_a_last_relu():
    torch.manual_seed(0)
    m = cifar_resnet(8, variant="relu_preactivation").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        y = m.layer3(m.layer2(m.layer1(m.bn1(m.conv1(x)))))
        torch.testing.assert_close(m(x), m.fc(F.relu(y).mean((2, 3))))


@pytest.mark.parametrize("variant", list(V.VARIANTS))
def test_convert_fuses_exactly_the_variants_the_blocks_compute(variant):
    torch.manual_seed(0)
    model = cifar_resnet(8, variant=variant).to(torch.float64)
    fused = fused_resnet.convert(model, backend="reference")
    blocks = list(fused.layer1) + list(fused.layer2) + list(fused.layer3)
    if variant in _UNFUSED:
        assert all(not isinstance(b, FUSED_BLOCKS) for b in blocks)
        assert T.block_backends(fused) == {f"unfused {type(blocks[0]).__name__}": 3}
        return
    assert all(isinstance(b, FUSED_BLOCKS) and b.backend == "reference" for b in blocks)
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    for mode in (True, False):
        torch.testing.assert_close(fused.train(mode)(x), model.train(mode)(x))


def test_builtin_variants_are_the_builders_own_networks():
    assert type(cifar_resnet(8, variant="identity").layer1[0]) is BasicBlock
    assert cifar_resnet(8, variant="full_preactivation").preact
    assert len(cifar_resnet(8, variant="conv_shortcut").layer1[0].downsample) == 2


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("argv,words", [
    (["--model", "resnet_foo"], ["--model 'resnet_foo'", "cifar_resnet<depth>"]),
    (["--model", "cifar_resnet9"], ["--model 'cifar_resnet9'", "6n+2", "8, 14, 20"]),
    (["--variant", "gating"], ["--variant 'gating'", "exclusive_gating", "relu_before_add"]),
    (["--model", "cifar_plain8", "--variant", "constant_scaling"], ["--variant 'constant_scaling'", "cifar_plain8"]),
    (["--backend", "fast"], ["--backend 'fast'", "eager", "reference"]),
    (["--batch", "1"], ["--batch 1", ">= 2"]),
    (["--dataset", "cifar10"], ["--data DIR", "--dataset synthetic"]),
    (["--dataset", "cifar10", "--data", "/nonexistent/cifar"], ["--data '/nonexistent/cifar'", "--download",
                                                                "cifar-10-python.tar.gz"]),
    (["--dtype", "bf16", "--device", "cpu"], ["--dtype bf16", "CUDA"]),
    (["--compare", "eager", "--backend", "eager"], ["--compare 'eager'"]),
])
def test_bad_train_options_name_the_option_the_value_and_what_is_allowed(argv, words, tmp_path, capsys):
    base = ["train", "--dataset", "synthetic", "--steps", "1", "--out", str(tmp_path / "x"), "-q"]
    code, _, err = _run(base + argv, capsys)
    assert code == 2
    for w in words:
        assert w in err, (w, err)
    assert not (tmp_path / "x" / "checkpoint.pt").exists()


def test_cifar10_present_but_incomplete_says_what_is_missing(tmp_path):
    (tmp_path / "cifar-10-batches-py").mkdir()
    with pytest.raises(T.OptionError, match="lacks data_batch_1, .*test_batch.*--download"):
        T.check_config(T.TrainConfig(dataset="cifar10", data=str(tmp_path)))


@pytest.mark.parametrize("argv,words", [
    (["experiment", "lesions"], ["NAME", "lesions", "degradation"]),
    (["experiment", "lesion", "--depth", "10"], ["--depth 10", "6n+2"]),
    (["experiment", "lesion", "--depth", "a,b"], ["--depth", "comma-separated"]),
])
def test_bad_experiment_arguments(argv, words, tmp_path, capsys):
    code, _, err = _run(argv + ["--dataset", "synthetic", "--out", str(tmp_path), "-q"], capsys)
    assert code == 2
    for w in words:
        assert w in err, (w, err)


def test_readme_train_commands_parse():
    """The command lines of README.md's Train section are ones the parser accepts."""
    import shlex
    from pathlib import Path

    section = (Path(__file__).resolve().parent.parent / "README.md").read_text().split("## Train\n", 1)[1]
    commands = [block.split("```", 1)[0].strip() for block in section.split("## ", 1)[0].split("```bash\n")[1:]]
    assert [c.split()[1] for c in commands] == ["train", "experiment"]
    for c in commands:
        args = cli.build_parser().parse_args(shlex.split(c)[1:])
        assert args.dataset == "cifar10"
