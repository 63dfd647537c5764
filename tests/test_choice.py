"""backends/choice.py: the cuda backend's per-problem choice between a fused kernel and its
unfused twin, timed once, remembered in the process and, when asked, on disk.

Runs on the CPU: the clock is replaced by given times and the GPU name is faked (the
whole-step behaviour, on the emulated cuda backend, is in tests/cuda/test_backend_emulated.py).
Classes checked: the faster candidate is taken; nothing is timed twice in a process;
the disk file serves a new process without timing, only with a name among today's
candidates, only for its GPU; a corrupt or unwritable file costs one warning, never an
error; nothing is written unless asked for.
"""
from __future__ import annotations

import json
import warnings

import pytest
import torch

from fused_resnet.backends import choice

GPU = torch.device("cuda", 0)  # never touched: measurable and the GPU name are faked


@pytest.fixture
def clock(monkeypatch, tmp_path):
    """Times per candidate name (``clock.ms``), every timing recorded in ``clock.timed``."""
    class Clock:
        ms = {"fused": 1.0, "unfused": 2.0}
        timed = []
    monkeypatch.setattr(choice, "measurable", lambda device: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    monkeypatch.setenv("FUSED_RESNET_CACHE_DIR", str(tmp_path))

    def time_candidates(candidates):
        Clock.timed.append(sorted(candidates))
        return {name: Clock.ms[name] for name in candidates}
    monkeypatch.setattr(choice, "_time_candidates", time_candidates)
    choice.clear()
    yield Clock
    choice.clear()


def _choose(key=("conv", 1)):
    return choice.choose(key, {"fused": lambda: None, "unfused": lambda: None}, "fused", GPU)


def _files(tmp_path):
    return sorted(p.name for p in tmp_path.glob("choices__*.json"))


def test_the_faster_is_taken_and_timed_once(clock, tmp_path):
    clock.ms = {"fused": 3.0, "unfused": 2.0}
    assert _choose() == "unfused" and _choose() == "unfused"
    assert clock.timed == [["fused", "unfused"]]
    assert choice.choices() == {("conv", 1): ("unfused", {"fused": 3.0, "unfused": 2.0})}
    assert _files(tmp_path) == []  # the disk only when asked for


def test_the_disk_serves_a_new_process_without_timing(clock, tmp_path, monkeypatch):
    monkeypatch.setenv("FUSED_RESNET_CHOICE_CACHE", "1")
    clock.ms = {"fused": 3.0, "unfused": 2.0}
    assert _choose(("conv", GPU, 7)) == "unfused"
    (name,) = _files(tmp_path)
    assert "NVIDIA_H200" in name and torch.__version__.split("+")[0] in name
    assert json.loads((tmp_path / name).read_text()) == {repr(("conv", "cuda", 7)): "unfused"}
    choice.clear()  # a new process
    clock.ms = {"fused": 1.0, "unfused": 2.0}
    assert _choose(("conv", torch.device("cuda", 1), 7)) == "unfused"  # another index of the same GPU model
    assert len(clock.timed) == 1
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100")
    choice.clear()
    assert _choose(("conv", GPU, 7)) == "fused" and len(clock.timed) == 2  # another GPU: its own file
    assert len(_files(tmp_path)) == 2


def test_a_stored_name_that_is_no_candidate_is_timed(clock, tmp_path, monkeypatch):
    monkeypatch.setenv("FUSED_RESNET_CHOICE_CACHE", "1")
    _choose()
    (name,) = _files(tmp_path)
    (tmp_path / name).write_text(json.dumps({repr(("conv", 1)): "cutlass-v0"}))
    choice.clear()
    assert _choose() == "fused" and len(clock.timed) == 2


def test_a_corrupt_file_costs_one_warning_and_a_timing(clock, tmp_path, monkeypatch):
    monkeypatch.setenv("FUSED_RESNET_CHOICE_CACHE", "1")
    _choose()
    (name,) = _files(tmp_path)
    (tmp_path / name).write_text("{not json")
    choice.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert _choose() == "fused" and _choose(("conv", 2)) == "fused"
    assert len(clock.timed) == 3
    assert len([w for w in caught if issubclass(w.category, RuntimeWarning)]) == 1, [str(w.message) for w in caught]
    assert set(json.loads((tmp_path / name).read_text())) == {repr(("conv", 1)), repr(("conv", 2))}  # replaced


def test_an_unwritable_cache_costs_one_warning_never_an_error(clock, tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("FUSED_RESNET_CACHE_DIR", str(blocker / "cache"))  # no directory can be made there
    monkeypatch.setenv("FUSED_RESNET_CHOICE_CACHE", "1")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert _choose() == "fused" and _choose(("conv", 2)) == "fused" and _choose() == "fused"
    assert len(clock.timed) == 2
    assert len([w for w in caught if issubclass(w.category, RuntimeWarning)]) == 1, [str(w.message) for w in caught]
