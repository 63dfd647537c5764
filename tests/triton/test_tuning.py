"""The triton backend's tile-configuration choice (fused_resnet/backends/triton/tuning.py), on the CPU:
timing and the GPU name are faked, so only the bookkeeping runs: the bound on candidates, the
progress line, the tables on disk (shipped and cached) and how they fail."""
from __future__ import annotations

import json
import warnings

import pytest
import torch

from fused_resnet.backends.triton import tuning as tt

DEVICE = torch.device("cuda", 0)  # only its index is read: the GPU name is faked
CANDS = [(128, 64, 64, 4, 4), (128, 128, 64, 8, 3), (64, 128, 64, 4, 4), (64, 64, 64, 4, 4),
         (128, 256, 64, 8, 3), (128, 128, 32, 4, 4)]
# The fastest overall is beyond the default bound of 4; the fastest of the first four is CANDS[2].
TIMES = dict(zip(CANDS, [3.0, 2.0, 1.0, 4.0, 0.5, 0.5]))


def conv_key(cin: int = 64) -> tuple:
    return ("conv", 8192, cin, 64, 3, 3, 1, 1, 1, 1, 1, 1, 1, torch.bfloat16, True, False, False, True, True,
            "tf32")


class FakeGPU:
    """Stands in for the GPU: ``launch`` records the configuration, ``time_ms`` answers from
    ``times`` (None: the configuration does not fit and raises)."""

    def __init__(self, monkeypatch, name: str = "NVIDIA H200", times: dict = TIMES):
        self.name, self.times, self.timed = name, times, []
        monkeypatch.setattr(tt, "gpu_name", lambda device: self.name)
        monkeypatch.setattr(tt, "time_ms", self.time_ms)

    def launch(self, cfg: tuple) -> None:
        self.last = cfg

    def time_ms(self, fn) -> float:
        fn()
        if self.times[self.last] is None:
            raise RuntimeError("out of resources: shared memory")
        self.timed.append(self.last)
        return self.times[self.last]

    def pick(self, key: tuple = None, cands: list = CANDS) -> tuple:
        return tt.pick(key or conv_key(), cands, self.launch, DEVICE)


def new_process(monkeypatch) -> None:
    """What a new process starts with: nothing chosen, read or warned about."""
    monkeypatch.setattr(tt, "_TUNED", {})
    monkeypatch.setattr(tt, "_FILES", {})
    monkeypatch.setattr(tt, "_WARNED", set())


