# skiff: the two commands are `make run` and `make test` (see README.md).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# pytest workers; the integration suites are independent and run side by side.
JOBS ?= 2

.PHONY: run test system-packages test-packages venv venv-dev proto lint typecheck pytest install-config clean e2e-tools

run: system-packages venv install-config
	exec $(BIN)/skiffd

test: test-packages venv-dev lint typecheck e2e-tools pytest

system-packages:
	deploy/install-packages

test-packages:
	deploy/install-packages --test

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.installed

venv: $(VENV)/.installed

venv-dev: $(VENV)/.installed-dev

# Regenerate the protobuf/gRPC modules and their .pyi type stubs from api/.
proto: venv-dev
	$(BIN)/python -m api.generate

lint: venv-dev
	$(BIN)/ruff check --no-cache .
	$(BIN)/ruff format --no-cache --check .

typecheck: venv-dev
	$(BIN)/mypy

# loadgroup: the Kubernetes node's suite runs on one worker, critest on another.
pytest: venv-dev
	$(BIN)/pytest -n $(JOBS) --dist loadgroup

# kubelet, kube-apiserver, etcd, crictl and critest, built from the Go modules pinned in
# tests/e2e/tools/ into a cache outside the checkout (SKIFF_E2E_TOOLS_CACHE, default
# /var/cache/skiff-e2e-tools); a rebuild happens only when a go.mod or go.sum changes.
e2e-tools: venv-dev
	$(BIN)/python -m tests.e2e.toolchain

# The default config (with metrics on, a drop-in), and a pod network for a fresh node:
# only where none exists yet.
install-config:
	install -d -m 0755 /etc/skiff /etc/skiff/skiff.d /etc/cni/net.d
	[ -e /etc/skiff/skiff.yaml ] || install -m 0644 deploy/skiff.yaml /etc/skiff/skiff.yaml
	[ -e /etc/skiff/skiff.d/metrics.yaml ] || \
		install -m 0644 deploy/skiff.d/metrics.yaml /etc/skiff/skiff.d/metrics.yaml
	[ -n "$$(ls -A /etc/cni/net.d)" ] || \
		install -m 0644 deploy/cni/10-skiff-bridge.conflist /etc/cni/net.d/
	[ -e /etc/crictl.yaml ] || install -m 0644 deploy/crictl.yaml /etc/crictl.yaml

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache

# The image-pull benchmark against containerd's CRI (bench/README.md), as root.
# BENCH_ARGS="--runs 5" to pass options.
.PHONY: bench bench-packages
BENCH_ARGS ?=

bench: bench-packages bench-tools venv-dev
	$(BIN)/python -m bench.pull $(BENCH_ARGS)

# The test packages (registry, busybox) plus the peer runtime, Debian's containerd.
bench-packages: test-packages
	@dpkg-query -W -f='$${Status}' containerd 2>/dev/null | grep -q "install ok installed" || { \
		[ "$$(id -u)" -eq 0 ] || { echo "bench: containerd is missing; run as root" >&2; exit 1; }; \
		echo "bench: installing containerd"; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get update -q && apt-get install -y -q --no-install-recommends containerd; }

# The second peer, containerd 2.x and its runc shim, built from the Go module pinned in
# bench/tools/containerd into the tools cache (as e2e-tools); left out without Go.
.PHONY: bench-tools
bench-tools: venv-dev
	@if ! command -v go >/dev/null; then \
		echo "bench: no go in PATH: containerd 2.x is left out of the comparison"; \
	elif ! $(BIN)/python -m bench.containerd2; then \
		echo "bench: containerd 2.x did not build: it is left out of the comparison"; fi

# The pod sandbox lifecycle benchmark against containerd's CRI (bench/README.md), as root.
# BENCH_ARGS="--pods 100 --parallel 20" to pass options.
.PHONY: bench-sandbox
bench-sandbox: bench-packages bench-tools venv-dev
	$(BIN)/python -m bench.sandbox $(BENCH_ARGS)

# The pod + container lifecycle, List latency and memory benchmark against containerd's
# CRI (bench/README.md), as root. BENCH_ARGS="--pods 100 --parallel 20 --list-pods 50".
.PHONY: bench-lifecycle
bench-lifecycle: bench-packages bench-tools venv-dev
	$(BIN)/python -m bench.lifecycle $(BENCH_ARGS)

# Exec round trips (ExecSync, streaming exec over SPDY and WebSocket) and port-forward
# throughput against containerd's CRI (bench/README.md), as root.
# BENCH_ARGS="--execs 200 --pf-runs 5 --size-mb 100".
.PHONY: bench-streaming
bench-streaming: bench-packages bench-tools venv-dev
	$(BIN)/python -m bench.streaming $(BENCH_ARGS)

# The kubelet-shaped scale benchmark (110 pods x 3 containers, a minute of relists and
# stats lists) against containerd 1.6 and 2.x (bench/README.md), as root.
# BENCH_ARGS="--pods 20 --containers 2 --seconds 20" for a quick one.
.PHONY: bench-scale
bench-scale: bench-packages bench-tools venv-dev
	$(BIN)/python -m bench.scale $(BENCH_ARGS)
