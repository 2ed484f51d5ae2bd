# The dose journal: exam totals and one record per irradiation event, kept
# on the board's filesystem so that a reset or power loss at any instant
# loses nothing committed and never leaves the file unreadable.
#
# The file is a sequence of records, each checked on its own:
#   magic "JR" | length u16 | seq u32 | payload (JSON) | crc32 u32
# (little-endian; the CRC covers magic..payload). Appends only ever add at
# the end, so a power cut can tear at most the last record; a reader takes
# every record up to the first that fails its check. Opening the journal
# repairs a torn tail by writing the good prefix to a new file and renaming
# it over the old one (rename is atomic on littlefs and POSIX), so appends
# always follow good data.
#
# The irradiation event in progress is not appended to the journal while it
# runs: its record so far is the checkpoint file (one record, replaced
# atomically twice a second), so that a power cut loses under a second of
# dose while the journal grows by one record per event. At the next boot a
# checkpoint whose event was never committed is committed, marked
# interrupted (unfinished()).
import json
import struct
from binascii import crc32

from micropython import const

MAGIC = b"JR"
HEAD_SIZE = const(8)
MAX_RECORD = const(4096)


def encode_record(seq, record):
    body = json.dumps(record).encode()
    if len(body) > MAX_RECORD:
        raise ValueError("journal record too long")
    head = MAGIC + struct.pack("<HI", len(body), seq)
    crc = crc32(body, crc32(head)) & 0xFFFFFFFF
    return head + body + struct.pack("<I", crc)


def decode_records(data):
    """(records, good_length): every record up to the first bad one."""
    out = []
    pos = 0
    n = len(data)
    while pos + HEAD_SIZE + 4 <= n and data[pos:pos + 2] == MAGIC:
        length, seq = struct.unpack_from("<HI", data, pos + 2)
        end = pos + HEAD_SIZE + length + 4
        if length > MAX_RECORD or end > n:
            break
        want = struct.unpack_from("<I", data, end - 4)[0]
        if crc32(memoryview(data)[pos:end - 4]) & 0xFFFFFFFF != want:
            break
        try:
            rec = json.loads(bytes(data[pos + HEAD_SIZE:end - 4]))
        except ValueError:
            break
        out.append((seq, rec))
        pos = end
    return out, pos


class FileStore:
    """The board filesystem, through the few calls the journal needs."""

    def __init__(self, root):
        self.root = root

    def _path(self, name):
        return self.root + "/" + name

    def read(self, name):
        try:
            with open(self._path(name), "rb") as f:
                return f.read()
        except OSError:
            return b""

    def append(self, name, data):
        with open(self._path(name), "ab") as f:
            f.write(data)
            f.flush()
        _sync()

    def replace(self, name, data):
        import os

        tmp = self._path(name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
        _sync()
        os.rename(tmp, self._path(name))
        _sync()


def _sync():
    import os

    sync = getattr(os, "sync", None)
    if sync:
        sync()


class Journal:
    """Append records; read them back after any reset. Only the last record
    and where the current exam starts stay in RAM; reads go to the file."""

    def __init__(self, store, name="journal.bin", checkpoint_name="press.bin"):
        self.store = store
        self.name = name
        self.checkpoint_name = checkpoint_name
        data = store.read(name)
        records, good = decode_records(data)
        if good != len(data):
            # A torn tail (power cut mid-append): keep the good prefix.
            store.replace(name, bytes(data[:good]))
        self.last = records[-1] if records else None
        self.next_seq = records[-1][0] + 1 if records else 0
        self.exam_seq = -1  # seq of the last "exam" record (-1: none)
        for seq, rec in records:
            if rec.get("kind") == "exam":
                self.exam_seq = seq

    def append(self, record):
        """Commit one record. When this returns, the record survives any
        later reset or power loss."""
        data = encode_record(self.next_seq, record)
        self.store.append(self.name, data)
        self.last = (self.next_seq, record)
        if record.get("kind") == "exam":
            self.exam_seq = self.next_seq
        self.next_seq += 1

    def checkpoint(self, record):
        """The open event's record so far, replacing the last checkpoint in
        one atomic write. When this returns it survives any reset or power
        loss (unfinished() gives it back if the event is never committed)."""
        self.store.replace(self.checkpoint_name, encode_record(self.next_seq, record))

    def unfinished(self):
        """The checkpointed record of an event that was never committed (the
        board lost power or was reset mid-press), or None. Events are
        committed in order, so one committed since has a later (exam,
        event) than the checkpoint's, or the same."""
        records = decode_records(self.store.read(self.checkpoint_name))[0]
        if not records:
            return None
        rec = records[-1][1]
        if rec.get("kind") != "event":
            return None
        if self.last is not None:
            last = self.last[1]
            if (rec.get("exam", 0), rec.get("event", 0)) <= (last.get("exam", 0), last.get("event", 0)):
                return None
        return rec

    def read(self, from_seq=0, max_records=-1):
        """(seq, record) pairs from the file, from from_seq on."""
        out = []  # type: list
        for seq, rec in decode_records(self.store.read(self.name))[0]:
            if seq >= from_seq:
                if len(out) == max_records:
                    break
                out.append((seq, rec))
        return out

    def read_all(self):
        return self.read(0)

    def current_exam(self):
        """Records of the current exam (from its "exam" record on)."""
        return self.read(self.exam_seq if self.exam_seq >= 0 else 0)
