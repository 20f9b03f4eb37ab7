#!/usr/bin/env bash
# Builds the pinned Databricks CLI once per machine into the order-pipeline cache, for
# tests/test_bundle.py (which runs its `bundle validate`). `make setup` calls it; the
# version is pinned in the Makefile (DATABRICKS_CLI_VERSION).
#
#   tools/build_databricks_cli.sh VERSION DEST      e.g. 0.298.0 ~/.cache/order-pipeline/databricks-cli-0.298.0/databricks
#
# The CLI is built from its released Go module (github.com/databricks/cli@vVERSION, fetched
# through the Go module proxy and checked against sum.golang.org) with the release build's
# flags (.goreleaser.yaml: CGO off, -trimpath, -s -w, the version stamped in), so setup
# needs Go and nothing else. The binary is written next to DEST and renamed in only once
# it runs, so an interrupted build never leaves a broken CLI behind; a present DEST is kept.
set -euo pipefail

if [[ $# -ne 2 ]]; then
    echo "usage: $0 VERSION DEST" >&2
    exit 2
fi
version=$1
dest=$2
module=github.com/databricks/cli
min_go_minor=25 # go.mod of the CLI: go 1.25

if [[ -x "$dest" ]]; then
    exit 0
fi

missing_go() {
    echo "error: building the Databricks CLI $version (run by the bundle tests) needs Go 1.$min_go_minor or newer on PATH: $1." >&2
    echo "Install Go from https://go.dev/dl/ (or your package manager, e.g. apt-get install golang-go if it is recent enough), then run 'make setup' again." >&2
    exit 1
}

command -v go >/dev/null 2>&1 || missing_go "'go' was not found"
go_version=$(go env GOVERSION)
go_minor=$(sed -E 's/^go1\.([0-9]+).*/\1/' <<<"$go_version")
if [[ ! "$go_minor" =~ ^[0-9]+$ ]] || ((go_minor < min_go_minor)); then
    missing_go "found $go_version"
fi

started=$(date +%s)
echo "building the Databricks CLI v$version from $module with $go_version into $dest (once per machine, 1.5-4 minutes)..."
# Outside any Go module, so no go.mod around the caller's checkout is picked up.
module_dir=$(cd / && go mod download -json "$module@v$version" |
    sed -n -E 's/^[[:space:]]*"Dir": "(.*)",?$/\1/p')
if [[ -z "$module_dir" || ! -f "$module_dir/go.mod" ]]; then
    echo "error: 'go mod download $module@v$version' did not give a module folder" >&2
    exit 1
fi

mkdir -p "$(dirname "$dest")"
partial="$dest.partial.$$"
trap 'rm -f "$partial"' EXIT
# The module cache is read-only: -mod=mod lets the build resolve the dependencies from the
# module's own go.sum without writing next to it.
(
    cd "$module_dir"
    CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath \
        -ldflags "-s -w -X $module/internal/build.buildVersion=$version" \
        -o "$partial" .
)
reported=$("$partial" --version)
if [[ "$reported" != *"v$version"* ]]; then
    echo "error: the built CLI reports '$reported', expected v$version" >&2
    exit 1
fi
mv -f "$partial" "$dest"
echo "$reported: $dest ($(($(date +%s) - started))s)"
