"""Build of fused-resnet: the Python packages and, when a CUDA toolkit is found, the
compiled extension ``fused_resnet._C`` (csrc/: BatchNorm statistics, finalize,
running-statistics update, BN + residual + ReLU, forward and backward; csrc/cutlass/:
convolutions with the BN + ReLU prologue fused into CUTLASS mainloops).

Metadata and dependencies live in pyproject.toml; this file adds the packages
(``kernels/`` is installed as ``fused_resnet.kernels``) and the extension.

    MAX_JOBS=2 pip install -v --no-build-isolation -e .     # or: pip install -v --no-build-isolation .

pip shows this build's output only with -v. Object files are kept in build/ for every
build, editable or not, so a build compiles only the sources changed since the last.

Environment:
    FUSED_RESNET_SKIP_EXT=1   build no extension (pure-Python install: reference and triton backends)
    CUTLASS_INCLUDE_DIR       CUTLASS headers (else those of the nvidia-cutlass pip package)
    TORCH_CUDA_ARCH_LIST      SM architectures to compile; "8.0;9.0" when unset and no GPU is visible
    CUDA_HOME                 the toolkit (else nvcc on PATH, else /usr/local/cuda), as torch finds it
    MAX_JOBS                  parallel compile jobs of ninja
"""
from __future__ import annotations

import glob
import importlib.util
import os
import shutil
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_ARCH_LIST = "8.0;9.0"
SOURCES = [
    "csrc/bindings.cpp",
    "csrc/ops/common.cpp",
    "csrc/ops/batch_stats.cpp",
    "csrc/ops/bn_finalize.cpp",
    "csrc/ops/bn_act.cpp",
    "csrc/ops/conv_output_grad.cpp",
    "csrc/ops/conv_common.cpp",
    "csrc/ops/conv.cpp",
    "csrc/ops/conv_backward.cpp",
    "csrc/batch_stats.cu",
    "csrc/bn_finalize.cu",
    "csrc/bn_act.cu",
    "csrc/bn_act_backward.cu",
    "csrc/conv_output_grad.cu",
    "csrc/wgrad_reduce.cu",
    "csrc/cutlass_conv.cpp",
] + sorted(f"csrc/cutlass/{f}" for f in os.listdir(os.path.join(ROOT, "csrc", "cutlass")) if f.endswith(".cu"))
# Not compiled, but a change to any of them (or to torch) must rebuild _C.
HEADERS = sorted(glob.glob("csrc/**/*.h", root_dir=ROOT, recursive=True)
                 + glob.glob("csrc/**/*.cuh", root_dir=ROOT, recursive=True))
# The object files of every build, editable or not, so that ninja compiles again only the sources
# changed since the last build (an editable install would otherwise compile in a fresh temporary
# directory each time).
OBJECT_DIR = os.path.join("build", f"temp-_C-{sys.implementation.cache_tag}")
PACKAGES = ["fused_resnet", "fused_resnet.backends", "fused_resnet.backends.triton", "fused_resnet.models",
            "fused_resnet.tools", "fused_resnet.kernels"]
PACKAGE_DIR = {"fused_resnet": "fused_resnet", "fused_resnet.kernels": "kernels"}


def say(msg: str) -> None:
    print(f"[fused-resnet setup] {msg}", flush=True)


def pip_nvidia_include_dirs() -> list[str]:
    """The include dirs of the pip CUDA wheels (nvidia/cu13/include first, then nvidia/*/include).

    The torch C++ headers include cuBLAS/cuSPARSE/cuSOLVER headers that a bare
    toolkit may lack; the wheels torch depends on carry them.
    """
    spec = importlib.util.find_spec("nvidia")
    if spec is None or not spec.submodule_search_locations:
        return []
    found: list[str] = []
    for base in spec.submodule_search_locations:
        for pattern in ("cu*/include", "*/include"):
            for d in sorted(glob.glob(os.path.join(base, pattern))):
                if os.path.isdir(d) and d not in found:
                    found.append(d)
    return found


def cutlass_include_dir() -> str | None:
    """The CUTLASS headers: CUTLASS_INCLUDE_DIR, else the nvidia-cutlass pip package's.

    The package is found without importing it (its Python side needs packages the
    build does not).
    """
    candidates = [os.environ.get("CUTLASS_INCLUDE_DIR", "")]
    spec = importlib.util.find_spec("cutlass_library")
    if spec is not None and spec.submodule_search_locations:
        candidates += [os.path.join(p, "source", "include") for p in spec.submodule_search_locations]
    for d in candidates:
        if d and os.path.exists(os.path.join(d, "cutlass", "cutlass.h")):
            return d
    return None


def resolve_cuda_home() -> None:
    """Set CUDA_HOME to the real toolkit when it is unset and nvcc on PATH is a wrapper.

    torch takes the parent of `which nvcc`; when that is a wrapper script (say
    /usr/local/bin/nvcc exec'ing /usr/local/cuda-13.0/bin/nvcc) it would get
    /usr/local, whose include/ and lib64/ hold no CUDA runtime. This must run
    before torch.utils.cpp_extension is imported (it reads CUDA_HOME at import).
    """
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return
    candidates = []
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    candidates.append("/usr/local/cuda")
    for home in candidates:
        if os.path.exists(os.path.join(home, "bin", "nvcc")) and os.path.exists(
            os.path.join(home, "include", "cuda_runtime.h")
        ):
            os.environ["CUDA_HOME"] = home
            say(f"CUDA_HOME is unset: using the toolkit at {home}")
            return


