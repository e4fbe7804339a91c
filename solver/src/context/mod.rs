//! The build context: `.dockerignore`, walking, checksums. (Being written.)
