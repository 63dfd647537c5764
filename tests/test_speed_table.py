"""backend="auto" and measured speed tables (fused_resnet/backends/speed_table.py).

CPU: the block signature, reading tables (shipped and FUSED_RESNET_SPEED_TABLES),
ranking by measured time at the nearest spatial size, no effect off the GPU, and
the table bench/bench_blocks.py writes. GPU: a block follows a table that ranks
the cuda backend first.
"""
from __future__ import annotations

import json
import os

import pytest
import torch
import torchvision

import fused_resnet
from fused_resnet import backends
from fused_resnet.backends import speed_table
from helpers import load_bench_script

DEVICE = "Some GPU 80GB"
LAYER1 = "FusedBottleneck 256-64-64-256 s1 g1 d1"


def _entry(block, hw, mode, ms):
    return {"block": block, "hw": hw, "mode": mode, "ms": ms}


@pytest.fixture
def table_file(tmp_path, monkeypatch):
    """Writes a table and names it in FUSED_RESNET_SPEED_TABLES."""
    def write(entries, device=DEVICE, dtype="bf16"):
        path = tmp_path / f"table{len(list(tmp_path.iterdir()))}.json"
        path.write_text(json.dumps({"device": device, "dtype": dtype, "entries": entries}))
        paths = [p for p in os.environ.get(speed_table.ENV_VAR, "").split(os.pathsep) if p] + [str(path)]
        monkeypatch.setenv(speed_table.ENV_VAR, os.pathsep.join(paths))
        return path
    monkeypatch.delenv(speed_table.ENV_VAR, raising=False)
    return write


def test_block_signature():
    m = fused_resnet.convert(torchvision.models.resnet50())
    assert m.layer1[1].speed_key() == LAYER1
    assert m.layer2[0].speed_key() == "FusedBottleneck 256-128-128-512 s2 g1 d1"
    assert fused_resnet.convert(torchvision.models.resnext50_32x4d()).layer1[0].speed_key() == (
        "FusedBottleneck 64-128-128-256 s1 g32 d1")
    assert fused_resnet.convert(torchvision.models.resnet18()).layer4[0].speed_key() == (
        "FusedBasicBlock 256-512-512 s2 g1 d1")


def test_shipped_tables_are_well_formed():
    """Each table in fused_resnet/speed_tables/ names its measurement and only known backends,
    blocks whose signature a converted torchvision model produces, and positive times."""
    paths = sorted(p for p in speed_table.table_paths() if p.startswith(speed_table.SHIPPED_DIR))
    assert paths, "no measured speed table ships in fused_resnet/speed_tables/"
    known = {m.speed_key() for arch in ("resnet18", "resnet50")
             for m in fused_resnet.convert(getattr(torchvision.models, arch)()).modules()
             if isinstance(m, fused_resnet.blocks.FUSED_BLOCKS)}
    for path in paths:
        with open(path) as f:
            table = json.load(f)
        assert {"device", "dtype", "date", "command", "entries"} <= set(table), path
        for e in table["entries"]:
            assert e["block"] in known and e["mode"] in ("train", "infer") and e["hw"] > 0, (path, e)
            assert set(e["ms"]) <= set(backends.BACKENDS) and all(t > 0 for t in e["ms"].values()), (path, e)


def test_no_table_no_order(table_file):
    assert speed_table.measured_order(DEVICE, "bf16", "train", LAYER1, 56) is None


def test_ranked_by_time_at_the_nearest_size(table_file):
    table_file([
        _entry(LAYER1, 56, "train", {"triton": 3.0, "cuda": 2.5}),
        _entry(LAYER1, 14, "train", {"triton": 0.2, "cuda": 0.4}),
        _entry(LAYER1, 56, "infer", {"triton": 0.4, "cuda": 0.5}),
    ])
    assert speed_table.measured_order(DEVICE, "bf16", "train", LAYER1, 56) == ("cuda", "triton")
    assert speed_table.measured_order(DEVICE, "bf16", "train", LAYER1, 64) == ("cuda", "triton")
    assert speed_table.measured_order(DEVICE, "bf16", "train", LAYER1, 16) == ("triton", "cuda")
    assert speed_table.measured_order(DEVICE, "bf16", "infer", LAYER1, 56) == ("triton", "cuda")
    # Another device, dtype or block: no measurement applies.
    assert speed_table.measured_order("Other GPU", "bf16", "train", LAYER1, 56) is None
    assert speed_table.measured_order(DEVICE, "fp16", "train", LAYER1, 56) is None
    assert speed_table.measured_order(DEVICE, "bf16", "train", "FusedBasicBlock 64-64-64 s1 g1 d1", 56) is None


