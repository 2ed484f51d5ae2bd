# Runs the test_* functions of the named modules on MicroPython.
import sys

passed = 0
failed = 0
for name in sys.argv[1:]:
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
sys.exit(1 if failed else 0)
