"""Reference models built from packaged weights or synthesized for tests (no binaries committed)."""