def _build_ext_class(base, plan: str):
    """torch's BuildExtension compiling into OBJECT_DIR and saying what it compiles (``plan``)."""

    class BuildExt(base):
        def initialize_options(self):
            super().initialize_options()
            self.build_temp = os.path.join(ROOT, OBJECT_DIR)

        def build_extensions(self):
            say(f"building the CUDA extension fused_resnet._C: {plan}. ninja compiles the sources changed since "
                f"the last build (their objects are kept in {OBJECT_DIR}): every source, once per architecture, "
                "the first time, which takes minutes (pip -v shows ninja's [done/total] lines)")
            super().build_extensions()

    return BuildExt


def extension_build():
    """(ext_modules, cmdclass) for setup(), or ([], {}) with the reason printed."""
    if os.environ.get("FUSED_RESNET_SKIP_EXT", "0") not in ("", "0"):
        say("FUSED_RESNET_SKIP_EXT is set: skipping the CUDA extension fused_resnet._C")
        return [], {}
    resolve_cuda_home()
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError as e:
        say(f"torch is not importable ({e}): skipping the CUDA extension fused_resnet._C "
            "(install torch first and build with --no-build-isolation)")
        return [], {}
    if torch.version.cuda is None:
        say(f"torch {torch.__version__} is a CPU-only build: skipping the CUDA extension fused_resnet._C")
        return [], {}
    cuda_home = cpp_extension.CUDA_HOME
    nvcc = os.path.join(cuda_home, "bin", "nvcc") if cuda_home else None
    if nvcc is None or not os.path.exists(nvcc):
        say("no CUDA toolkit found (no nvcc under CUDA_HOME, on PATH or in /usr/local/cuda): "
            "skipping the CUDA extension fused_resnet._C")
        return [], {}

    cutlass_dir = cutlass_include_dir()
    if cutlass_dir is None:
        say("the CUTLASS headers are missing (pip install --no-deps nvidia-cutlass, or set CUTLASS_INCLUDE_DIR): "
            "skipping the CUDA extension fused_resnet._C")
        return [], {}

    if not os.environ.get("TORCH_CUDA_ARCH_LIST"):
        if torch.cuda.is_available():
            say("TORCH_CUDA_ARCH_LIST is unset: torch picks the architectures of the visible GPUs")
        else:
            os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_ARCH_LIST
            say(f"TORCH_CUDA_ARCH_LIST is unset and no GPU is visible: using {DEFAULT_ARCH_LIST!r}")

    # Toolkit headers first, the pip wheels' headers after them (they only fill in
    # what the toolkit lacks, e.g. cublas_v2.h); -I order decides who wins.
    include_dirs = [os.path.join(ROOT, "csrc"), cutlass_dir]
    include_dirs += cpp_extension.include_paths("cuda")
    include_dirs += pip_nvidia_include_dirs()
    # Deduplicate, keeping the first occurrence.
    include_dirs = list(dict.fromkeys(include_dirs))

    cxx_flags = ["-O3", "-g0"]  # -g0: no debug info (Python's CFLAGS carry -g)
    # No --use_fast_math: the statistics need IEEE division and rounding. The language
    # standard is torch's: C++17 in torch 2.11, C++20 in 2.14, so the
    # sources must compile as both (CMakeLists.txt, which CI builds, takes C++17 for .cu).
    nvcc_flags = ["-O3", "-lineinfo"]
    ext = cpp_extension.CUDAExtension(
        name="fused_resnet._C",
        sources=SOURCES,
        include_dirs=include_dirs,
        # The shared C++ runtime by file name: some toolchains link libstdc++.a into the
        # extension otherwise (no libstdc++.so link-time symlink, or -static-libstdc++),
        # and a second copy of the iostream/locale machinery beside torch's crashes the
        # first time an error message formats a number.
        libraries=[":libstdc++.so.6"],
        extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags},
        depends=HEADERS + [os.path.join(os.path.dirname(torch.__file__), "version.py")],
    )
    plan = (f"{len(SOURCES)} sources with {nvcc} (CUDA {torch.version.cuda}, torch {torch.__version__}), "
            f"CUTLASS headers {cutlass_dir}, TORCH_CUDA_ARCH_LIST={os.environ.get('TORCH_CUDA_ARCH_LIST')!r}, "
            f"MAX_JOBS={os.environ.get('MAX_JOBS', '(ninja default)')}")
    build_ext = _build_ext_class(cpp_extension.BuildExtension.with_options(use_ninja=True), plan)
    return [ext], {"build_ext": build_ext}


ext_modules, cmdclass = extension_build()
setup(
    packages=PACKAGES,
    package_dir=PACKAGE_DIR,
    # measured tables: speed tables for backend="auto", tuned Triton configurations
    package_data={"fused_resnet": ["speed_tables/*.json", "tuned/*.json"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
