//! The checks a locate's answer must pass before its origin believes it (Castro,
//! Druschel, Ganesh, Rowstron and Wallach, "Secure routing for structured peer-to-peer
//! overlay networks", 2002): [`Overlay::check_located`](super::Overlay::check_located)
//! and its [`LocatedVerdict`].
//!
//! Owns: what makes an answer well formed (it comes from the closest node it names,
//! sorted by distance to the key, without duplicates, within the count asked),
//! plausible (no id that this node's own leaf set would hold, were it alive), and dense
//! enough (Castro et al.'s routing-failure test: the mean id spacing of the returned set
//! against that of the local leaf set, [`DENSITY_GAMMA`]); and when two answers agree
//! ([`confirmed_by_another_route`]).
//!
//! May use: [`cairn_core::id`] and the overlay's `LeafSet`. It decides only: the driver
//! matches the answer to its pending locate by tag, drops a rejected answer (and goes
//! on waiting, as for a lost one) and, for a suspicious one, routes the locate again
//! through a different first hop ([`super::Event::RouteDiverse`]).

use std::cmp::Ordering;

use cairn_core::id::{Id, NodeId};

use super::leaf_set::LeafSet;

/// How much sparser than the local leaf set a far answer may be before it is
/// suspicious: the returned set's mean id spacing over the leaf set's.
///
/// Why 3: the returned set is small (a PAST locate asks for n + 4 nodes, about 10),
/// so its mean spacing is noisy even when every node is honest. Sampling 5,000
/// uniform ids, the ratio for honest sets of 10 (6, 4) nodes against a 16-node leaf
/// set has median 1.0 and exceeds 3 in about 0.3% (0.8%, 1.5%) of locates (2.5 gave
/// 1%, 2%, 4%, and 5% of the routed locates of a 200-node simulated workload). A
/// false alarm costs one more route, whose answer then confirms the first
/// ([`confirmed_by_another_route`]). A set made only of an attacker's nodes, where the
/// attacker holds a fraction f of the ids, is about 1/f times sparser: 5 at 20%, which
/// this catches nearly always, 3.3 at 30%, about half the time. Castro et al. pick
/// their γ the same way, trading false positives against false negatives; with their
/// 32-node sets the noise is lower and so is their γ.
pub const DENSITY_GAMMA: f64 = 3.0;

/// The fewest gaps (returned nodes − 1) the density test needs: with fewer the mean
/// spacing says too little, and the answer passes on the other checks alone.
pub const MIN_DENSITY_GAPS: usize = 3;

/// What the origin of a locate makes of an answer.
#[derive(Clone, Debug, PartialEq)]
pub enum LocatedVerdict {
    /// Believe it.
    Accept,
    /// Well formed but suspicious: route the locate again through a different first
    /// hop and take an answer that passes, or one that two routes agree on.
    Suspicious(Suspicion),
    /// Drop it, count it, and go on waiting for the true answer.
    Reject(Rejection),
}

/// Why a well-formed answer is suspicious.
#[derive(Clone, Debug, PartialEq)]
pub enum Suspicion {
    /// The returned set is sparser than the local leaf set by more than
    /// [`DENSITY_GAMMA`]: `ratio` is its mean spacing over the leaf set's.
    Sparse {
        /// The ratio of the mean spacings.
        ratio: f64,
    },
    /// Fewer nodes than an honest answerer with a full leaf set would name.
    Short {
        /// Nodes named.
        got: usize,
        /// Nodes expected.
        expected: usize,
    },
}

/// Why an answer is refused outright.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// It names nobody.
    #[error("the answer names no node")]
    Empty,
    /// More nodes than asked for.
    #[error("the answer names {got} nodes, {asked} were asked for")]
    TooMany {
        /// Named.
        got: usize,
        /// Asked.
        asked: usize,
    },
    /// The sender is not the first (closest) node of its own list.
    #[error("the answer's sender {from:?} is not the closest node it names ({first:?})")]
    NotFromClosest {
        /// The sender.
        from: NodeId,
        /// The first node of the list.
        first: NodeId,
    },
    /// A node is named twice.
    #[error("the answer names {0:?} twice")]
    Duplicate(NodeId),
    /// The list is not sorted by distance to the key.
    #[error("the answer is not sorted by distance to the key")]
    Unsorted,
    /// A node lies within this node's leaf-set range but is neither in its leaf set
    /// nor remembered dead: had it existed, this node would know it.
    #[error("the answer names {0:?}, which this node's leaf set would hold")]
    Implausible(NodeId),
}

