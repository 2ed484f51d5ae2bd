# CRC-32 into a packet: crc32_into(out, off, first, second=None) writes the
# CRC-32 of first then second (binascii.crc32's) little-endian at out[off];
# crc32_span_into(out, off, buf, start, n) that of buf[start:start + n].
# Where the port compiles viper (the Pico, the Pico 2, the simulated board)
# it is crc_viper's, which allocates nothing; elsewhere (CPython, the
# webassembly port) binascii's value, which is a long integer on a 32-bit
# port for three values in four (NATIVE says which one runs).
from binascii import crc32
from struct import pack_into

try:
    from .crc_viper import crc32_into, crc32_span_into

    NATIVE = True
except (ImportError, NameError, SyntaxError, AttributeError, ValueError):
    # No native emitter here (or CPython, where viper's types do not exist).
    NATIVE = False

    def crc32_into(out, off, first, second=None):
        c = crc32(first) if second is None else crc32(second, crc32(first))
        pack_into("<I", out, off, c & 0xFFFFFFFF)

    def crc32_span_into(out, off, buf, start, n):
        pack_into("<I", out, off, crc32(memoryview(buf)[start:start + n]) & 0xFFFFFFFF)
