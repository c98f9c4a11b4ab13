//! The fuzz corpus as a stable test: the seeds (real encodings of real values, made
//! here and committed under `fuzz/corpus/<target>/seed-*`), every corpus file replayed
//! through its target, and a count-bounded, seeded mutation of the corpus (bit flips,
//! truncations, insertions, deletions, splices of two inputs) through each target.
//! Deterministic: the same inputs on every run, whatever the machine's speed.
//!
//! After a format change, `CAIRN_WRITE_SEEDS=1 cargo test -p cairn-fuzz-targets --
//! every_seed` rewrites the seeds (and the test says so when they are stale).
//!
//! May use: the decoders' crates, to build the values the seeds encode.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use cairn_core::crypto::{
    FileCertificate, KeyPair, ReclaimCertificate, RootRecord, Signed, StoreReceipt, UploadGrant,
};
use cairn_core::erasure::{Codec, ErasureParams};
use cairn_core::id::{
    BlockHash, FileId, FragmentHash, Id, NodeId, OwnerKey, PlacementKey, Reference, VolumeKey,
};
use cairn_core::manifest::{BlockEntry, DEFAULT_SEGMENT_SIZE, Manifest};
use cairn_core::rng::Rng;
use cairn_daemon::Wire;
use cairn_fs_mount::volume::{DirEntry, Directory, EntryKind, FileContent, PreviousRoot};
use cairn_net::fuzzing::{handshake_frames, one_way_frame, request_frame, response_frame};
use cairn_overlay::{OverlayMessage, Routed};
use cairn_past::{
    NodeAddress, PastRequest, PastResponse, PastRouted, Refusal, RepairAuthority, RepairRequest,
    StoreRequest,
};
use cairn_store::{Charge, FragmentInfo, disk_records};

use super::{TARGETS, Target};

/// Mutated inputs per target in [`mutations_of_the_corpus_never_panic`].
const MUTATIONS_PER_TARGET: usize = 20_000;
/// The seed of the mutation loop; a failure names it with the target and the round.
const MUTATION_SEED: u64 = 0x00c0_ffee_f022;

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus")
}

fn key(seed: u8) -> KeyPair {
    KeyPair::from_secret_bytes(&[seed; 32])
}

fn id(text: &str) -> Id {
    Id::hash(text.as_bytes())
}

fn address(id: NodeId, port: u16) -> NodeAddress {
    NodeAddress {
        id,
        addr: SocketAddr::from(([192, 0, 2, 1], port)),
    }
}

fn fragments(text: &str, n: usize) -> Vec<FragmentHash> {
    (0..n)
        .map(|i| FragmentHash(id(&format!("{text}/{i}"))))
        .collect()
}

fn bytes<T: serde::Serialize>(value: &T) -> Vec<u8> {
    postcard::to_stdvec(value).unwrap()
}

/// The real values every seed is made of.
struct Values {
    grant: Vec<u8>,
    certificate: Vec<u8>,
    receipt: Vec<u8>,
    reclaim: Vec<u8>,
    root: Vec<u8>,
    manifest: Vec<u8>,
    node: NodeId,
    file: FileId,
    block: PlacementKey,
}

fn values() -> Values {
    let owner = key(1);
    let holder = key(2);
    let grant = UploadGrant::new(b"notes.txt", 7, owner.public_key(), 1_700_000_000, 3600);
    let file = grant.file_id;
    let manifest = Manifest {
        file_size: 5000,
        segment_size: DEFAULT_SEGMENT_SIZE,
        params: ErasureParams::DEFAULT,
        blocks: vec![BlockEntry {
            hash: BlockHash(id("block")),
            salt: 0,
            fragments: fragments("block", 6),
        }],
    }
    .encode()
    .unwrap();
    let certificate = FileCertificate {
        file_id: file,
        name_digest: grant.name_digest,
        name_salt: 7,
        manifest_hash: manifest.hash,
        manifest_salt: 0,
        manifest_fragments: fragments("manifest", 6),
        size: 5000,
        k: 4,
        m: 2,
        created_at: 1_700_000_100,
        expires_at: None,
        owner: owner.public_key(),
    };
    let block = PlacementKey::for_block(&BlockHash(id("block")), 0);
    let receipt = StoreReceipt {
        node: holder.public_key().node_id(),
        file_id: file,
        placement_key: block,
        index: 3,
        fragment_hash: fragments("block", 6)[3],
        stored_at: 1_700_000_050,
    };
    let reclaim = ReclaimCertificate::of(&certificate, 1_700_100_000);
    let root = RootRecord {
        volume: VolumeKey(Id(owner.public_key().0)),
        sequence: 12,
        root: file,
        time: 1_700_000_200,
    };
    Values {
        grant: Signed::sign(&owner, grant).unwrap().to_bytes().unwrap(),
        certificate: Signed::sign(&owner, certificate)
            .unwrap()
            .to_bytes()
            .unwrap(),
        receipt: Signed::sign(&holder, receipt).unwrap().to_bytes().unwrap(),
        reclaim: Signed::sign(&owner, reclaim).unwrap().to_bytes().unwrap(),
        root: Signed::sign(&owner, root).unwrap().to_bytes().unwrap(),
        manifest: manifest.bytes,
        node: holder.public_key().node_id(),
        file,
        block,
    }
}

