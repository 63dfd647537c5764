"""The triton backend's choice of tile configuration: bounded autotuning, remembered on disk.

``choose`` answers, for one problem (a ``key`` tuple naming the kernel and the shape,
e.g. ``("dgrad", 8192, 64, 64, ...)``) on one GPU, with the first of:

1. the configuration this process already chose for the key on that device;
2. the heuristic first candidate, when ``FUSED_RESNET_TRITON_AUTOTUNE=0`` or while a CUDA
   graph is being captured (nothing is timed or remembered then);
3. the shipped table ``fused_resnet/tuned/<file>`` (read-only, measured by us);
4. the user's cache ``<cache dir>/<file>``, written by earlier processes;
5. timing: at most ``FUSED_RESNET_TRITON_AUTOTUNE_MAX`` (default 4) candidates, in the
   order the kernels list them (best guess first), one progress line on stderr per key
   (``FUSED_RESNET_QUIET=1`` silences it); the winner is added to the user's cache.

``<file>`` is one JSON table per (GPU name, triton version), ``<cache dir>`` is
``FUSED_RESNET_CACHE_DIR``, else ``$XDG_CACHE_HOME/fused-resnet``, else
``~/.cache/fused-resnet``. A table:

    {"format": 1, "gpu": "NVIDIA H200", "triton": "3.6.0",
     "entries": [{"torch": "2.14.1", "key": ["conv", 8192, 64, ..., "torch.bfloat16", ...],
                  "config": [128, 128, 64, 8, 3]}, ...]}

An entry is served only to the same GPU name, triton and torch versions and key, and
only when its configuration is one of today's candidates. A table that cannot be
read or written costs one warning per file and a process; tuning goes on without it.
``dump`` writes what this process chose as such a table (``bench/bench_models.py
--tuned-table DIR`` calls it), which is how a shipped table is made.
"""
from __future__ import annotations

import json
import os
import re
import sys
import warnings
from pathlib import Path
from typing import Callable, Optional

import torch

from ..._files import atomic_write

FORMAT = 1
MAX_CANDIDATES = 4  # default bound on the candidates timed per key
WARMUP_MS, REP_MS = 2, 10  # do_bench's budget per candidate
SHIPPED_DIR = Path(__file__).resolve().parents[2] / "tuned"

# (device index, key) -> configuration chosen in this process: the hot path's lookup.
_TUNED: dict[tuple, tuple] = {}
# table file -> its entries {(torch version, disk key): configuration}, as last read or written.
_FILES: dict[Path, dict[tuple, tuple]] = {}
# table files already warned about (one warning per file and process).
_WARNED: set[Path] = set()


# ----------------------------------------------------------------------------- environment


def autotune_enabled() -> bool:
    """FUSED_RESNET_TRITON_AUTOTUNE=0 skips timing and takes the heuristic (first) candidate."""
    return os.environ.get("FUSED_RESNET_TRITON_AUTOTUNE", "1") != "0"


def max_candidates() -> int:
    """How many candidates are timed per key at most: FUSED_RESNET_TRITON_AUTOTUNE_MAX, else MAX_CANDIDATES."""
    raw = os.environ.get("FUSED_RESNET_TRITON_AUTOTUNE_MAX", "")
    if not raw:
        return MAX_CANDIDATES
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"FUSED_RESNET_TRITON_AUTOTUNE_MAX must be a positive integer, got {raw!r}")
    return n


