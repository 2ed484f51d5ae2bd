"""cffi build (API mode, out-of-line) of pulseline's native frame assembler.

The cdef is the CDEF-BEGIN..CDEF-END part of pulseline_asm.h, so the C
header is the one place the declarations live. The CRC-32 backend is ISA-L
when its header and library are present (Debian: libisal-dev), else zlib;
PULSELINE_CRC=isal|zlib forces one.
"""

import os
import pathlib
import subprocess
import sysconfig
import tempfile

from cffi import FFI

HERE = pathlib.Path(__file__).resolve().parent
HEADER = (HERE / "pulseline_asm.h").read_text()
CDEF = HEADER.split("/* CDEF-BEGIN */", 1)[1].split("/* CDEF-END */", 1)[0]

ISAL_PROBE = b"#include <isa-l/crc.h>\nint main(void){return (int)crc32_gzip_refl(0, 0, 0);}\n"


def _links(source: bytes, lib: str) -> bool:
    cc = (sysconfig.get_config_var("CC") or "cc").split()
    with tempfile.TemporaryDirectory() as tmp:
        src = pathlib.Path(tmp) / "probe.c"
        src.write_bytes(source)
        cmd = [*cc, str(src), f"-l{lib}", "-o", str(pathlib.Path(tmp) / "probe")]
        return subprocess.run(cmd, capture_output=True).returncode == 0


def crc_backend() -> str:
    choice = os.environ.get("PULSELINE_CRC", "auto")
    if choice not in ("auto", "isal", "zlib"):
        raise SystemExit(f"PULSELINE_CRC must be auto, isal or zlib, not {choice!r}")
    if choice == "auto":
        return "isal" if _links(ISAL_PROBE, "isal") else "zlib"
    return choice


BACKEND = crc_backend()

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    "pulseline._native",
    '#include "pulseline_asm.h"',
    sources=[os.path.relpath(HERE / "pulseline_asm.c")],
    include_dirs=[os.path.relpath(HERE)],
    define_macros=[("PL_CRC_ISAL", "1")] if BACKEND == "isal" else [],
    libraries=["isal"] if BACKEND == "isal" else ["z"],
    # -fopenmp-simd honours the reduction pragmas only; no OpenMP runtime.
    extra_compile_args=["-O3", "-std=gnu11", "-Wall", "-Wextra", "-fno-math-errno", "-fopenmp-simd"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
