# The packet CRC (crc.py): binascii.crc32's value, written into the packet;
# the viper one, where the port compiles it (the unix port here; the Pico),
# allocates nothing.
from binascii import crc32

from pulsefw import crc


def _value(buf, off):
    return buf[off] | (buf[off + 1] << 8) | (buf[off + 2] << 16) | (buf[off + 3] << 24)


def _data(n, seed):
    out = bytearray(n)
    x = seed
    for i in range(n):
        x = (x * 1103515245 + 12345) & 0x7FFFFFFF
        out[i] = (x >> 16) & 0xFF
    return out


def test_the_crc_is_binascii_s_for_every_length_and_split():
    out = bytearray(10)
    for n in (0, 1, 2, 3, 4, 7, 8, 31, 64, 255, 384, 1000):
        a = _data(n, n + 1)
        b = _data(n // 3 + 1, n + 7)
        crc.crc32_into(out, 3, a)
        assert _value(out, 3) == crc32(a) & 0xFFFFFFFF, n
        crc.crc32_into(out, 0, memoryview(a), memoryview(b))
        assert _value(out, 0) == crc32(b, crc32(a)) & 0xFFFFFFFF, n
    # Every top bit pattern (the values a 32-bit board holds as long integers).
    tops = set()
    for seed in range(64):
        a = _data(12, seed)
        crc.crc32_into(out, 0, a)
        assert _value(out, 0) == crc32(a) & 0xFFFFFFFF
        tops.add(out[3] >> 6)
    assert tops == {0, 1, 2, 3}


def test_the_native_crc_allocates_nothing():
    import gc

    if not hasattr(gc, "mem_alloc") or not crc.NATIVE:
        return  # CPython, or a port with no viper (the webassembly one)
    line = memoryview(_data(400, 3))
    head = line[0:34]
    out = bytearray(4)
    crc.crc32_into(out, 0, head, line)
    gc.collect()
    gc.disable()
    before = gc.mem_alloc()
    for _ in range(200):
        crc.crc32_into(out, 0, head, line)
    after = gc.mem_alloc()
    gc.enable()
    assert after == before