/// Checks `nodes`, the answer `from` sent to this node's locate of the `count` nodes
/// closest to `key`. `leaf` is this node's leaf set (of node `me`); `known_dead` says
/// whether this node remembers an id as dead (a real node, whose death the answerer may
/// not have noticed yet).
pub(super) fn check(
    me: NodeId,
    leaf: &LeafSet,
    known_dead: impl Fn(&NodeId) -> bool,
    key: &Id,
    count: usize,
    from: NodeId,
    nodes: &[NodeId],
) -> LocatedVerdict {
    if let Err(rejection) = well_formed(count, from, nodes) {
        return LocatedVerdict::Reject(rejection);
    }
    if !sorted_by_distance(key, nodes) {
        return LocatedVerdict::Reject(Rejection::Unsorted);
    }
    let full = leaf.is_full();
    if full
        && let Some(stranger) = nodes
            .iter()
            .find(|id| **id != me && leaf.covers(&id.0) && !leaf.contains(id) && !known_dead(id))
    {
        return LocatedVerdict::Reject(Rejection::Implausible(*stranger));
    }
    // The density test only means something for an answer from far away: a key in our
    // own range is answered from our own leaf set without a locate.
    if !full || leaf.covers(key) {
        return LocatedVerdict::Accept;
    }
    let expected = count.min(leaf.capacity() + 1);
    if nodes.len() < expected {
        return LocatedVerdict::Suspicious(Suspicion::Short {
            got: nodes.len(),
            expected,
        });
    }
    let (left, right) = leaf.ids_by_side();
    let local = mean_spacing_around(&me.0, left.iter().chain(&right).map(|id| &id.0), true);
    let returned = mean_spacing_around(key, nodes.iter().map(|id| &id.0), false);
    match (local, returned) {
        (Some(local), Some(returned)) if nodes.len() > MIN_DENSITY_GAPS && local > 0.0 => {
            let ratio = returned / local;
            if ratio > DENSITY_GAMMA {
                LocatedVerdict::Suspicious(Suspicion::Sparse { ratio })
            } else {
                LocatedVerdict::Accept
            }
        }
        _ => LocatedVerdict::Accept,
    }
}

/// The answer this node gives, as the node where a locate's route ended: the `count`
/// closest to `key` of itself and its leaf set, leaving out those closer than itself.
/// A route ends here only when no closer node took it (the nodes before it were tried
/// and did not acknowledge), so to this route they are gone, and an answer must come
/// from the closest node it names ([`Rejection::NotFromClosest`]).
pub(super) fn answer(me: NodeId, leaf: &LeafSet, key: &Id, count: usize) -> Vec<NodeId> {
    let mut ids: Vec<NodeId> = leaf.distinct_members();
    ids.push(me);
    ids.sort_by(|a, b| key.cmp_closeness(&a.0, &b.0));
    ids.into_iter()
        .skip_while(|id| *id != me)
        .take(count)
        .collect()
}

/// The structural checks: non-empty, within `count`, from its first node, sorted
/// strictly by distance to the key (so without duplicates).
fn well_formed(count: usize, from: NodeId, nodes: &[NodeId]) -> Result<(), Rejection> {
    let Some(first) = nodes.first() else {
        return Err(Rejection::Empty);
    };
    if nodes.len() > count {
        return Err(Rejection::TooMany {
            got: nodes.len(),
            asked: count,
        });
    }
    if *first != from {
        return Err(Rejection::NotFromClosest {
            from,
            first: *first,
        });
    }
    let mut seen: Vec<&NodeId> = nodes.iter().collect();
    seen.sort_unstable();
    if let Some(pair) = seen.windows(2).find(|pair| pair[0] == pair[1]) {
        return Err(Rejection::Duplicate(*pair[0]));
    }
    Ok(())
}

/// Whether `nodes` are sorted strictly by distance to `key`, closest first.
fn sorted_by_distance(key: &Id, nodes: &[NodeId]) -> bool {
    nodes
        .windows(2)
        .all(|pair| key.cmp_closeness(&pair[0].0, &pair[1].0) == Ordering::Less)
}

/// Whether `answer` (suspicious alone) equals one an earlier route of the same locate
/// returned: two routes through different first hops that end at the same node with
/// the same set are how an honest but sparse neighbourhood shows itself (the set is a
/// property of the key, not of the route), while an attacker must sit on both routes.
pub fn confirmed_by_another_route(earlier: &[Vec<NodeId>], answer: &[NodeId]) -> bool {
    earlier.iter().any(|seen| seen.as_slice() == answer)
}