fn past_requests(v: &Values) -> Vec<(&'static str, PastRequest)> {
    let store = StoreRequest {
        grant: v.grant.clone(),
        key: v.block,
        index: 3,
        hash: fragments("block", 6)[3],
        bytes: b"fragment bytes".to_vec(),
        replicas: 6,
    };
    let authority = RepairAuthority {
        certificate: v.certificate.clone(),
        references: vec![v.file],
    };
    let holder = address(v.node, 4000);
    vec![
        ("store", PastRequest::Store(store.clone())),
        ("store-diverted", PastRequest::StoreDiverted(store)),
        (
            "fetch",
            PastRequest::Fetch {
                key: v.block,
                index: 2,
            },
        ),
        ("holdings", PastRequest::Holdings { key: v.block }),
        (
            "put-pointer",
            PastRequest::PutPointer {
                key: v.block,
                index: 1,
                holder,
            },
        ),
        (
            "put-certificate",
            PastRequest::PutCertificate {
                certificate: v.certificate.clone(),
            },
        ),
        (
            "get-certificate",
            PastRequest::GetCertificate { file: v.file },
        ),
        (
            "reclaim",
            PastRequest::Reclaim {
                reclaim: v.reclaim.clone(),
                certificate: v.certificate.clone(),
                keys: vec![v.block],
            },
        ),
        (
            "repair-store",
            PastRequest::RepairStore(RepairRequest {
                authority: authority.clone(),
                key: v.block,
                index: 4,
                hash: fragments("block", 6)[4],
                bytes: vec![0xa5; 40],
            }),
        ),
        (
            "handoff",
            PastRequest::Handoff {
                key: v.block,
                index: 5,
                to: holder,
                authority: authority.clone(),
            },
        ),
        (
            "release",
            PastRequest::Release {
                key: v.block,
                index: 0,
                kept_by: holder,
                authority,
            },
        ),
        (
            "prove",
            PastRequest::Prove {
                key: v.block,
                index: 2,
                nonce: [0x5c; 32],
            },
        ),
        (
            "drop-pointer",
            PastRequest::DropPointer {
                key: v.block,
                index: 1,
            },
        ),
        ("file-status", PastRequest::FileStatus { file: v.file }),
        (
            "forget",
            PastRequest::Forget {
                reclaim: v.reclaim.clone(),
                keys: vec![v.block],
            },
        ),
        (
            "reconcile",
            PastRequest::Reconcile {
                from: v.node,
                keys: vec![v.block, v.block],
            },
        ),
        (
            "summary",
            PastRequest::Summary {
                from: v.node,
                summary: 0xfeed,
                list: Some(vec![(v.block, 99)]),
            },
        ),
        (
            "put-root",
            PastRequest::PutRoot {
                record: v.root.clone(),
            },
        ),
        (
            "get-root",
            PastRequest::GetRoot {
                volume: VolumeKey(id("volume")),
            },
        ),
    ]
}

