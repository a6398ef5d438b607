#!/usr/bin/env bash
# The test command (README, .ci/run): formatting and lints first (cheap, and a failure there needs no
# model), then fetch and verify the pinned assets into the cache, then every test, including those on
# the real models (DND_REQUIRE_ASSETS=1 makes a missing asset a failure).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
# A test fixture that git ignores passes here and is missing from CI's fresh clone.
if ignored=$(git ls-files --others --ignored --exclude-standard -- 'crates/*/tests/fixtures/*' 2>/dev/null) \
    && [ -n "$ignored" ]; then
    echo "test fixtures ignored by git (commit them or fix .gitignore):" >&2
    echo "$ignored" >&2
    exit 1
fi
scripts/system-deps.sh
cargo clippy --release --locked --workspace --all-targets -- -D warnings
cargo build --release --locked --bin dnd
./target/release/dnd fetch --all
DND_REQUIRE_ASSETS=1 cargo test --release --locked --workspace
