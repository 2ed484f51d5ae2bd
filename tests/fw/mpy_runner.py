# Runs the test_* functions of the named modules on MicroPython: as a script
# on the unix port (module names as arguments), or through run() from
# mp32_runner.mjs on the 32-bit webassembly port.
import sys


def run(names):
    passed = 0
    failed = 0
    for name in names:
        mod = __import__(name)
        for attr in sorted(dir(mod)):
            if not attr.startswith("test_"):
                continue
            try:
                getattr(mod, attr)()
                passed += 1
            except Exception as exc:  # report every failure, keep going
                failed += 1
                print("FAIL", name + "." + attr)
                sys.print_exception(exc)
    print("micropython:", passed, "passed,", failed, "failed")
    return failed


if __name__ == "__main__":
    sys.exit(1 if run(sys.argv[1:]) else 0)