/// The mean gap between consecutive points, as a fraction of the ring, over the arc
/// that `ids` span around `centre` (each id on the side where it is nearer). The
/// centre is one of the points when it is a node (`centre_is_node`: the local leaf set
/// around this node), not when it is a key (a returned set). `None` without a gap.
fn mean_spacing_around<'a>(
    centre: &Id,
    ids: impl Iterator<Item = &'a Id>,
    centre_is_node: bool,
) -> Option<f64> {
    let mut distinct: Vec<&Id> = ids.filter(|id| *id != centre).collect();
    distinct.sort_unstable();
    distinct.dedup();
    let (mut clockwise, mut counter_clockwise) = (0.0f64, 0.0f64);
    for id in &distinct {
        let cw = centre.clockwise_to(id);
        let ccw = id.clockwise_to(centre);
        if cw <= ccw {
            clockwise = clockwise.max(fraction(&cw));
        } else {
            counter_clockwise = counter_clockwise.max(fraction(&ccw));
        }
    }
    let gaps = (distinct.len() + usize::from(centre_is_node)).checked_sub(1)?;
    (gaps > 0).then(|| (clockwise + counter_clockwise) / gaps as f64)
}

/// The top 64 bits of a ring distance, as a fraction of the ring.
fn fraction(distance: &Id) -> f64 {
    let [a, b, c, d, e, f, g, h, ..] = distance.0;
    u64::from_be_bytes([a, b, c, d, e, f, g, h]) as f64 / 2f64.powi(64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ids spaced evenly, as 4,096 nodes would be: `at(i)` is the i-th.
    fn at(i: u64) -> NodeId {
        let mut bytes = [0u8; 32];
        bytes[..8].copy_from_slice(&i.wrapping_mul(u64::MAX / 4096).to_be_bytes());
        NodeId(Id(bytes))
    }

    /// Node 100's full leaf set: 92..=99 and 101..=108.
    fn leaf_of_100() -> LeafSet {
        let mut leaf = LeafSet::new(at(100), 8);
        for i in (92..100).chain(101..109) {
            leaf.insert(at(i), 1000);
        }
        assert!(leaf.is_full());
        leaf
    }

    /// A key just past node 2000.
    fn far_key() -> Id {
        let mut key = at(2000).0;
        key.0[31] = 1;
        key
    }

    /// `ids` sorted by distance to `key`, closest first (what an honest node sends).
    fn ranked(key: &Id, ids: impl IntoIterator<Item = NodeId>) -> Vec<NodeId> {
        let mut ids: Vec<NodeId> = ids.into_iter().collect();
        ids.sort_by(|a, b| key.cmp_closeness(&a.0, &b.0));
        ids
    }

    fn verdict(count: usize, from: NodeId, nodes: &[NodeId]) -> LocatedVerdict {
        check(
            at(100),
            &leaf_of_100(),
            |_| false,
            &far_key(),
            count,
            from,
            nodes,
        )
    }

    #[test]
    fn an_honest_answer_from_the_closest_node_is_accepted() {
        let key = far_key();
        let honest = ranked(&key, (1995..2005).map(at));
        assert_eq!(honest[0], at(2000));
        assert_eq!(verdict(10, at(2000), &honest), LocatedVerdict::Accept);
        // Fewer than asked is fine where the count cannot be filled from a leaf set
        // (more than L + 1), and so is a count of one.
        assert_eq!(verdict(1, at(2000), &honest[..1]), LocatedVerdict::Accept);
    }

    #[test]
    fn an_answer_not_from_its_first_node_or_out_of_order_is_rejected() {
        let key = far_key();
        let honest = ranked(&key, (1995..2005).map(at));
        // Sprayed by a stranger that is not the closest node it names.
        assert!(matches!(
            verdict(10, at(1234), &honest),
            LocatedVerdict::Reject(Rejection::NotFromClosest { .. })
        ));
        // The second closest claiming to be the closest: it must name itself first,
        // and then the list is out of order.
        let mut claimed = honest.clone();
        claimed.swap(0, 1);
        assert_eq!(
            verdict(10, claimed[0], &claimed),
            LocatedVerdict::Reject(Rejection::Unsorted)
        );
        let mut twice = honest.clone();
        twice[5] = twice[4];
        assert_eq!(
            verdict(10, at(2000), &twice),
            LocatedVerdict::Reject(Rejection::Duplicate(twice[4]))
        );
        assert_eq!(
            verdict(10, at(2000), &[]),
            LocatedVerdict::Reject(Rejection::Empty)
        );
        assert_eq!(
            verdict(4, at(2000), &honest),
            LocatedVerdict::Reject(Rejection::TooMany { got: 10, asked: 4 })
        );
    }

    #[test]
    fn an_answer_naming_an_id_inside_our_leaf_range_that_we_do_not_hold_is_rejected() {
        // A key just outside our range (past 108): the answer may name our members,
        // but not an id between them that we have never heard of.
        let mut key = at(110).0;
        key.0[31] = 1;
        let leaf = leaf_of_100();
        let honest = ranked(&key, (105..115).map(at));
        let check_at =
            |nodes: &[NodeId]| check(at(100), &leaf, |_| false, &key, 10, nodes[0], nodes);
        assert_eq!(check_at(&honest), LocatedVerdict::Accept);
        let mut ghost = at(107).0;
        ghost.0[20] = 9;
        let with_ghost = ranked(&key, (106..115).map(at).chain([NodeId(ghost)]));
        assert_eq!(
            check_at(&with_ghost),
            LocatedVerdict::Reject(Rejection::Implausible(NodeId(ghost)))
        );
    }

    #[test]
    fn a_far_answer_much_sparser_than_our_leaf_set_is_suspicious() {
        let key = far_key();
        // Ten nodes of an attacker that holds a fifth of the ids: one in five places.
        let sparse = ranked(&key, (0..10).map(|j| at(1975 + 5 * j)));
        let LocatedVerdict::Suspicious(Suspicion::Sparse { ratio }) =
            verdict(10, sparse[0], &sparse)
        else {
            panic!("a set 5 times sparser passed");
        };
        assert!((4.0..6.0).contains(&ratio), "{ratio}");
        // Twice as sparse is within the honest spread: accepted.
        let wider = ranked(&key, (0..10).map(|j| at(1990 + 2 * j)));
        assert_eq!(verdict(10, wider[0], &wider), LocatedVerdict::Accept);
        // Naming only itself when ten were asked for: short, so suspicious too.
        assert_eq!(
            verdict(10, at(2000), &[at(2000)]),
            LocatedVerdict::Suspicious(Suspicion::Short {
                got: 1,
                expected: 10
            })
        );
    }

    #[test]
    fn the_density_test_is_skipped_near_us_and_while_our_leaf_set_is_not_full() {
        let key = far_key();
        let sparse = ranked(&key, (0..10).map(|j| at(1975 + 5 * j)));
        let mut partial = LeafSet::new(at(100), 8);
        // Seven nodes: fewer than a side holds, so each side names them all.
        for i in (96..100).chain(101..104) {
            partial.insert(at(i), 1000);
        }
        assert!(!partial.is_full());
        assert_eq!(
            check(at(100), &partial, |_| false, &key, 10, sparse[0], &sparse),
            LocatedVerdict::Accept
        );
        let near = at(104).0;
        let spread = ranked(&near, [at(104), at(103), at(105)]);
        assert_eq!(
            check(
                at(100),
                &leaf_of_100(),
                |_| false,
                &near,
                3,
                spread[0],
                &spread
            ),
            LocatedVerdict::Accept
        );
    }

    #[test]
    fn a_node_answers_from_itself_outwards_and_passes_its_own_origins_check() {
        let leaf = leaf_of_100();
        // A key between 103 and 104, nearer 104: node 104 is the closest.
        let step = u64::MAX / 4096;
        let mut key = at(0).0;
        key.0[..8].copy_from_slice(&(103 * step + step / 10 * 7).to_be_bytes());
        // A route that ended at 103 (104 did not take it): 103 answers from itself
        // outwards, leaving 104 out, and its answer is sorted and from its first node.
        let mut leaf_103 = LeafSet::new(at(103), 8);
        for i in (95..103).chain(104..112) {
            leaf_103.insert(at(i), 1000);
        }
        let answer_103 = answer(at(103), &leaf_103, &key, 4);
        assert_eq!(answer_103, vec![at(103), at(105), at(102), at(106)]);
        assert_eq!(
            check(at(100), &leaf, |_| false, &key, 4, at(103), &answer_103),
            LocatedVerdict::Accept
        );
        // Where the route ended at the closest node, nothing is left out.
        let mut leaf_104 = LeafSet::new(at(104), 8);
        for i in (96..104).chain(105..113) {
            leaf_104.insert(at(i), 1000);
        }
        assert_eq!(
            answer(at(104), &leaf_104, &key, 3),
            vec![at(104), at(103), at(105)]
        );
    }

    #[test]
    fn two_routes_that_return_the_same_set_confirm_it() {
        let a = vec![at(1), at(2)];
        let b = vec![at(1), at(3)];
        assert!(confirmed_by_another_route(&[b.clone(), a.clone()], &a));
        assert!(!confirmed_by_another_route(&[b], &a));
        assert!(!confirmed_by_another_route(&[], &a));
    }
}