@pytest.fixture
def env(tmp_path, monkeypatch):
    """A fresh process with a cache and a shipped directory of its own; returns the cache dir."""
    for var in ("FUSED_RESNET_TRITON_AUTOTUNE", "FUSED_RESNET_TRITON_AUTOTUNE_MAX", "FUSED_RESNET_QUIET"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("FUSED_RESNET_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(tt, "SHIPPED_DIR", tmp_path / "shipped")
    new_process(monkeypatch)
    return tmp_path / "cache"


def cache_file(cache_dir, gpu: str = "NVIDIA H200"):
    return cache_dir / tt.table_name(gpu, tt.versions()[0])


def tuning_warnings(record) -> list:
    return [w for w in record if issubclass(w.category, RuntimeWarning) and "tuning table" in str(w.message)]


def test_the_choice_round_trips_through_the_cache(env, monkeypatch):
    gpu = FakeGPU(monkeypatch)
    assert gpu.pick() == CANDS[2]
    assert gpu.timed == CANDS[:4]
    table = json.loads(cache_file(env).read_text())
    assert (table["gpu"], table["triton"]) == ("NVIDIA H200", tt.versions()[0])
    [entry] = table["entries"]
    # dtypes by name, the kernel first, no device index: the GPU name keys the file
    assert entry == {"torch": tt.versions()[1], "key": list(tt.disk_key(conv_key())), "config": list(CANDS[2])}
    assert entry["key"][0] == "conv" and "torch.bfloat16" in entry["key"]

    new_process(monkeypatch)
    gpu = FakeGPU(monkeypatch)
    assert gpu.pick() == CANDS[2]
    assert gpu.timed == [], "a configuration on disk was timed again"


@pytest.mark.parametrize("other", ["device-name", "triton", "torch"])  # not "gpu": that id marks GPU-only tests
def test_an_entry_of_another_gpu_or_version_is_never_served(env, monkeypatch, other):
    FakeGPU(monkeypatch).pick()
    new_process(monkeypatch)
    triton_v, torch_v = tt.versions()
    if other == "triton":
        monkeypatch.setattr(tt, "versions", lambda: ("0.0.1", torch_v))
    elif other == "torch":
        monkeypatch.setattr(tt, "versions", lambda: (triton_v, "0.0.1"))
    gpu = FakeGPU(monkeypatch, name="NVIDIA H100" if other == "device-name" else "NVIDIA H200",
                  times={**TIMES, CANDS[0]: 0.1})
    assert gpu.pick() == CANDS[0]
    assert gpu.timed == CANDS[:4]
    if other == "torch":  # one file per GPU and triton version: both torch versions' entries are kept
        table = json.loads(cache_file(env).read_text())
        assert sorted(e["torch"] for e in table["entries"]) == sorted([torch_v, "0.0.1"])


def test_a_table_under_another_gpus_name_is_refused(env, monkeypatch):
    """A file named for this GPU whose header names another is not read (one warning)."""
    FakeGPU(monkeypatch, name="NVIDIA H100").pick()
    env.joinpath(tt.table_name("NVIDIA H100", tt.versions()[0])).replace(cache_file(env))
    new_process(monkeypatch)
    gpu = FakeGPU(monkeypatch)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert gpu.pick() == CANDS[2]
    assert gpu.timed == CANDS[:4]
    [w] = tuning_warnings(record)
    assert "expected the table of NVIDIA H200" in str(w.message) and "NVIDIA H100" in str(w.message)


def test_a_corrupt_cache_warns_once_and_tunes(env, monkeypatch):
    env.mkdir()
    cache_file(env).write_text('{"format": 1, "gpu": ')
    gpu = FakeGPU(monkeypatch)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert gpu.pick(conv_key(64)) == CANDS[2]
        assert gpu.pick(conv_key(128)) == CANDS[2]
    [w] = tuning_warnings(record)
    assert str(cache_file(env)) in str(w.message) and "expected JSON" in str(w.message)
    table = json.loads(cache_file(env).read_text())  # replaced by a sound table
    assert len(table["entries"]) == 2


def test_an_unwritable_cache_warns_once_and_tunes(env, tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("FUSED_RESNET_CACHE_DIR", str(blocker / "cache"))  # a directory under a file
    gpu = FakeGPU(monkeypatch)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert gpu.pick(conv_key(64)) == CANDS[2]
        assert gpu.pick(conv_key(128)) == CANDS[2]
        assert gpu.pick(conv_key(64)) == CANDS[2]
    assert len(tuning_warnings(record)) == 1
    assert gpu.timed == CANDS[:4] * 2


def test_a_configuration_that_is_no_candidate_is_ignored(env, monkeypatch):
    triton_v, torch_v = tt.versions()
    stale = (256, 256, 128, 8, 5)
    tt.write_table(cache_file(env), "NVIDIA H200", triton_v, {(torch_v, tt.disk_key(conv_key())): stale})
    gpu = FakeGPU(monkeypatch)
    assert gpu.pick() == CANDS[2]
    assert gpu.timed == CANDS[:4]


def test_a_stored_configuration_is_served_as_the_candidate_itself(env, monkeypatch):
    """A table written by hand with 128.0 for 128 matches a candidate; the launch gets the ints."""
    triton_v, torch_v = tt.versions()
    tt.write_table(cache_file(env), "NVIDIA H200", triton_v,
                   {(torch_v, tt.disk_key(conv_key())): tuple(float(b) for b in CANDS[1])})
    cfg = FakeGPU(monkeypatch).pick()
    assert cfg == CANDS[1] and all(type(b) is int for b in cfg)


def test_a_shipped_table_is_served_first_and_never_written(env, monkeypatch):
    triton_v, torch_v = tt.versions()
    shipped = tt.SHIPPED_DIR / tt.table_name("NVIDIA H200", triton_v)
    tt.write_table(shipped, "NVIDIA H200", triton_v, {(torch_v, tt.disk_key(conv_key())): CANDS[5]})
    before = shipped.read_text()
    tt.write_table(cache_file(env), "NVIDIA H200", triton_v, {(torch_v, tt.disk_key(conv_key())): CANDS[1]})
    gpu = FakeGPU(monkeypatch)
    assert gpu.pick() == CANDS[5]
    assert gpu.pick(conv_key(128)) == CANDS[2]  # not shipped: tuned, and remembered in the cache only
    assert gpu.timed == CANDS[:4]
    assert shipped.read_text() == before
    assert len(json.loads(cache_file(env).read_text())["entries"]) == 2


def test_what_another_process_wrote_meanwhile_is_kept(env, monkeypatch):
    gpu = FakeGPU(monkeypatch)
    gpu.pick(conv_key(64))
    triton_v, torch_v = tt.versions()
    other = tt.disk_key(conv_key(256))
    tt.write_table(cache_file(env), "NVIDIA H200", triton_v, {(torch_v, other): CANDS[3]})  # another process
    gpu.pick(conv_key(128))
    keys = {tuple(e["key"]) for e in json.loads(cache_file(env).read_text())["entries"]}
    assert keys == {tt.disk_key(conv_key(c)) for c in (64, 128, 256)}
    assert not list(env.glob("*.tmp")), "a temporary file was left behind"


def test_the_progress_line_says_kernel_shape_and_count_once_per_key(env, monkeypatch, capsys):
    gpu = FakeGPU(monkeypatch)
    gpu.pick()
    gpu.pick()
    err = capsys.readouterr().err
    assert err.count("[fused-resnet]") == 1, err
    assert "Triton conv kernel" in err and str(conv_key()[1:]) in err and "4 of 6 candidate" in err, err
    monkeypatch.setenv("FUSED_RESNET_QUIET", "1")
    gpu.pick(conv_key(128))
    assert capsys.readouterr().err == ""


def test_the_bound_on_candidates_holds(env, monkeypatch):
    times = {**TIMES, CANDS[1]: None}  # does not fit: skipped, not counted
    gpu = FakeGPU(monkeypatch, times=times)
    assert gpu.pick(conv_key(64)) == CANDS[4]
    assert gpu.timed == [CANDS[0], CANDS[2], CANDS[3], CANDS[4]]
    monkeypatch.setenv("FUSED_RESNET_TRITON_AUTOTUNE_MAX", "2")
    gpu.timed.clear()
    assert gpu.pick(conv_key(128)) == CANDS[2]
    assert gpu.timed == [CANDS[0], CANDS[2]]
    monkeypatch.setenv("FUSED_RESNET_TRITON_AUTOTUNE_MAX", "all")
    with pytest.raises(ValueError, match="FUSED_RESNET_TRITON_AUTOTUNE_MAX must be a positive integer, got 'all'"):
        gpu.pick(conv_key(256))


def test_no_candidate_that_runs_is_an_error_naming_the_problem(env, monkeypatch):
    gpu = FakeGPU(monkeypatch, times=dict.fromkeys(CANDS))
    with pytest.raises(RuntimeError, match="triton conv: expected one of 6 candidate configurations to run"):
        gpu.pick()


def test_autotune_off_takes_the_heuristic_untimed(env, monkeypatch):
    monkeypatch.setenv("FUSED_RESNET_TRITON_AUTOTUNE", "0")
    gpu = FakeGPU(monkeypatch)
    assert gpu.pick() == CANDS[0]
    assert gpu.timed == [] and not env.exists()


def test_dump_writes_a_table_that_ships(env, tmp_path, monkeypatch):
    gpu = FakeGPU(monkeypatch)
    gpu.pick(conv_key(64))
    gpu.pick(conv_key(128))
    path = tt.dump(tmp_path / "out", DEVICE)
    assert path.name == tt.table_name("NVIDIA H200", tt.versions()[0])
    path.parent.replace(tt.SHIPPED_DIR)
    cache_file(env).unlink()
    new_process(monkeypatch)
    gpu = FakeGPU(monkeypatch)
    assert gpu.pick(conv_key(64)) == gpu.pick(conv_key(128)) == CANDS[2]
    assert gpu.timed == []
