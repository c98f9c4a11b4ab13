//! A network of [`Holder`]s in one test: every PAST operation driven through the same
//! answers real nodes give, synchronously, with no socket and no clock.
//!
//! Owns: [`TestNet`] (nodes, each honest, down, or lying in one way; a holder's
//! maintenance orders are checked and applied, and its reclaims passed on to diverted
//! copies, as the daemon does) and [`run`] (drives
//! an [`Operation`] to its decision, first command first, every pace granted at once).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;

use cairn_core::crypto::{
    FileCertificate, KeyPair, ReclaimCertificate, Signed, StoreReceipt, UploadGrant,
};
use cairn_core::erasure::{Codec, ErasureParams, fragment_hash};
use cairn_core::id::{FileId, FragmentHash, Id, ManifestHash, NodeId, PlacementKey};
use cairn_store::{MemoryStore, NodeStore};

use crate::answer::Answer;
use crate::authority::RingView;
use crate::divert::ReplicaDiversion;
use crate::insert::{BlockInsert, OwnedFragments};
use crate::maintenance::OrderCheck;
use crate::operation::{Command, Input, Operation, Progress};
use crate::reclaim::ReclaimForward;
use crate::records::RecordPublish;
use crate::{Holder, NodeAddress, PastConfig, PastRequest, PastResponse, closest};

/// The time every test node lives at.
pub const NOW: u64 = 1_800_000_000;

/// The id a client outside the ring asks with (a gateway's put or get).
pub const CLIENT: NodeId = NodeId(Id([0xc1; 32]));

/// The nonce every order check of a test net proves possession over.
const NONCE: [u8; 32] = [0x5a; 32];

/// How a test node behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behaviour {
    /// Answers as the real holder does.
    Honest,
    /// Gone, and known to be: locates leave it out, and it never answers.
    Down,
    /// Crashed a moment ago: locates still name it (nobody noticed yet), but it never
    /// answers.
    Silent,
    /// Signs receipts for index 0 whatever it was asked to store (a store or a repair
    /// store), and stores nothing.
    ForgesReceipts,
    /// Refuses every root record offered as stale: with the (older) record it holds as
    /// "proof" if it holds one, with a bare claim of the highest sequence otherwise.
    ClaimsRootConflicts,
}

/// One test node.
pub struct TestNode {
    /// Its id and a made-up address.
    pub address: NodeAddress,
    /// Its holder over an in-memory store.
    pub holder: Holder<MemoryStore>,
    /// How it behaves.
    pub behaviour: Behaviour,
    key: Arc<KeyPair>,
}

/// A network of test nodes.
pub struct TestNet {
    /// The nodes, in the order made.
    pub nodes: Vec<TestNode>,
}

impl TestNet {
    /// `capacities.len()` honest nodes with these capacities.
    pub fn new(capacities: &[u64]) -> TestNet {
        let nodes = capacities
            .iter()
            .enumerate()
            .map(|(i, capacity)| {
                let seed = u8::try_from(i + 1).unwrap_or(u8::MAX);
                let key = Arc::new(KeyPair::from_secret_bytes(&[seed; 32]));
                let id = key.public_key().node_id();
                let port = 4000 + u16::from(seed);
                TestNode {
                    address: NodeAddress {
                        id,
                        addr: SocketAddr::from(([127, 0, 0, 1], port)),
                    },
                    holder: Holder::new(
                        MemoryStore::new(*capacity),
                        Arc::clone(&key),
                        PastConfig::default(),
                    ),
                    behaviour: Behaviour::Honest,
                    key,
                }
            })
            .collect();
        TestNet { nodes }
    }

