#!/usr/bin/env bash
# Optional system libraries dnd uses when present: OpenBLAS for the model's f32 products
# (crates/dnd-llm/src/blas.rs: 20-40% faster than the built-in `gemm` crate at the model's shapes on
# AVX-512 machines). dnd builds and runs without it; this script installs it from the Debian packages
# where it can (root and apt-get), and says so where it cannot.
set -uo pipefail
if ldconfig -p 2>/dev/null | grep -q 'libopenblas\.so\.0'; then
    exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing OpenBLAS (libopenblas0-pthread) for faster products" >&2
    if DEBIAN_FRONTEND=noninteractive apt-get install -y -q libopenblas0-pthread >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null 2>&1 \
             && DEBIAN_FRONTEND=noninteractive apt-get install -y -q libopenblas0-pthread >/dev/null 2>&1; }; then
        exit 0
    fi
fi
echo "OpenBLAS not installed: dnd runs its products on the built-in gemm crate (slower)" >&2
exit 0
