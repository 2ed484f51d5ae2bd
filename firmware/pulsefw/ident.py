# Which firmware this is: a SHA-256 over the files the board runs (boot.py,
# main.py and every file of the package, its board's folder included), the digest `pulseline flash`
# computes for the bundle it deploys. The host records it with every exam
# and checks a deployment by it. Computed once, when first asked (it reads
# every file: not for the hot path).
import binascii
import hashlib
import os

FIRMWARE_VERSION = "0.2.0"

_S_IFDIR = 0x4000


def file_sha256(path, buf):
    h = hashlib.sha256()
    mv = memoryview(buf)
    with open(path, "rb") as f:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            h.update(mv[:n])
    return binascii.hexlify(h.digest()).decode()


def digest(entries):
    """The firmware hash of (board path, file sha256) pairs."""
    h = hashlib.sha256()
    for path, sha in sorted(entries):
        h.update(("%s %s\n" % (path, sha)).encode())
    return binascii.hexlify(h.digest()).decode()


def firmware_hash(package_dir=None):
    if package_dir is None:
        package_dir = __file__.rpartition("/")[0]
    root, _, package = package_dir.rpartition("/")
    buf = bytearray(512)
    entries = []
    for name in ("boot.py", "main.py"):
        try:
            entries.append((name, file_sha256(root + "/" + name if root else name, buf)))
        except OSError:
            pass
    _walk(package_dir, package, buf, entries)
    return digest(entries)


def _walk(directory, board_path, buf, entries):
    """Every file under directory (a board's folder, boards/<board>/, too),
    as (board path, sha256)."""
    for name in os.listdir(directory):
        p = directory + "/" + name
        if os.stat(p)[0] & _S_IFDIR:
            if name != "__pycache__":  # a host's: never on a board
                _walk(p, board_path + "/" + name, buf, entries)
            continue
        entries.append((board_path + "/" + name, file_sha256(p, buf)))