    /// `count` nodes of `capacity` bytes, except the `rank`-th closest to `key`, which
    /// has only `small` (a node's id depends only on its place in the order made).
    pub fn with_one_small(
        count: usize,
        capacity: u64,
        key: &PlacementKey,
        rank: usize,
        small: u64,
    ) -> TestNet {
        let mut capacities = vec![capacity; count];
        let probe = TestNet::new(&capacities);
        let target = probe.closest(&key.0, count).get(rank).map(|n| n.id);
        if let Some(position) = probe
            .nodes
            .iter()
            .position(|n| Some(n.address.id) == target)
        {
            capacities[position] = small;
        }
        TestNet::new(&capacities)
    }

    /// The node with this id.
    pub fn node(&self, id: &NodeId) -> &TestNode {
        self.nodes
            .iter()
            .find(|n| n.address.id == *id)
            .unwrap_or_else(|| panic!("no test node {id:?}"))
    }

    /// The fragments the node with this id holds under `at`: index and bytes.
    pub fn held(&self, id: &NodeId, at: &PlacementKey) -> Vec<(u16, Vec<u8>)> {
        let store = self.node(id).holder.store();
        let infos = store.fragments_under(at).unwrap_or_default();
        infos
            .into_iter()
            .filter_map(|info| Some((info.index, store.get_fragment(at, info.index).ok()??)))
            .collect()
    }

    /// Sets how the node with this id behaves.
    pub fn set(&mut self, id: &NodeId, behaviour: Behaviour) {
        if let Some(node) = self.nodes.iter_mut().find(|n| n.address.id == *id) {
            node.behaviour = behaviour;
        }
    }

    fn address_of(&self, id: &NodeId) -> Option<NodeAddress> {
        self.nodes
            .iter()
            .find(|n| n.address.id == *id)
            .map(|n| n.address)
    }

    /// The `count` live nodes closest to `key`, closest first: what a locate answers.
    pub fn closest(&self, key: &Id, count: usize) -> Vec<NodeAddress> {
        let live = self
            .nodes
            .iter()
            .filter(|n| n.behaviour != Behaviour::Down)
            .map(|n| n.address.id);
        closest(key, live, count)
            .iter()
            .filter_map(|id| self.address_of(id))
            .collect()
    }

    /// `to`'s answer to `request` from a client outside the ring ([`CLIENT`]).
    pub fn ask(&self, to: &NodeAddress, request: PastRequest) -> Result<PastResponse, String> {
        self.ask_from(CLIENT, to, request)
    }

