# The two commands of the README: `make demo` and `make test`. Both do all set-up themselves.
ORT_LIB := third_party/ort/libonnxruntime.so.1
export ORTALIGN_ORT_LIB := $(CURDIR)/$(ORT_LIB)

.PHONY: setup build demo test bench

setup:
	@./scripts/setup-ort.sh

build: setup
	go build -o bin/ortalign ./cmd/ortalign

demo: build
	./scripts/demo.sh

test: setup
	go vet ./...
	go test -count=1 -timeout 20m ./...

bench: setup
	./scripts/bench.sh
