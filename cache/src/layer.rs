//! Layers: writing deterministic tar streams into the store, and applying
//! layer tars onto snapshot directories. (Being written.)
