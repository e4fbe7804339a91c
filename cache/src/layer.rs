//! Layers: writing deterministic tar streams into the store, reading and
//! re-encoding stored layers, applying layer tars onto directories, and
//! unpacked snapshots.
//!
//! - [`TarWriter`] writes entries with deterministic headers;
//!   [`write_layer`] streams one into a store blob (diffID and digest in the
//!   same pass), [`recompress_layer`] re-encodes a stored one for export.
//! - [`open_layer`] reads a stored layer back as a verified tar stream;
//!   [`sniff_archive`] recognises (compressed) tars for ADD.
//! - [`apply_layer`] extracts a tar onto a directory, refusing entries that
//!   would write outside it; [`snapshot`] unpacks a stored layer once into
//!   `snapshots/` as an overlay lowerdir.
//! - [`write_layer_snapshot`] writes a file op's layer as its snapshot only,
//!   with the tar's [`TarSplit`] beside it; [`materialize`] makes the blob
//!   from them when an image needs it (see the `lazy` module).

mod apply;
mod blob;
mod lazy;
mod reader;
mod snapshot;
mod split;
mod tar_writer;

pub(crate) use apply::remove_tree;
pub use apply::{apply_layer, ApplyOptions, ApplyStats, OverlayXattr, Whiteouts};
pub use blob::{
    open_layer, recompress_layer, sniff_archive, write_layer, Compression, LayerDescriptor,
    LayerSink, DOCKER_LAYER_ZSTD,
};
pub use lazy::{
    discard_snapshot, layer_available, materialize, snapshot_origins, write_layer_snapshot,
};
pub(crate) use snapshot::remove_snapshot;
pub use snapshot::{
    snapshot, snapshot_dir, snapshot_info, SnapshotInfo, SNAPSHOT_MARKER, TAR_SPLIT_FILE,
};
pub use tar_writer::{DeviceKind, EntryMeta, Origin, SplitRecord, TarSplit, TarWriter};