def cache_dir() -> Path:
    """The user's tuning cache: FUSED_RESNET_CACHE_DIR, else $XDG_CACHE_HOME/fused-resnet, else ~/.cache/fused-resnet."""
    explicit = os.environ.get("FUSED_RESNET_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "fused-resnet"


def gpu_name(device: torch.device) -> str:
    """The name tables are keyed by (two GPUs of one model share their configurations)."""
    return torch.cuda.get_device_name(device)


def versions() -> tuple[str, str]:
    """(triton version, torch version) of this process."""
    import triton

    return str(triton.__version__), str(torch.__version__)


def time_ms(fn: Callable[[], None]) -> float:
    """The time of one ``fn()`` call in ms, by triton's do_bench on a short budget."""
    from triton.testing import do_bench

    return do_bench(fn, warmup=WARMUP_MS, rep=REP_MS)


def table_name(gpu: str, triton_version: str) -> str:
    """The file name of the table of one GPU and triton version (shipped and cached alike)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", f"{gpu}__triton-{triton_version}") + ".json"


# ----------------------------------------------------------------------------- choosing


def pick(key: tuple, candidates: list, launch: Callable[[tuple], None], device: torch.device) -> tuple:
    """The configuration a launcher runs ``key``'s problem with: the only candidate, or ``choose``'s."""
    if len(candidates) == 1:
        return candidates[0]
    return choose(key, candidates, launch, device)


def choose(key: tuple, candidates: list, launch: Callable[[tuple], None], device: torch.device) -> tuple:
    """The configuration to run ``key``'s problem with on ``device``: remembered, heuristic,
    shipped, cached or timed, in that order (module docstring)."""
    cfg = _TUNED.get((device.index, key))
    if cfg is not None:
        return cfg
    if not autotune_enabled():
        return candidates[0]
    if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
        return candidates[0]  # no timing inside a CUDA graph capture; tune on an eager call first
    gpu = gpu_name(device)
    triton_v, torch_v = versions()
    name = table_name(gpu, triton_v)
    cached = cache_dir() / name
    dkey = (torch_v, disk_key(key))
    cfg = _stored(dkey, candidates, [SHIPPED_DIR / name, cached], gpu, triton_v)
    if cfg is None:
        cfg = _tune(key, candidates, launch, cached)
        _remember(cached, gpu, triton_v, {dkey: cfg})
    _TUNED[(device.index, key)] = cfg
    return cfg


def disk_key(key: tuple) -> tuple:
    """``key`` with JSON-representable elements: dtypes become their names ("torch.bfloat16")."""
    out = []
    for e in key:
        if isinstance(e, torch.dtype):
            e = str(e)
        elif not isinstance(e, (str, int, float, bool)) and e is not None:
            raise TypeError(f"triton tuning: a key holds str, int, float, bool, None or torch.dtype, "
                            f"got {type(e).__name__} in {key}")
        out.append(e)
    return tuple(out)


def _stored(dkey: tuple, candidates: list, paths: list[Path], gpu: str, triton_v: str) -> Optional[tuple]:
    """The first configuration the tables at ``paths`` hold for ``dkey`` that is still a candidate."""
    for path in paths:
        cfg = _entries(path, gpu, triton_v).get(dkey)
        if cfg is not None and cfg in candidates:  # tables outlive candidate lists: serve only today's
            return candidates[candidates.index(cfg)]  # the candidate itself (JSON reads 128.0 == 128)
    return None


def _tune(key: tuple, candidates: list, launch: Callable[[tuple], None], cache_file: Path) -> tuple:
    """The fastest of the first max_candidates() candidates that run, announced on stderr."""
    n = min(max_candidates(), len(candidates))
    _progress(f"autotuning the Triton {key[0]} kernel for {key[1:]}: timing {n} of {len(candidates)} "
              f"candidate configurations (once; remembered in {cache_file})")
    best, best_ms, timed, error = None, float("inf"), 0, None
    for cand in candidates:
        if timed == n:
            break
        try:
            ms = time_ms(lambda: launch(cand))
        except Exception as e:  # noqa: BLE001 - a config that does not fit (shared memory, registers) is skipped
            error = e  # and not counted: the bound is on configurations timed, not tried
            continue
        timed += 1
        if ms < best_ms:
            best, best_ms = cand, ms
    if best is None:
        raise RuntimeError(f"triton {key[0]}: expected one of {len(candidates)} candidate configurations to run "
                           f"the problem {key[1:]}, but none did (the last error is chained)") from error
    return best


def _progress(msg: str) -> None:
    # stderr rather than logging: the first step of a model tunes for minutes, and by default
    # logging shows nothing below WARNING; a user must see that it is not hung.
    if os.environ.get("FUSED_RESNET_QUIET", "0") in ("", "0"):
        print(f"[fused-resnet] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- tables on disk


def _entries(path: Path, gpu: str, triton_v: str) -> dict[tuple, tuple]:
    """The entries of the table at ``path``, read once per process; empty (one warning) if unreadable."""
    if path not in _FILES:
        try:
            _FILES[path] = read_table(path, gpu, triton_v)
        except (OSError, ValueError) as e:
            _warn_once(path, f"cannot be read ({e}); the configurations it would hold are tuned again")
            _FILES[path] = {}
    return _FILES[path]


def read_table(path: Path, gpu: str, triton_v: str) -> dict[tuple, tuple]:
    """{(torch version, key): configuration} of the table at ``path`` (empty if there is none)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    try:
        table = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"expected JSON, got {e}") from None
    if not isinstance(table, dict) or table.get("format") != FORMAT:
        raise ValueError(f"expected an object with \"format\": {FORMAT}, got "
                         f"{table.get('format') if isinstance(table, dict) else type(table).__name__}")
    if (table.get("gpu"), table.get("triton")) != (gpu, triton_v):
        raise ValueError(f"expected the table of {gpu}, triton {triton_v}, got that of "
                         f"{table.get('gpu')}, triton {table.get('triton')}")
    try:
        return {(str(e["torch"]), tuple(e["key"])): tuple(e["config"]) for e in table["entries"]}
    except (KeyError, TypeError) as e:
        raise ValueError(f"expected \"entries\": a list of {{\"torch\", \"key\", \"config\"}} objects "
                         f"({type(e).__name__}: {e})") from None


