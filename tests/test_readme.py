"""README.md holds: its API snippet runs as written on this machine, its install commands show
the build, the scripts it names exist, and its kernel counts are what
bench/host_overhead.py counts today."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _code_after(heading: str, language: str) -> str:
    section = README.split(heading, 1)[1]
    return section.split(f"```{language}\n", 1)[1].split("```", 1)[0]


def test_api_snippet_runs_as_written():
    """On any machine: the snippet picks its device itself (on the CPU, backend "auto" is the reference)."""
    scope: dict = {}
    exec(compile(_code_after("## API", "python"), "README.md:API", "exec"), scope)
    assert scope["logits"].shape == (2, 1000)
    assert scope["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
    from torchvision.models.resnet import Bottleneck

    import fused_resnet

    assert sum(isinstance(m, fused_resnet.FusedBottleneck) for m in scope["model"].modules()) == 16
    assert sum(type(m) is Bottleneck for m in scope["plain"].modules()) == 16


def test_install_commands_show_the_build_and_build_once():
    """Both commands let pip show the build (-v); the second is the one .ci/run runs."""
    run_it = _code_after("## Run it", "bash")
    ci = subprocess.run(["sed", "-n", "/<!-- test-command -->/{n;n;p;}", str(ROOT / "README.md")],
                        capture_output=True, text=True, check=True).stdout.strip()
    assert "pip install -v --no-build-isolation . && fused-resnet bench" in run_it
    assert 'pip install -v --no-build-isolation -e ".[test]" && python -m pytest tests -q' in ci


def test_named_scripts_exist():
    for script in sorted(set(re.findall(r"python (bench/\w+\.py)", README))):
        assert (ROOT / script).is_file(), script


def test_kernel_counts_are_what_host_overhead_counts(tmp_path):
    """The kernels a block's training step launches, stated in the Backends section: fused (triton)
    against eager, for host_overhead.py's bottleneck and basic block."""
    m = re.search(r"host_overhead.py` counts (\d+) against (\d+) for its bottleneck and (\d+) against (\d+) for "
                  r"its basic block", " ".join(README.split()))
    assert m, "the kernel counts sentence of README.md changed: update this test with it"
    out = tmp_path / "host.json"
    subprocess.run([sys.executable, str(ROOT / "bench" / "host_overhead.py"), "--steps", "1", "--repeat", "1",
                    "--blocks", "bottleneck,basic", "--modes", "train", "--variants", "eager,triton-host",
                    "--json", str(out)], check=True, capture_output=True, cwd=ROOT, timeout=600)
    counts = {(r["block"].split()[0], r["variant"]): r["aten_kernels_per_step"] + r.get("triton_launches_per_step", 0)
              for r in json.loads(out.read_text())["rows"]}
    measured = [counts[b, v] for b in ("Bottleneck", "BasicBlock") for v in ("triton-host", "eager")]
    stated = [int(g) for g in m.groups()]
    assert measured == stated, f"host_overhead.py counts {measured} (fused, eager per step), README says {stated}"


def _layout_section() -> str:
    return README.split("## Layout", 1)[1].split("\n## ", 1)[0]


def test_layout_names_files_that_exist():
    """Every path the Layout section names exists; a path with <op> exists for every op of the
    op list that has a file of its own in that directory (the ops without one, such as
    conv_shortcut, live in another op's file)."""
    from fused_resnet import op_list

    paths = {p.rstrip("/") for p in re.findall(r"`([\w./<>]+/[\w./<>]*)`", _layout_section())}
    assert paths, "the Layout section names no path"
    for path in sorted(paths):
        if "<op>" not in path:
            assert (ROOT / path).exists(), path
            continue
        found = [op for op in op_list.OPS if (ROOT / path.replace("<op>", op)).exists()]
        assert found, f"{path}: no op of the op list has this file"


def test_layout_follows_one_op_through_every_layer():
    """The op the Layout section follows has a file of its name at every layer of both backends."""
    for path in ("kernels/bn_act.py", "fused_resnet/backends/triton/bn_act.py", "csrc/bn_act.cu",
                 "csrc/ops/bn_act.cpp", "tests/triton/test_bn_act.py", "tests/cuda/test_bn_act.py"):
        assert f"`{path}`" in _layout_section(), path
        assert (ROOT / path).is_file(), path
