//! What the unit tests of the put and the get share: small options, a
//! deterministic input, a round trip through a [`MemoryFragments`], and where a
//! single-block input is placed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use cairn_core::erasure::{Codec, ErasureParams};
use cairn_core::id::PlacementKey;
use cairn_core::manifest::MIN_SEGMENT_SIZE;

use crate::{
    GetError, GetOptions, GetStats, GetTarget, MemoryFragments, PutOptions, PutReceipt, get,
};

/// Erasure 4+2, the smallest segment, created at 1 000.
pub(crate) fn options() -> PutOptions {
    let mut options = PutOptions::new(ErasureParams::new(4, 2).unwrap(), 1_000);
    options.segment_size = MIN_SEGMENT_SIZE;
    options
}

/// `len` deterministic bytes.
pub(crate) fn data(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

/// Gets the file of `receipt` from `store` whole, at time 2 000.
pub(crate) fn round_trip(
    store: &MemoryFragments,
    receipt: &PutReceipt,
) -> Result<(Vec<u8>, GetStats), GetError> {
    let mut out = Vec::new();
    let stats = get(
        GetTarget::File(receipt.file_id()),
        &mut out,
        store,
        &GetOptions::new(2_000),
    )?;
    Ok((out, stats))
}

/// The placement key of the single block `input` makes (it must fit in one segment).
pub(crate) fn single_block_key(input: &[u8], salt: u64) -> PlacementKey {
    let codec = Codec::new(options().params).unwrap();
    PlacementKey::for_block(&codec.encode(input).unwrap().block_hash(), salt)
}
