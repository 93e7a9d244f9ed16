# llmproxy build, run and test entry points. Every target works on a fresh
# Debian machine with Go: `deps` installs what the tests need.

GO       ?= go
BIN      := bin
PKGS     := ./...
# The suite runs with the race detector; 8m keeps it inside CI's budget.
TESTFLAGS ?= -race -count=1 -timeout 8m

.PHONY: all build run test deps bench bench-quick fuzz vet clean

all: build

build:
	$(GO) build -o $(BIN)/llmproxy ./cmd/llmproxy
	$(GO) build -o $(BIN)/ollamasim ./cmd/ollamasim

# run starts the demo: two simulated nodes behind the proxy on 127.0.0.1:11434.
run:
	$(GO) run ./cmd/llmproxy demo

# deps installs the programs the test suite starts: redis-server for the
# shared-state tests and Chromium for the status page test. It needs root
# or sudo, and does nothing when both are present.
deps:
	@missing=; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
		echo "installing$$missing"; \
		if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
		$$SUDO apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

test: deps
	$(GO) vet $(PKGS)
	$(GO) test $(TESTFLAGS) $(PKGS)

# bench compares llmproxy with a direct connection, nginx and HAProxy on
# 127.0.0.1, runs the failure, scheduler, cache and Go benchmark scenarios
# and rewrites BENCHMARKS.md; it takes about 20 minutes.
# BENCHFLAGS adds benchrun flags, such as -profile for CPU profiles of
# llmproxy in bench/out/profiles.
bench: build
	$(GO) build -o $(BIN)/benchrun ./bench/cmd/benchrun
	$(GO) build -o $(BIN)/llmproxyprof ./bench/cmd/llmproxyprof
	$(GO) build -o $(BIN)/stampsim ./bench/cmd/stampsim
	$(GO) build -o $(BIN)/fasthttpproxy ./bench/cmd/fasthttpproxy
	BENCH_BIN=$(BIN) sh bench/run.sh -bin $(BIN) -out BENCHMARKS.md -command "make bench" \
		-go $(GO) $(BENCHFLAGS)

# bench-quick runs a shorter set in under two minutes for regression
# checks; it prints the report and writes bench/out/quick.md.
bench-quick: build
	$(GO) build -o $(BIN)/benchrun ./bench/cmd/benchrun
	$(GO) build -o $(BIN)/llmproxyprof ./bench/cmd/llmproxyprof
	$(GO) build -o $(BIN)/stampsim ./bench/cmd/stampsim
	$(GO) build -o $(BIN)/fasthttpproxy ./bench/cmd/fasthttpproxy
	BENCH_BIN=$(BIN) sh bench/run.sh -bin $(BIN) -quick -out bench/out/quick.md \
		-command "make bench-quick" $(BENCHFLAGS)

vet:
	$(GO) vet $(PKGS)

clean:
	rm -rf $(BIN)
