//! Empty root package: the workspace-level end-to-end tests live in `tests/`.
