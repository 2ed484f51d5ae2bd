# Every target makes and uses its own .venv; nothing needs setting up first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
FUZZ_SECONDS ?= 600
FUZZ_DIR := build/fuzz
# Each hil test's evidence bundle (transcript, frames, screenshots) from `make test`.
EVIDENCE := build/evidence
# The board's API for type-checking the firmware; kept out of .venv because
# these stubs replace the standard library's.
RP2_STUBS := build/stubs/rp2
RP2_STUBS_PIN := micropython-rp2-rpi-pico-stubs==1.29.0.post1
PICO2_STUBS := build/stubs/rp2-pico2
PICO2_STUBS_PIN := micropython-rp2-rpi-pico2-stubs==1.29.0.post1
UNIX_STUBS := build/stubs/unix
UNIX_STUBS_PIN := micropython-unix-stubs==1.29.0.post1
# The firmware the Pico and Pico 2 run: everything but the simulated board's HAL.
# What the Pico runs (the board-neutral package and its board's folder), type-checked against its stubs.
FW_RP2 := $(wildcard firmware/pulsefw/*.py firmware/pulsefw/boards/__init__.py firmware/pulsefw/boards/rp2/*.py)

.PHONY: all test test-pico unit lint bench fuzz fuzz-smoke deps clean demo soak

all: test

deps:
	@bash scripts/system-deps.sh

$(STAMP): pyproject.toml setup.py native/pulseline_asm.c native/pulseline_asm.h native/build_native.py | deps
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $@

test: lint unit fuzz-smoke

# npm's runtimes for the tests (package.json): the 32-bit MicroPython.
NODE_STAMP := node_modules/.installed
$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	@touch $@

unit: $(STAMP) $(NODE_STAMP)
	$(BIN)/python -m pytest -n 2 -q -m "not pico"
	# The emulated Pico's quick tests on their own: its emulator takes a whole CPU.
	$(BIN)/python -m pytest -q -m "pico and not pico_full" tests
	rm -rf $(EVIDENCE)
	$(BIN)/python -m pytest -n 2 -q hil_tests --target sim -m "not slow and not browser" --evidence $(EVIDENCE)/sim \
	  --junitxml $(EVIDENCE)/sim.xml
	# The browser's test on its own: Chromium, a board and the host share two CPUs.
	$(BIN)/python -m pytest -q hil_tests --target sim -m browser --evidence $(EVIDENCE)/sim \
	  --junitxml $(EVIDENCE)/sim-browser.xml
	PULSELINE_SOAK_MINUTES=11 $(BIN)/python -m pytest -q hil_tests --target fast

# Every emulated-Pico test, the minutes-long ones too (make test runs the quick ones).
test-pico: $(STAMP) $(NODE_STAMP)
	$(BIN)/python -m pytest -q -m pico tests

# The hour-long scenarios, in virtual time.
soak: $(STAMP)
	$(BIN)/python -m pytest -q hil_tests --target fast -m slow

$(RP2_STUBS)/.installed: $(STAMP)
	$(BIN)/python -m pip install -q --target $(RP2_STUBS) '$(RP2_STUBS_PIN)'
	@touch $@

$(PICO2_STUBS)/.installed: $(STAMP)
	$(BIN)/python -m pip install -q --target $(PICO2_STUBS) '$(PICO2_STUBS_PIN)'
	@touch $@

$(UNIX_STUBS)/.installed: $(STAMP)
	$(BIN)/python -m pip install -q --target $(UNIX_STUBS) '$(UNIX_STUBS_PIN)'
	@touch $@

lint: $(STAMP) $(RP2_STUBS)/.installed $(PICO2_STUBS)/.installed $(UNIX_STUBS)/.installed
	$(BIN)/ruff check firmware host native tests hil_tests tools setup.py
	$(BIN)/mypy
	MYPYPATH=tools $(BIN)/mypy $(wildcard tools/*.py)
	MYPYPATH=$(RP2_STUBS):firmware $(BIN)/mypy --config-file firmware/mypy-board.ini \
	  --custom-typeshed-dir $(RP2_STUBS) $(FW_RP2)
	MYPYPATH=$(PICO2_STUBS):firmware $(BIN)/mypy --config-file firmware/mypy-board.ini \
	  --custom-typeshed-dir $(PICO2_STUBS) $(FW_RP2)
	MYPYPATH=$(UNIX_STUBS):firmware $(BIN)/mypy --config-file firmware/mypy-board.ini \
	  --custom-typeshed-dir $(UNIX_STUBS) $(wildcard firmware/pulsefw/boards/sim/*.py)

# The main job on a simulated board: deploy with mpremote, capture, save.
demo: $(STAMP)
	$(BIN)/python tools/demo.py

bench: $(STAMP)
	$(BIN)/python tools/bench.py

$(FUZZ_DIR)/fuzz_assembler: native/fuzz_assembler.c native/pulseline_asm.c native/pulseline_asm.h | deps
	@mkdir -p $(FUZZ_DIR)
	clang-14 -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all -DPL_NO_CLONES \
	  -Inative native/fuzz_assembler.c native/pulseline_asm.c -lz -lm -o $@

$(FUZZ_DIR)/corpus/.made: $(STAMP) tests/make_corpus.py
	$(BIN)/python tests/make_corpus.py $(FUZZ_DIR)/corpus
	@touch $@

# A coverage-guided campaign under ASan and UBSan (10 minutes by default).
fuzz: $(FUZZ_DIR)/fuzz_assembler $(FUZZ_DIR)/corpus/.made
	@mkdir -p $(FUZZ_DIR)/findings
	$(FUZZ_DIR)/fuzz_assembler -max_total_time=$(FUZZ_SECONDS) -max_len=65536 -timeout=10 \
	  -print_final_stats=1 -artifact_prefix=$(FUZZ_DIR)/findings/ $(FUZZ_DIR)/corpus

fuzz-smoke:
	$(MAKE) fuzz FUZZ_SECONDS=30

clean:
	rm -rf $(VENV) build dist *.egg-info host/*.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis .pulseline demo-exam
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
	rm -f host/pulseline/_native*.so host/pulseline/_native.c host/pulseline/_native.o