fn past_responses(v: &Values) -> Vec<(&'static str, PastResponse)> {
    vec![
        (
            "stored",
            PastResponse::Stored {
                receipt: v.receipt.clone(),
                diverted_to: Some(address(v.node, 4001)),
            },
        ),
        (
            "refused-held-root",
            PastResponse::Refused(Refusal::HeldRoot {
                record: v.root.clone(),
            }),
        ),
        (
            "refused-no-room",
            PastResponse::Refused(Refusal::NoRoom {
                size: 1 << 20,
                free: 4096,
            }),
        ),
        (
            "refused-reclaimed",
            PastResponse::Refused(Refusal::Reclaimed(v.file)),
        ),
        (
            "fragment",
            PastResponse::Fragment {
                bytes: b"fragment bytes".to_vec(),
            },
        ),
        (
            "pointer",
            PastResponse::Pointer {
                holder: address(v.node, 4002),
            },
        ),
        ("not-found", PastResponse::NotFound),
        (
            "refused-not-authorised",
            PastResponse::Refused(Refusal::NotAuthorised("not the coordinator".into())),
        ),
        (
            "possession",
            PastResponse::Possession { proof: id("proof") },
        ),
        (
            "holdings",
            PastResponse::Holdings {
                fragments: vec![(3, fragments("block", 6)[3])],
                pointers: vec![(1, address(v.node, 4003))],
                references: vec![v.file],
            },
        ),
        (
            "certificate",
            PastResponse::Certificate {
                certificate: Some(v.certificate.clone()),
            },
        ),
        (
            "reclaimed",
            PastResponse::Reclaimed {
                fragments: 6,
                bytes: 8000,
            },
        ),
        (
            "file-status",
            PastResponse::FileStatus {
                certificate: Some(v.certificate.clone()),
                tombstone: Some(v.reclaim.clone()),
            },
        ),
        ("summary-known", PastResponse::SummaryKnown { known: true }),
        (
            "root",
            PastResponse::Root {
                record: Some(v.root.clone()),
            },
        ),
    ]
}

fn overlay_messages(v: &Values) -> Vec<(&'static str, OverlayMessage)> {
    let ids: Vec<NodeId> = (0..4).map(|i| key(10 + i).public_key().node_id()).collect();
    vec![
        (
            "route-lookup",
            OverlayMessage::Route {
                hop_id: 77,
                key: v.block.0,
                hops: 2,
                body: Routed::Lookup {
                    origin: ids[0],
                    tag: 0x1234_5678_9abc,
                    payload: bytes(&PastRouted::Locate { count: 6 }),
                },
            },
        ),
        (
            "route-join",
            OverlayMessage::Route {
                hop_id: 1,
                key: ids[1].0,
                hops: 0,
                body: Routed::Join { joiner: ids[1] },
            },
        ),
        (
            "join-reply",
            OverlayMessage::JoinReply {
                entries: ids.clone(),
                neighbours: ids[..2].to_vec(),
                leaf_set: Some(ids[2..].to_vec()),
            },
        ),
        ("ping", OverlayMessage::Ping { nonce: 300 }),
        ("announce", OverlayMessage::Announce { rtt_us: 1500 }),
        (
            "leaf-set",
            OverlayMessage::LeafSet {
                left: ids[..2].to_vec(),
                right: ids[2..].to_vec(),
            },
        ),
        (
            "row",
            OverlayMessage::Row {
                row: 3,
                entries: ids,
            },
        ),
        ("leave", OverlayMessage::Leave),
    ]
}