def test_several_tables(table_file):
    table_file([_entry(LAYER1, 56, "train", {"triton": 3.0, "cuda": 2.5})])
    table_file([_entry(LAYER1, 56, "train", {"cuda": 9.0})], device="Other GPU")
    assert speed_table.measured_order(DEVICE, "bf16", "train", LAYER1, 56) == ("cuda", "triton")
    assert speed_table.measured_order("Other GPU", "bf16", "train", LAYER1, 56) == ("cuda",)


def test_malformed_table_is_named(table_file):
    path = table_file([])
    path.write_text(json.dumps({"entries": []}))
    with pytest.raises(ValueError, match=f"speed table {path} lacks"):
        speed_table.measured_order(DEVICE, "bf16", "train", LAYER1, 56)


def test_tables_apply_only_on_gpus(table_file):
    table_file([_entry(LAYER1, 56, "train", {"cuda": 1.0, "triton": 2.0})], device="cpu")
    order = backends.auto_order(torch.device("cpu"), torch.float32, LAYER1, "train", 56)
    assert order == backends.AUTO_ORDER


def test_bench_writes_a_table_auto_reads(table_file, tmp_path, monkeypatch):
    bb = load_bench_script("bench_blocks")
    rows = [
        {"key": "layer1", "mode": "train", "variant": "eager", "compiled": False, "N": 128, "median_ms": 6.0},
        {"key": "layer1", "mode": "train", "variant": "fused[triton]", "compiled": False, "N": 128, "median_ms": 3.1},
        {"key": "layer1", "mode": "train", "variant": "fused[cuda]", "compiled": False, "N": 128, "median_ms": 2.9},
        {"key": "layer1", "mode": "train", "variant": "fused[reference]", "compiled": False, "N": 128,
         "median_ms": 1.0, "warning": "requested reference, ran on ['triton']"},
        {"key": "layer1", "mode": "infer", "variant": "fused[cuda]", "compiled": False, "N": 128,
         "error": "RuntimeError: boom"},
        {"key": "layer1", "mode": "infer", "variant": "fused[triton]+compile", "compiled": True, "N": 128,
         "median_ms": 0.1},
    ]
    table = bb.speed_table(rows, device=DEVICE, dtype="bf16", date="2026-11-23", command="python bench/x.py")
    assert table["entries"] == [{"block": LAYER1, "hw": 56, "mode": "train", "N": 128,
                                 "ms": {"triton": 3.1, "cuda": 2.9}}]
    path = tmp_path / "measured.json"
    path.write_text(json.dumps(table))
    monkeypatch.setenv(speed_table.ENV_VAR, str(path))
    assert speed_table.measured_order(DEVICE, "bf16", "train", LAYER1, 56) == ("cuda", "triton")


@pytest.mark.gpu
def test_auto_follows_a_table_on_the_gpu(table_file):
    if not fused_resnet.available_backends()["cuda"][0]:
        pytest.fail(f"cuda backend unavailable on a GPU machine: {fused_resnet.available_backends()['cuda'][1]}")
    name = torch.cuda.get_device_name(0)
    table_file([_entry(LAYER1, 56, "infer", {"cuda": 1.0, "triton": 2.0}),
                _entry(LAYER1, 56, "train", {"triton": 1.0, "cuda": 2.0})], device=name)
    m = fused_resnet.convert(torchvision.models.resnet50()).cuda().to(torch.bfloat16)
    m = m.to(memory_format=torch.channels_last)
    block = m.layer1[1]
    x = torch.randn(2, 256, 56, 56, device="cuda", dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        block.eval()(x)
    assert block.backend == "cuda"
    block.train()(x)
    assert block.backend == "triton"
