# The dose journal survives a power cut at every byte. MicroPython-compatible.
import os

from pulsefw import journal


class PowerCut(Exception):
    pass


class Disk:
    """An in-memory filesystem that loses power after `budget` steps: each
    byte written is a step, and so is a rename."""

    def __init__(self):
        self.files = {}
        self.budget = -1  # -1: never

    def _step(self):
        if self.budget == 0:
            raise PowerCut()
        if self.budget > 0:
            self.budget -= 1

    def read(self, name):
        return self.files.get(name, b"")

    def append(self, name, data):
        for b in data:
            self._step()
            self.files[name] = self.files.get(name, b"") + bytes([b])

    def replace(self, name, data):
        tmp = name + ".tmp"
        self.files[tmp] = b""
        for b in data:
            self._step()
            self.files[tmp] += bytes([b])
        self._step()
        self.files[name] = self.files.pop(tmp)


RECORDS = [{"kind": "exam", "id": 1}] + [{"kind": "event", "n": i, "ugy": i * 39.5} for i in range(6)]


def run_until_cut(disk, budget):
    """Append every record, losing power after `budget` steps; returns the
    records whose append returned (committed)."""
    disk.budget = budget
    committed = []
    try:
        j = journal.Journal(disk)
        for r in RECORDS:
            j.append(r)
            committed.append(r)
    except PowerCut:
        pass
    disk.budget = -1
    return committed


def test_round_trip_and_reopen():
    disk = Disk()
    j = journal.Journal(disk)
    for r in RECORDS:
        j.append(r)
    again = journal.Journal(disk)
    assert [r for _, r in again.read_all()] == RECORDS
    assert again.next_seq == len(RECORDS)
    assert [r for _, r in again.current_exam()] == RECORDS
    again.append({"kind": "exam", "id": 2})
    again.append({"kind": "event", "n": 7})
    assert [r for _, r in again.current_exam()] == [{"kind": "exam", "id": 2}, {"kind": "event", "n": 7}]
    assert again.last == (len(RECORDS) + 1, {"kind": "event", "n": 7})


def test_power_cut_at_every_byte_loses_nothing_committed():
    total = len(b"".join(journal.encode_record(i, r) for i, r in enumerate(RECORDS)))
    for budget in range(total + 1):
        disk = Disk()
        committed = run_until_cut(disk, budget)
        j = journal.Journal(disk)  # reopen: repairs a torn tail
        assert [r for _, r in j.read_all()] == committed, budget
        # After the repair the file holds exactly the good records, and new
        # appends follow them.
        assert journal.decode_records(disk.read("journal.bin"))[1] == len(disk.read("journal.bin"))
        j.append({"kind": "event", "n": 99})
        assert [r for _, r in journal.Journal(disk).read_all()] == committed + [{"kind": "event", "n": 99}]


def test_power_cut_during_the_repair_loses_nothing():
    disk = Disk()
    run_until_cut(disk, 150)  # tears a record
    torn = dict(disk.files)
    committed = [r for _, r in journal.decode_records(torn["journal.bin"])[0]]
    repair_steps = journal.decode_records(torn["journal.bin"])[1] + 1
    for budget in range(repair_steps + 1):
        disk = Disk()
        disk.files = dict(torn)
        disk.budget = budget
        try:
            journal.Journal(disk)
        except PowerCut:
            pass
        disk.budget = -1
        assert [r for _, r in journal.Journal(disk).read_all()] == committed


def test_garbage_is_never_taken_for_a_record():
    good = journal.encode_record(0, {"kind": "exam"})
    for i in range(len(good)):
        bad = bytearray(good)
        bad[i] ^= 0x40
        assert journal.decode_records(bytes(bad))[0] == []


def test_file_store_on_the_real_filesystem():
    # The runner provides a directory; the webassembly port has no
    # environment, and its /tmp is the interpreter's own, in memory.
    root = os.getenv("PULSEFW_TMP") if hasattr(os, "getenv") else "/tmp"
    if not root:
        return
    store = journal.FileStore(root)
    j = journal.Journal(store)
    j.append({"kind": "exam", "id": 7})
    with open(root + "/journal.bin", "ab") as f:
        f.write(b"JR\x05")  # a torn record
    again = journal.Journal(store)
    assert [r for _, r in again.read_all()] == [{"kind": "exam", "id": 7}]
    again.append({"kind": "event"})
    assert len(journal.Journal(store).read_all()) == 2