/// Every seed: `(target, name, bytes)`.
fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let v = values();
    let mut out: Vec<(&'static str, String, Vec<u8>)> = Vec::new();
    let mut add = |target: &'static str, name: &str, data: Vec<u8>| {
        out.push((target, format!("seed-{name}"), data));
    };
    let requests = past_requests(&v);
    let responses = past_responses(&v);
    let messages = overlay_messages(&v);
    for (name, request) in &requests {
        add("past_request", name, bytes(request));
    }
    for (name, response) in &responses {
        add("past_response", name, bytes(response));
    }
    for (name, message) in &messages {
        add("overlay_message", name, bytes(message));
    }
    add(
        "past_routed",
        "locate",
        bytes(&PastRouted::Locate { count: 6 }),
    );

    // Frames: one per kind of frame and message, and one stream of several.
    let located = Wire::Located {
        tag: 9,
        nodes: vec![address(v.node, 4000)],
    };
    let overlay = Wire::Overlay {
        msg: messages[0].1.clone(),
        addresses: vec![address(v.node, 4000)],
    };
    let request = request_frame(5, Wire::Past(requests[0].1.clone())).unwrap();
    let answer = response_frame(5, Ok(Wire::PastReply(responses[0].1.clone()))).unwrap();
    let refusal = response_frame::<Wire>(6, Err("too busy".into())).unwrap();
    let one_way = one_way_frame(overlay).unwrap();
    add("frames", "request-store", request.clone());
    add("frames", "answer-stored", answer.clone());
    add("frames", "answer-error", refusal.clone());
    add("frames", "overlay", one_way.clone());
    add("frames", "located", one_way_frame(located).unwrap());
    add(
        "frames",
        "stream",
        [request, one_way, answer, refusal].concat(),
    );
    let mut shake = handshake_frames(
        &key(3),
        [0x11; 32],
        SocketAddr::from(([192, 0, 2, 7], 7000)),
        &[0x22; 32],
    )
    .unwrap();
    add("handshake", "hello-proof", shake.clone());
    shake.extend(request_frame(1, Wire::Past(requests[2].1.clone())).unwrap());
    add("handshake", "hello-proof-fetch", shake);

    add("upload_grant", "grant", v.grant.clone());
    add("file_certificate", "certificate", v.certificate.clone());
    add("store_receipt", "receipt", v.receipt.clone());
    add("reclaim_certificate", "reclaim", v.reclaim.clone());
    add("root_record", "root", v.root.clone());

    add("manifest", "one-block", v.manifest.clone());
    let empty = Manifest {
        file_size: 0,
        segment_size: DEFAULT_SEGMENT_SIZE,
        params: ErasureParams::new(3, 7).unwrap(),
        blocks: Vec::new(),
    };
    add("manifest", "empty", empty.encode().unwrap().bytes);
    let params = ErasureParams::DEFAULT;
    let padded_len = params.fragment_len(v.manifest.len()) * usize::from(params.k());
    let mut block = vec![4u8, 2];
    block.extend_from_slice(&v.manifest);
    block.resize(2 + padded_len, 0);
    add("manifest_block", "one-block", block);

    // A block of 4+2 as a get is offered it: all data fragments; one data fragment
    // missing (rebuilt from parity); a manifest block (length unknown).
    let codec = Codec::new(ErasureParams::DEFAULT).unwrap();
    let encoded = codec
        .encode(b"a block of a file, cut into four data fragments")
        .unwrap();
    let fragment = |index: u16, missing: bool| {
        let bytes = encoded.fragments().nth(usize::from(index)).unwrap().bytes;
        let size = bytes.len() as u8 | if missing { 0x80 } else { 0 };
        [&[index as u8, size][..], bytes].concat()
    };
    let offer = |index: u16| fragment(index, false);
    let length = (encoded.block_len() as u16).to_be_bytes();
    let known = [&[4u8, 2, 1][..], &length[..]].concat();
    add(
        "erasure_block",
        "all-data",
        [known.clone(), offer(0), offer(1), offer(2), offer(3)].concat(),
    );
    add(
        "erasure_block",
        "rebuilt",
        [
            known,
            offer(0),
            fragment(1, true),
            offer(2),
            offer(3),
            offer(4),
        ]
        .concat(),
    );
    add(
        "erasure_block",
        "unknown-length",
        [
            vec![4, 2, 0],
            offer(5),
            offer(1),
            offer(2),
            offer(3),
            fragment(0, true),
        ]
        .concat(),
    );

    let directory = Directory {
        previous: Some(PreviousRoot {
            sequence: 11,
            root: FileId(id("previous")),
            time: 9,
        }),
        entries: vec![
            DirEntry {
                name: "a.txt".into(),
                kind: EntryKind::File(FileContent::Inline(b"hello".to_vec())),
                mode: 0o644,
                mtime_secs: 1_700_000_000,
                mtime_nanos: 5,
            },
            DirEntry {
                name: "big".into(),
                kind: EntryKind::File(FileContent::Stored {
                    file: v.file,
                    size: 5000,
                }),
                mode: 0o600,
                mtime_secs: -1,
                mtime_nanos: 999_999_999,
            },
            DirEntry {
                name: "link".into(),
                kind: EntryKind::Symlink("a.txt".into()),
                mode: 0o777,
                mtime_secs: 0,
                mtime_nanos: 0,
            },
            DirEntry {
                name: "sub".into(),
                kind: EntryKind::Dir(FileId(id("sub"))),
                mode: 0o755,
                mtime_secs: 2,
                mtime_nanos: 0,
            },
        ],
    };
    add("directory", "root", directory.encode());
    add("directory", "empty", Directory::default().encode());

    let hash = fragments("block", 6)[3];
    let with = |selector: u8, record: &[u8]| [&[selector][..], record].concat();
    add(
        "disk_records",
        "fragment-key",
        with(0, &disk_records::fragment_key(&v.block, 3)),
    );
    add(
        "disk_records",
        "reference-key",
        with(1, &disk_records::reference_key(&v.block, &v.file)),
    );
    let info = FragmentInfo {
        index: 0,
        hash,
        len: 250_000,
    };
    add(
        "disk_records",
        "fragment-record",
        with(2, &disk_records::encode_fragment_record(&info)),
    );
    add(
        "disk_records",
        "pointer",
        with(3, &[&[1u8][..], v.node.as_bytes()].concat()),
    );
    add(
        "disk_records",
        "body-name",
        with(4, disk_records::body_name(&v.block, 3, &hash).as_bytes()),
    );
    add(
        "disk_records",
        "certificate",
        with(5, &[&[1u8][..], &v.certificate].concat()),
    );
    add(
        "disk_records",
        "tombstone",
        with(6, &[&[1u8][..], &v.reclaim].concat()),
    );
    add(
        "disk_records",
        "root",
        with(6, &[&[1u8][..], &v.root].concat()),
    );

    let owner = OwnerKey(Id(key(1).public_key().0));
    add(
        "disk_records",
        "charge-key",
        with(7, &disk_records::charge_key(&v.block, 3, &owner)),
    );
    let charge = Charge {
        owner,
        file: v.file,
        len: 250_000,
        uncertified_until: Some(1_700_003_600),
    };
    let record = [&[1u8][..], &disk_records::encode_charge(&charge)].concat();
    add("disk_records", "charge", with(8, &record));

    add(
        "reference",
        "file",
        Reference::File(v.file).to_string().into_bytes(),
    );
    add(
        "reference",
        "volume",
        Reference::Volume(VolumeKey(id("volume")))
            .to_string()
            .into_bytes(),
    );
    add("reference", "id", v.block.0.to_string().into_bytes());
    add(
        "reference",
        "hex",
        cairn_api::encode_hex(&v.receipt).into_bytes(),
    );
    out
}

