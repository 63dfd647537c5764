"""``python -m fused_resnet.kernels [SHARD NSHARDS [ARCH]]``: compile every NSHARDS-th
specialisation of ``all_specializations()`` starting at SHARD for sm_<ARCH> (default: all,
sm_90), without a GPU; one line per specialisation, exit status 1 if any fails."""
from __future__ import annotations

import sys

from . import all_specializations, compile_specialization
from ._common import interpreting


def main(argv: list[str]) -> None:
    if interpreting():
        raise SystemExit("unset TRITON_INTERPRET to compile for a GPU target")
    shard = int(argv[0]) if argv else 0
    nshards = int(argv[1]) if len(argv) > 1 else 1
    arch = int(argv[2]) if len(argv) > 2 else 90
    failed = []
    for spec in all_specializations()[shard::nshards]:
        try:
            k = compile_specialization(spec, arch)
            assert k.asm.get("cubin"), "no cubin produced"
            print(f"ok {spec[0]} shared={getattr(k.metadata, 'shared', '?')}", flush=True)
        except Exception as e:  # noqa: BLE001 - report every failure, then fail
            failed.append(spec[0])
            print(f"FAIL {spec[0]}: {type(e).__name__}: {e}", flush=True)
    if failed:
        print(f"{len(failed)} specialisations failed: {failed}", flush=True)
        raise SystemExit(1)


if __name__ == "__main__":
    main(sys.argv[1:])
