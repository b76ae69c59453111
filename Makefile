# harikube: one static binary, built without cgo (SQLite is modernc.org/sqlite).
SHELL := /bin/bash
GO ?= go
BIN ?= bin/harikube
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
K8S_VERSION := $(shell $(GO) list -m -f '{{.Version}}' k8s.io/kubernetes)
K8S_MAJOR := $(word 1,$(subst ., ,$(patsubst v%,%,$(K8S_VERSION))))
K8S_MINOR := $(word 2,$(subst ., ,$(patsubst v%,%,$(K8S_VERSION))))
BUILD_DATE := $(shell date -u +%Y-%m-%dT%H:%M:%SZ)
VERSION_PKG := k8s.io/component-base/version
# The upstream /version endpoint reports what these say; vCluster reads it.
LDFLAGS := -s -w -extldflags -static \
	-X github.com/harikube/harikube/pkg/version.Version=$(VERSION) \
	-X $(VERSION_PKG).gitVersion=$(K8S_VERSION) \
	-X $(VERSION_PKG).gitMajor=$(K8S_MAJOR) \
	-X $(VERSION_PKG).gitMinor=$(K8S_MINOR) \
	-X $(VERSION_PKG).gitTreeState=clean \
	-X $(VERSION_PKG).buildDate=$(BUILD_DATE) \
	-X k8s.io/client-go/pkg/version.gitVersion=$(K8S_VERSION) \
	-X k8s.io/client-go/pkg/version.gitMajor=$(K8S_MAJOR) \
	-X k8s.io/client-go/pkg/version.gitMinor=$(K8S_MINOR)
export CGO_ENABLED := 0

# Release binaries: `make dist` writes $(DIST)/harikube-<os>-<arch> and SHA256SUMS,
# replacing only those files. `:=`, so that an exported DIST (a distribution's
# name, to some build systems) is not taken for it; `make dist DIST=dir` is.
DIST := dist
DIST_PLATFORMS := linux/amd64 linux/arm64 darwin/amd64 darwin/arm64
DIST_FILES := $(foreach p,$(DIST_PLATFORMS),harikube-$(subst /,-,$(p)))

.PHONY: build dist run test vet fmt clean

build:
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/harikube

# Without cgo Go links on its own: Linux binaries are fully static; macOS
# ones link the system's libraries and frameworks, as macOS requires.
dist:
	mkdir -p '$(DIST)' && cd '$(DIST)' && rm -f $(DIST_FILES) SHA256SUMS
	set -e; for p in $(DIST_PLATFORMS); do \
		GOOS=$${p%/*} GOARCH=$${p#*/} $(GO) build -ldflags '$(LDFLAGS)' -o '$(DIST)'/harikube-$${p%/*}-$${p#*/} ./cmd/harikube; \
	done
	cd '$(DIST)' && if command -v sha256sum >/dev/null; then sha256sum $(DIST_FILES); else shasum -a 256 $(DIST_FILES); fi >SHA256SUMS
	@cat '$(DIST)'/SHA256SUMS

run: build
	$(BIN) server --data-dir $${DATA_DIR:-$$HOME/.harikube}

vet:
	$(GO) vet ./...

test: build
	scripts/test

clean:
	rm -rf bin dist