def _remember(path: Path, gpu: str, triton_v: str, new: dict[tuple, tuple]) -> None:
    """Add ``new`` entries to the table at ``path``; a failure to write costs one warning."""
    try:
        _FILES[path] = write_table(path, gpu, triton_v, new)
    except OSError as e:
        _FILES.setdefault(path, {}).update(new)
        _warn_once(path, f"cannot be written ({e}); tuned configurations are not remembered across processes")


def write_table(path: Path, gpu: str, triton_v: str, new: dict[tuple, tuple]) -> dict[tuple, tuple]:
    """Merge ``new`` into the table at ``path`` and write it atomically; returns the merged entries.

    The file is read again right before writing, so what another process added since
    this one read it is kept; a file that cannot be read is replaced.
    """
    try:
        merged = read_table(path, gpu, triton_v)
    except (OSError, ValueError) as e:
        _warn_once(path, f"cannot be read ({e}); it is replaced")
        merged = {}
    merged.update(new)
    table = {"format": FORMAT, "gpu": gpu, "triton": triton_v,
             "entries": [{"torch": t, "key": list(k), "config": list(c)}
                         for (t, k), c in sorted(merged.items(), key=lambda kv: repr(kv[0]))]}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(table, indent=1)))
    return merged


def _warn_once(path: Path, what: str) -> None:
    if path not in _WARNED:
        _WARNED.add(path)
        warnings.warn(f"fused-resnet: the Triton tuning table {path} {what}", RuntimeWarning, stacklevel=3)


def dump(directory: str | os.PathLike, device: Optional[torch.device] = None) -> Path:
    """Write the configurations this process chose on ``device`` (default and "cuda": the current
    CUDA device) to ``directory``/table_name(...), merged with what is there; returns
    the file. Copied into ``fused_resnet/tuned/``, the file spares that GPU model the tuning.
    """
    if device is None or (device.type == "cuda" and device.index is None):
        device = torch.device("cuda", torch.cuda.current_device())  # the index tensors on "cuda" carry
    gpu = gpu_name(device)
    triton_v, torch_v = versions()
    chosen = {(torch_v, disk_key(key)): cfg for (index, key), cfg in _TUNED.items() if index == device.index}
    path = Path(directory) / table_name(gpu, triton_v)
    write_table(path, gpu, triton_v, chosen)
    return path