fn target(name: &str) -> Target {
    TARGETS
        .iter()
        .find(|(target, _)| *target == name)
        .map(|(_, run)| *run)
        .unwrap_or_else(|| panic!("no target {name}"))
}

/// The corpus on disk: target → its files' bytes, by file name.
fn corpus() -> BTreeMap<String, BTreeMap<String, Vec<u8>>> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(corpus_dir()).unwrap() {
        let dir = entry.unwrap().path();
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let mut files = BTreeMap::new();
        for file in std::fs::read_dir(&dir).unwrap() {
            let path = file.unwrap().path();
            let file_name = path.file_name().unwrap().to_string_lossy().into_owned();
            files.insert(file_name, std::fs::read(&path).unwrap());
        }
        out.insert(name, files);
    }
    out
}

#[test]
fn every_seed_decodes_and_is_committed_to_the_corpus() {
    let write = std::env::var_os("CAIRN_WRITE_SEEDS").is_some();
    let mut stale = Vec::new();
    for (target_name, name, data) in seeds() {
        assert!(
            target(target_name)(&data),
            "seed {target_name}/{name} does not decode"
        );
        let path = corpus_dir().join(target_name).join(&name);
        if write {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &data).unwrap();
        } else if std::fs::read(&path).ok().as_deref() != Some(&data[..]) {
            stale.push(format!("{target_name}/{name}"));
        }
    }
    assert!(
        stale.is_empty(),
        "seeds missing or stale in fuzz/corpus (a format changed?): {stale:?}; \
         rewrite them with CAIRN_WRITE_SEEDS=1 cargo test -p cairn-fuzz-targets -- every_seed"
    );
}

