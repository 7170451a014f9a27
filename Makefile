# dmig — build, test, benchmark, lint.
GO        ?= go
BIN       ?= bin/dmig
# Tests need root (ptrace, userfaultfd on another process, loop devices) and
# run one package at a time: several packages start guests and would fight
# over the two cores.
TESTFLAGS ?= -count=1 -timeout 45m -p 1
BENCHTIME ?= 1x
STATICCHECK ?= honnef.co/go/tools/cmd/staticcheck@v0.8.2

.PHONY: all build test test-race bench lint demo demo-plain clean guest-image fault-test fault-soak qemu10

all: build

build:
	$(GO) build -o $(BIN) ./cmd/dmig

test: build test-race
	$(GO) test $(TESTFLAGS) ./...
	$(MAKE) fault-test

# The packages with concurrency, under the race detector.
RACE_PKGS ?= ./wire ./precopy ./dbrestore ./uffd ./layout ./internal/keeper ./internal/pages ./internal/drain ./internal/bandwidth ./internal/ctl
test-race:
	$(GO) test -race -count=1 -timeout 20m $(RACE_PKGS)

# Fault injection (docs/testing.md, "Fault injection"): migrations of test
# guests, each with one fault at a random instant, as root; make test runs
# fault-test (200), make fault-soak 1000. DMIG_FAULT_SEED /
# DMIG_FAULT_RUN_SEED reproduce runs; FAULT_PARALLEL runs at once.
FAULT_PARALLEL ?= 3
fault-test: export DMIG_FAULT_RUNS ?= 200
fault-soak: export DMIG_FAULT_RUNS ?= 1000
FAULT_TEST = cd tests && DMIG_FAULT_BIN=$(abspath $(BIN)) $(GO) test -tags faultinject -count=1 \
	-run '^TestFaultInject$$' -parallel $(FAULT_PARALLEL)
fault-test: build
	$(FAULT_TEST) -timeout 30m
fault-soak: build
	$(FAULT_TEST) -timeout 150m

# Benchmarks print custom metrics (faults/s, GB/s, ratios to baselines).
bench: build
	$(GO) test -run '^$$' -bench . -benchtime $(BENCHTIME) -timeout 60m ./...

# unixcheck keeps golang.org/x/sys/unix inside the kernel-facing packages
# (its allowlist says which, and why).
lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) vet -tags faultinject ./tests/
	$(GO) run ./internal/tools/unixcheck
	@test -x "$$($(GO) env GOPATH)/bin/staticcheck" || $(GO) install $(STATICCHECK)
	"$$($(GO) env GOPATH)/bin/staticcheck" ./...
	"$$($(GO) env GOPATH)/bin/staticcheck" -tags faultinject ./tests/

# Debian 12 guest for QEMU runs: base cached in /var/cache/dmig by a hash
# of its recipe, plus this build's dmig as its guest agent (docs/testing.md, "Guest image").
GUEST_IMAGE ?= bin/guest.raw
guest-image: build
	bash vmm/qemu/image/build.sh --dmig $(BIN) $(GUEST_IMAGE)

# QEMU 10.0.2 beside the system's 7.2, in /opt/dmig/qemu10 (docs/qemu.md):
# TestQEMU runs on both, dmig compare's baseline on 10.
qemu10:
	bash contrib/install-qemu10.sh

# The README's first command (root, under a minute): a database-like test
# guest migrated between two network namespaces over a 1 Gbit/s veth, once
# in precopy and once in hybrid mode with storage references, the figures
# side by side (tests/demo.sh; TestDemo checks its output).
DEMOTABLE ?= bin/demotable
demo: build
	$(GO) build -o $(DEMOTABLE) ./internal/tools/demotable
	BIN=$(BIN) TABLE=$(DEMOTABLE) bash tests/demo.sh

# A synthetic guest with no database and no storage references, migrated on
# loopback in hybrid mode (root): the engine alone, without a shaped link.
demo-plain: build
	BIN=$(BIN) bash tests/demo-plain.sh

clean:
	rm -rf bin