    /// `to`'s answer to `request` sent by `from`. Every node knows the whole ring.
    pub fn ask_from(
        &self,
        from: NodeId,
        to: &NodeAddress,
        request: PastRequest,
    ) -> Result<PastResponse, String> {
        let node = self.node(&to.id);
        match node.behaviour {
            Behaviour::Down | Behaviour::Silent => {
                return Err(format!("node {:?} does not answer", to.id));
            }
            Behaviour::ForgesReceipts => {
                let forged = match &request {
                    PastRequest::Store(store) => {
                        Some((FileId(Id::hash(&store.grant)), store.key, store.hash))
                    }
                    PastRequest::RepairStore(repair) => {
                        let file = repair.authority.references.first().copied();
                        Some((file.unwrap_or(FileId(Id::ZERO)), repair.key, repair.hash))
                    }
                    _ => None,
                };
                if let Some((file_id, placement_key, fragment_hash)) = forged {
                    let receipt = StoreReceipt {
                        node: to.id,
                        file_id,
                        placement_key,
                        index: 0,
                        fragment_hash,
                        stored_at: NOW,
                    };
                    let receipt = Signed::sign(&node.key, receipt)
                        .and_then(|s| s.to_bytes())
                        .map_err(|e| e.to_string())?;
                    return Ok(PastResponse::Stored {
                        receipt,
                        diverted_to: None,
                    });
                }
            }
            Behaviour::ClaimsRootConflicts => {
                if let PastRequest::PutRoot { record } = &request {
                    let volume = crate::check_root(record).map(|r| r.body.volume);
                    let held = volume
                        .ok()
                        .and_then(|v| node.holder.get_root(&v).ok().flatten());
                    let refusal = match held {
                        Some(record) => crate::Refusal::HeldRoot { record },
                        None => crate::Refusal::StaleRoot {
                            held_sequence: u64::MAX,
                        },
                    };
                    return Ok(PastResponse::Refused(refusal));
                }
            }
            Behaviour::Honest => {}
        }
        let members: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|n| n.behaviour != Behaviour::Down)
            .map(|n| n.address.id)
            .collect();
        let ring = RingView {
            me: to.id,
            members: &members,
        };
        match node
            .holder
            .answer(request, from, NOW, ring, |id| self.address_of(id))
        {
            Answer::Reply(response) => Ok(response),
            Answer::Divert {
                request,
                size,
                free,
            } => {
                // The diverting node's view: every live node.
                let live = self.closest(&request.key.0, usize::MAX);
                let (key, index) = (request.key, request.index);
                let diversion = ReplicaDiversion::from_view(
                    request,
                    size,
                    free,
                    to.id,
                    live.iter().map(|n| n.id),
                    |id| self.address_of(id),
                );
                Ok(match run_at(self, to.id, diversion) {
                    Ok(diverted) => {
                        let _ = node.holder.put_pointer(&key, index, &diverted.to.id);
                        PastResponse::Stored {
                            receipt: diverted.receipt,
                            diverted_to: Some(diverted.to),
                        }
                    }
                    Err(refusal) => PastResponse::Refused(refusal),
                })
            }
            Answer::Order(order) => Ok(match run_at(self, to.id, OrderCheck::new(order, NONCE)) {
                Ok(change) => node.holder.apply(&change),
                Err(refusal) => PastResponse::Refused(refusal),
            }),
            Answer::Elsewhere(PastRequest::Reclaim {
                reclaim,
                certificate,
                keys,
            }) => Ok(
                match node.holder.reclaim(&reclaim, &certificate, &keys, NOW) {
                    Ok(here) => run_at(
                        self,
                        to.id,
                        ReclaimForward::new(reclaim, certificate, here, |id| self.address_of(id)),
                    )
                    .response(),
                    Err(refusal) => PastResponse::Refused(refusal),
                },
            ),
            Answer::Elsewhere(other) => Err(format!("the test net does not carry out {other:?}")),
        }
    }
}

/// Drives `op` over `net` from a client outside the ring ([`CLIENT`]): each command is
/// carried out in the order issued, and its answer fed back at once.
pub fn run<O: Operation<Failure = String>>(net: &TestNet, op: O) -> O::Output {
    run_at(net, CLIENT, op)
}

/// [`run`], with every request sent by the node `at` (a coordinator's reconcile, a
/// holder's order check).
pub fn run_at<O: Operation<Failure = String>>(net: &TestNet, at: NodeId, mut op: O) -> O::Output {
    let mut queue = VecDeque::new();
    let mut progress = op.start();
    // Bounded: an operation that never decides is a failing test, not a hang.
    for _ in 0..10_000 {
        match progress {
            Progress::Done(output) => return output,
            Progress::Continue(commands) => queue.extend(commands),
        }
        let Some(command) = queue.pop_front() else {
            return op.stalled();
        };
        progress = op.handle(match command {
            Command::Locate { key, count } => {
                Input::Located(Ok(net.closest(&key.0, usize::from(count))))
            }
            Command::Ask { ask, to, request } => {
                Input::Answered(ask, net.ask_from(at, &to, request))
            }
            // No bandwidth is modelled: every pace is granted at once.
            Command::Pace { ask, .. } => Input::Paced(ask),
        });
    }
    panic!("the operation issued more than 10,000 commands")
}

