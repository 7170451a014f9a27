# dmig — build, test, benchmark, lint.
GO        ?= go
BIN       ?= bin/dmig
# Tests need root (ptrace, userfaultfd on another process, loop devices) and
# run one package at a time: several packages start guests and would fight
# over the two cores.
TESTFLAGS ?= -count=1 -timeout 45m -p 1
BENCHTIME ?= 1x
STATICCHECK ?= honnef.co/go/tools/cmd/staticcheck@v0.8.2

.PHONY: all build test bench lint demo clean guest-image qemu10

all: build

build:
	$(GO) build -o $(BIN) ./cmd/dmig

test: build
	$(GO) test $(TESTFLAGS) ./...

# Benchmarks print custom metrics (faults/s, GB/s, ratios to baselines).
bench: build
	$(GO) test -run '^$$' -bench . -benchtime $(BENCHTIME) -timeout 60m ./...

# unixcheck keeps golang.org/x/sys/unix inside the kernel-facing packages
# (its allowlist says which, and why).
lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) run ./internal/tools/unixcheck
	@test -x "$$($(GO) env GOPATH)/bin/staticcheck" || $(GO) install $(STATICCHECK)
	"$$($(GO) env GOPATH)/bin/staticcheck" ./...

# Debian 12 guest for QEMU runs: base cached in /var/cache/dmig by a hash
# of its recipe, plus this build's dmig as its guest agent (docs/testing.md, "Guest image").
GUEST_IMAGE ?= bin/guest.raw
guest-image: build
	bash vmm/qemu/image/build.sh --dmig $(BIN) $(GUEST_IMAGE)

# QEMU 10.0.2 beside the system's 7.2, in /opt/dmig/qemu10 (docs/qemu.md):
# TestQEMU runs on both, dmig compare's baseline on 10.
qemu10:
	bash contrib/install-qemu10.sh

# The README's first command: a test guest under load migrated on this host
# in hybrid mode (root).
demo: build
	BIN=$(BIN) bash tests/demo.sh

clean:
	rm -rf bin
