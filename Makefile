# The README's commands. Both work on a fresh Debian 12 / Raspberry Pi OS 12 machine:
# they install the system packages they need, create .venv and install into it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
ARGS ?=
# On a Pi, picamera2 and libcamera come from apt: let the venv see them. Elsewhere keep the
# venv isolated so that stray system packages (pytest plugins) cannot leak into the tests.
VENV_FLAGS := $(shell [ -d /usr/lib/python3/dist-packages/picamera2 ] && echo --system-site-packages)

.PHONY: run test lint bench clean system-deps

# System packages: venv support (what make run needs).
system-deps:
	@missing=""; \
	$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || missing="$$missing python3-venv"; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq $$missing; \
	fi

$(BIN)/python:
	$(MAKE) system-deps
	$(PYTHON) -m venv $(VENV_FLAGS) $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.run-stamp: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.test-stamp: pyproject.toml | $(BIN)/python
	$(MAKE) system-deps
	@# Debian's Chromium: the tests play clips in a real browser. Debian's mosquitto: the
	@# sidecar's tests run an MQTT broker with mutual TLS. systemd-analyze checks the units.
	@# OpenSSH's server: pitsctl's tests install a camera over ssh on 127.0.0.1.
	@# Avahi: the mDNS test runs avahi-daemon in a network namespace of its own.
	@# debootstrap and qemu-user-static: the emulated-Pi tests (armhf/arm64/armel chroots).
	@# libcap headers: python-prctl, which picamera2 imports, compiles against them.
	@missing=""; command -v chromium >/dev/null || missing="$$missing chromium"; \
	[ -e /usr/include/sys/capability.h ] || missing="$$missing libcap-dev"; \
	command -v debootstrap >/dev/null || missing="$$missing debootstrap"; \
	[ -e /usr/share/binfmts/qemu-arm ] || missing="$$missing qemu-user-static"; \
	[ -x /usr/sbin/mosquitto ] || missing="$$missing mosquitto"; \
	command -v systemd-analyze >/dev/null || missing="$$missing systemd"; \
	[ -x /usr/sbin/sshd ] || missing="$$missing openssh-server"; \
	[ -x /usr/sbin/avahi-daemon ] || missing="$$missing avahi-daemon"; \
	command -v ip >/dev/null || missing="$$missing iproute2"; \
	command -v ssh >/dev/null || missing="$$missing openssh-client"; \
	command -v openssl >/dev/null || missing="$$missing openssl"; \
	[ -x /usr/bin/python3 ] && /usr/bin/python3 -c 'import ensurepip' 2>/dev/null || \
		missing="$$missing python3-venv"; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi
	$(BIN)/python -m pip install -q -e '.[test]'
	@# Installed, picamera2 is the camera stack the daemon insists on: it lives in the camera
	@# tests' own environments (tests/Makefile), never here.
	$(BIN)/python -m pip uninstall -q -y picamera2 2>/dev/null || true
	touch $@ $(VENV)/.run-stamp

# What the daemon writes on its embedded defaults (clips, stills, the four event files, the
# page's saved changes) goes into .run/, not all over the checkout.
run: $(VENV)/.run-stamp
	PINTHESKY_STATE_DIR="$${PINTHESKY_STATE_DIR:-.run}" $(BIN)/pinthesky $(ARGS)

lint: $(VENV)/.test-stamp
	$(BIN)/ruff check pinthesky tests bench images docs
	$(BIN)/ruff format --check pinthesky tests bench images docs
	$(BIN)/mypy

test: lint
	$(MAKE) -C tests picamera2-envs
	@# Home Assistant Core, which tests/test_homeassistant_core.py runs, in its own venv.
	$(MAKE) -C tests homeassistant
	$(BIN)/pytest -q
	@# The camera tests, on picamera2's own code, against the oldest supported picamera2 and
	@# the newest, each in its own venv under .cache/ (tests/Makefile).
	$(MAKE) -C tests picamera2

bench: $(VENV)/.test-stamp
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) .cache .mypy_cache .ruff_cache .pytest_cache