/// An owner's signed upload grant for `name`, valid at [`NOW`], and its file id.
pub fn grant(owner: &KeyPair, name: &[u8]) -> (FileId, Arc<Vec<u8>>) {
    let body = UploadGrant::new(name, 0, owner.public_key(), NOW - 1, 3600);
    let file = body.file_id;
    let bytes = Signed::sign(owner, body)
        .and_then(|s| s.to_bytes())
        .unwrap_or_default();
    (file, Arc::new(bytes))
}

/// `n` fragments of `len` bytes each, distinct per index.
pub fn fragments(n: u16, len: usize) -> OwnedFragments {
    Arc::new(
        (0..n)
            .map(|index| {
                let bytes = vec![(index as u8).wrapping_mul(37) ^ 0x5a; len];
                let hash: FragmentHash = fragment_hash(index, &bytes);
                (index, hash, bytes)
            })
            .collect(),
    )
}

/// A placement key from a small number.
pub fn key(n: u8) -> PlacementKey {
    PlacementKey(Id::hash(&[b'k', n]))
}

/// The owner's signed certificate of the file `name` (salt 0, the file id a
/// [`grant`] of `name` names) with code `(k, m)`, created just before [`NOW`].
pub fn certificate(owner: &KeyPair, name: &[u8], (k, m): (u16, u16)) -> (FileId, Vec<u8>) {
    let body = FileCertificate {
        file_id: FileId::derive(name, &owner.public_key().0, 0),
        name_digest: Id::hash(name),
        name_salt: 0,
        manifest_hash: ManifestHash(Id::hash(name)),
        manifest_salt: 0,
        manifest_fragments: Vec::new(),
        size: 1,
        k,
        m,
        created_at: NOW - 1,
        expires_at: None,
        owner: owner.public_key(),
    };
    let file = body.file_id;
    let bytes = Signed::sign(owner, body)
        .and_then(|s| s.to_bytes())
        .expect("a certificate");
    (file, bytes)
}

/// `signer`'s signed reclaim of the file `certificate` (signed bytes) certifies: valid
/// only if `signer` owns it.
pub fn reclaim(signer: &KeyPair, certificate: &[u8]) -> Vec<u8> {
    let certified = Signed::<FileCertificate>::from_bytes(certificate).expect("a certificate");
    let body = ReclaimCertificate {
        owner: signer.public_key(),
        ..ReclaimCertificate::of(&certified.body, NOW)
    };
    Signed::sign(signer, body)
        .and_then(|s| s.to_bytes())
        .expect("a reclaim")
}

/// A file of one block stored on `net` as a put leaves it: its owner's certificate
/// (`k`, `m`) on its keepers, and the block's `k + m` fragments (a real codeword of
/// `len` bytes) at `at`, each referencing the file. Returns the file, its signed
/// certificate and the fragments.
pub fn certified_block(
    net: &TestNet,
    owner: &KeyPair,
    name: &[u8],
    at: PlacementKey,
    (k, m): (u16, u16),
    len: usize,
) -> (FileId, Vec<u8>, OwnedFragments) {
    let (file, grant) = grant(owner, name);
    let (_, certificate) = certificate(owner, name, (k, m));
    let replicas = u16::try_from(PastConfig::default().certificate_replicas).unwrap_or(4);
    run(
        net,
        RecordPublish::<FileCertificate, String>::new(certificate.clone(), replicas, NOW),
    )
    .expect("the certificate is published");
    let block: Vec<u8> = (0..len)
        .map(|i| (i * 7 + usize::from(name.len() as u8)) as u8)
        .collect();
    let codec = Codec::new(ErasureParams::new(k, m).expect("a code")).expect("a codec");
    let encoded = codec.encode(&block).expect("encoded");
    let fragments: OwnedFragments = Arc::new(
        encoded
            .fragments()
            .map(|f| (f.index, f.hash(), f.bytes.to_vec()))
            .collect(),
    );
    run(
        net,
        BlockInsert::<String>::new(file, grant, at, Arc::clone(&fragments)),
    )
    .expect("the block is stored");
    (file, certificate, fragments)
}