#[test]
fn every_corpus_file_replays_through_its_target() {
    let corpus = corpus();
    for (name, _) in TARGETS {
        assert!(
            corpus.get(*name).is_some_and(|files| !files.is_empty()),
            "fuzz/corpus/{name} is missing or empty"
        );
    }
    let mut total = 0;
    for (name, files) in &corpus {
        let run = target(name);
        for (file, data) in files {
            if catch_unwind(AssertUnwindSafe(|| run(data))).is_err() {
                panic!("fuzz/corpus/{name}/{file} panics its target");
            }
            total += data.len();
        }
    }
    // The corpus is committed: keep it small.
    assert!(total < 2 << 20, "the corpus holds {total} bytes");
}

/// One mutation of `input`, with `other` (another input of the same target) for
/// splices. Every mutation keeps the input under 64 KiB.
fn mutate(rng: &mut Rng, input: &mut Vec<u8>, other: &[u8]) {
    let len = input.len();
    let pos = |rng: &mut Rng, len: usize| rng.below(len as u64 + 1) as usize;
    match rng.below(8) {
        0 if len > 0 => {
            let at = rng.below(len as u64) as usize;
            input[at] ^= 1 << rng.below(8);
        }
        1 => input.truncate(pos(rng, len)),
        2 => {
            let at = pos(rng, len);
            let count = 1 + rng.below(8) as usize;
            let inserted = rng.bytes(count);
            input.splice(at..at, inserted);
        }
        3 if len > 0 => {
            let from = rng.below(len as u64) as usize;
            let to = from + 1 + rng.below((len - from) as u64).min(16) as usize;
            input.drain(from..to.min(len));
        }
        4 => {
            // Splice: a head of this input, a tail of the other.
            let head = pos(rng, len);
            let tail = pos(rng, other.len());
            input.truncate(head);
            input.extend_from_slice(&other[tail..]);
        }
        5 if len > 0 => {
            // Values at the edges: lengths, counts, tags, varints.
            const EDGES: [u8; 6] = [0x00, 0x01, 0x7f, 0x80, 0xfe, 0xff];
            let at = rng.below(len as u64) as usize;
            input[at] = EDGES[rng.below(EDGES.len() as u64) as usize];
        }
        6 if len > 0 => {
            // A long varint (a hostile length or count) somewhere.
            let at = pos(rng, len);
            let count = 1 + rng.below(10) as usize;
            input.splice(at..at, std::iter::repeat_n(0xff, count).chain([0x0f]));
        }
        _ if len > 0 => {
            // Duplicate a chunk (a repeated element, a second frame).
            let from = rng.below(len as u64) as usize;
            let to = (from + 1 + rng.below(64) as usize).min(len);
            let chunk = input[from..to].to_vec();
            let at = pos(rng, len);
            input.splice(at..at, chunk);
        }
        _ => input.extend(rng.bytes(4)),
    }
    input.truncate(64 * 1024);
}

#[test]
fn mutations_of_the_corpus_never_panic() {
    let corpus = corpus();
    for (name, run) in TARGETS {
        let inputs: Vec<&Vec<u8>> = corpus.get(*name).map(|f| f.values().collect()).unwrap();
        let mut rng = Rng::new(MUTATION_SEED ^ Id::hash(name.as_bytes()).0[0] as u64);
        let mut decoded = 0;
        for round in 0..MUTATIONS_PER_TARGET {
            let pick = |rng: &mut Rng| inputs[rng.below(inputs.len() as u64) as usize];
            let mut input = pick(&mut rng).clone();
            let other = pick(&mut rng);
            for _ in 0..1 + rng.below(4) {
                mutate(&mut rng, &mut input, other);
            }
            match catch_unwind(AssertUnwindSafe(|| run(&input))) {
                Ok(true) => decoded += 1,
                Ok(false) => {}
                Err(_) => panic!(
                    "target {name} panics on mutation round {round} (seed {MUTATION_SEED:#x}): \
                     input {:02x?}",
                    input
                ),
            }
        }
        // Not a check of the decoders: a sign that the mutations reach past the first
        // byte (most keep decoding, since many fields take any value).
        println!("{name}: {decoded} of {MUTATIONS_PER_TARGET} mutated inputs decoded");
    }
}
