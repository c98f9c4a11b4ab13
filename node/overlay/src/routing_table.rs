//! The routing table: row `r`, column `d` holds a node that shares `r` leading digits
//! with this node and has digit `d` next (the paper's `R`, 256/b rows of 2^b columns).
//!
//! Owns: the slots, which entry sits in which slot, the RTT preference between two
//! candidates for one slot, and the digit arithmetic ([`digit`], [`shared_digits`]).
//! Rows are allocated only when an entry falls in them, so a node of a
//! 100,000-node ring holds ~5 rows, not 64.
//!
//! May use: [`cairn_core::id`] and the overlay's [`Entry`]. It knows nothing of liveness or
//! messages: the protocol ([`super::Overlay`]) decides who is admitted or dropped.

use super::{Entry, RttMicros};
use cairn_core::id::{Id, NodeId};

/// Digit `i` of `id` with `b`-bit digits (b divides 8).
pub(super) fn digit(id: &Id, i: usize, b: u8) -> usize {
    let bit = i * usize::from(b);
    let byte = id.0[bit / 8];
    let shift = 8 - usize::from(b) - bit % 8;
    usize::from((byte >> shift) & ((1u16 << b) - 1) as u8)
}

/// Leading `b`-bit digits shared by `a` and `c`.
pub(super) fn shared_digits(a: &Id, c: &Id, b: u8) -> usize {
    for (i, (x, y)) in a.0.iter().zip(c.0.iter()).enumerate() {
        let diff = x ^ y;
        if diff != 0 {
            let bits = i * 8 + diff.leading_zeros() as usize;
            return bits / usize::from(b);
        }
    }
    256 / usize::from(b)
}

/// One node's Pastry routing table.
#[derive(Clone, Debug)]
pub(super) struct RoutingTable {
    /// The node whose table this is: slots are relative to its id.
    me: NodeId,
    /// Bits per digit (`b`).
    digit_bits: u8,
    /// Rows `0..rows.len()`; a row is given its `columns()` slots only when an entry
    /// falls in it (rows below it may stay empty vectors).
    rows: Vec<Vec<Option<Entry>>>,
}

impl RoutingTable {
    /// An empty table for node `me` with `digit_bits`-bit digits (1, 2, 4 or 8).
    pub(super) fn new(me: NodeId, digit_bits: u8) -> RoutingTable {
        RoutingTable {
            me,
            digit_bits,
            rows: Vec::new(),
        }
    }

    /// The most rows a table can have: 256 / b.
    fn max_rows(&self) -> usize {
        256 / usize::from(self.digit_bits)
    }

    /// Slots per row: 2^b.
    fn columns(&self) -> usize {
        1 << self.digit_bits
    }

    /// The slot `(row, column)` that `key` falls in: row = digits shared with this
    /// node, column = the key's next digit. `None` for this node's own id (it shares
    /// every digit, so it has no slot).
    pub(super) fn slot_for(&self, key: &Id) -> Option<(usize, usize)> {
        let row = shared_digits(&self.me.0, key, self.digit_bits);
        (row < self.max_rows()).then(|| (row, digit(key, row, self.digit_bits)))
    }

    /// The entry in slot `(row, column)`, if any.
    pub(super) fn get(&self, row: usize, column: usize) -> Option<&Entry> {
        self.rows.get(row)?.get(column)?.as_ref()
    }

    /// The entry of `id` if `id` is in the table (it can only be in its own slot).
    pub(super) fn entry_of(&self, id: &NodeId) -> Option<&Entry> {
        let (row, column) = self.slot_for(&id.0)?;
        self.get(row, column).filter(|e| e.id == *id)
    }

    /// Whether `id` is in the table.
    pub(super) fn contains(&self, id: &NodeId) -> bool {
        self.entry_of(id).is_some()
    }

    /// Whether `id` has a slot and nobody is in it.
    pub(super) fn slot_free(&self, id: &NodeId) -> bool {
        self.slot_for(&id.0)
            .is_some_and(|(row, column)| self.get(row, column).is_none())
    }

    /// Puts `id` (measured `rtt`) in its slot if the slot is empty or its occupant
    /// has a higher RTT; if `id` is already there, keeps the lower of the two RTTs.
    /// Allocates the row (and empty rows below it) on first use.
    pub(super) fn insert(&mut self, id: NodeId, rtt: RttMicros) {
        let Some((r, column)) = self.slot_for(&id.0) else {
            return;
        };
        if self.rows.len() <= r {
            self.rows.resize_with(r + 1, Vec::new);
        }
        let columns = self.columns();
        let row = &mut self.rows[r];
        if row.is_empty() {
            row.resize(columns, None);
        }
        let slot = &mut row[column];
        match slot {
            Some(e) if e.id == id => e.rtt = e.rtt.min(rtt),
            Some(e) if e.rtt <= rtt => {}
            _ => *slot = Some(Entry { id, rtt }),
        }
    }

    /// Empties `id`'s slot if `id` is in it; returns the row it was removed from.
    pub(super) fn remove(&mut self, id: &NodeId) -> Option<usize> {
        let (r, column) = self.slot_for(&id.0)?;
        let slot = self.rows.get_mut(r)?.get_mut(column)?;
        if !matches!(slot, Some(e) if e.id == *id) {
            return None;
        }
        *slot = None;
        Some(r)
    }

    /// A node to ask for row `row` when a slot of it fell empty: any other entry of
    /// that row, else of the next one (a node of row r + 1 shares r + 1 digits with
    /// this node, so its row r fits this node too).
    pub(super) fn repair_source(&self, row: usize, except: &NodeId) -> Option<NodeId> {
        [row, row + 1].into_iter().find_map(|row_no| {
            self.rows
                .get(row_no)?
                .iter()
                .flatten()
                .find(|e| e.id != *except)
                .map(|e| e.id)
        })
    }

    /// Rows allocated so far (the deepest entry's row + 1).
    pub(super) fn row_count(&self) -> usize {
        self.rows.len()
    }

    /// The node to ask for row `row` in a proximity exchange: the `turn`-th entry
    /// (modulo their number) of that row, else of the next row (whose row `row` fits
    /// this node too). `None` if both rows are empty.
    pub(super) fn exchange_partner(&self, row: usize, turn: usize) -> Option<NodeId> {
        [row, row + 1].into_iter().find_map(|row_no| {
            let ids: Vec<NodeId> = self
                .rows
                .get(row_no)?
                .iter()
                .flatten()
                .map(|e| e.id)
                .collect();
            (!ids.is_empty()).then(|| ids[turn % ids.len()])
        })
    }

    /// The ids in row `row` (empty if the row was never used).
    pub(super) fn row_ids(&self, row: usize) -> Vec<NodeId> {
        self.rows
            .get(row)
            .map(|r| r.iter().flatten().map(|e| e.id).collect())
            .unwrap_or_default()
    }

    /// The ids in rows `first..=last` (those allocated), row by row.
    pub(super) fn ids_in_rows(&self, first: usize, last: usize) -> Vec<NodeId> {
        self.rows
            .iter()
            .take(last.saturating_add(1))
            .skip(first)
            .flat_map(|row| row.iter().flatten().map(|e| e.id))
            .collect()
    }

    /// Every entry as `(row, column, entry)`, row by row, column by column.
    pub(super) fn entries(&self) -> impl Iterator<Item = (usize, usize, &Entry)> {
        self.rows.iter().enumerate().flat_map(|(r, row)| {
            row.iter()
                .enumerate()
                .filter_map(move |(c, slot)| slot.as_ref().map(|e| (r, c, e)))
        })
    }

    /// How many entries the table holds.
    pub(super) fn len(&self) -> usize {
        self.rows
            .iter()
            .map(|row| row.iter().flatten().count())
            .sum()
    }

    /// Slots in the rows allocated so far, counted as whole rows (`rows × columns`,
    /// including rows not yet given their slots): the range of a round-robin cursor
    /// over the table, whose position `i` is slot `(i / columns, i % columns)`.
    pub(super) fn slot_positions(&self) -> usize {
        self.rows.len() * self.columns()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    /// An id whose first two bytes are `high`, the rest `low`.
    fn id_at(high: u16, low: u8) -> NodeId {
        let mut bytes = [low; 32];
        bytes[..2].copy_from_slice(&high.to_be_bytes());
        NodeId(Id(bytes))
    }

    #[test]
    fn digits_for_every_b() {
        let id = Id::hash(b"digits");
        for i in 0..64 {
            assert_eq!(digit(&id, i, 4), usize::from(id.digit(i)));
        }
        assert_eq!(digit(&id, 0, 8), usize::from(id.0[0]));
        assert_eq!(digit(&id, 0, 1), usize::from(id.0[0] >> 7));
        let other = id.with_digit(9, id.digit(9) ^ 1);
        assert_eq!(shared_digits(&id, &other, 4), 9);
        assert_eq!(shared_digits(&id, &other, 4), id.shared_prefix_len(&other));
        assert_eq!(shared_digits(&id, &id, 2), 128);
    }

    #[test]
    fn entries_go_to_the_slot_of_their_shared_prefix_and_next_digit() {
        let me = id_at(0x5000, 0);
        let mut table = RoutingTable::new(me, 4);
        let far = id_at(0x7100, 0); // shares 0 digits, next digit 7
        let near = id_at(0x5a00, 0); // shares 1 digit, next digit 0xa
        table.insert(far, 1000);
        table.insert(near, 1000);
        assert_eq!(table.slot_for(&far.0), Some((0, 7)));
        assert_eq!(table.get(0, 7).map(|e| e.id), Some(far));
        assert_eq!(table.get(1, 0xa).map(|e| e.id), Some(near));
        assert!(table.contains(&far) && table.contains(&near));
        assert_eq!(table.len(), 2);
        assert_eq!(table.row_ids(1), vec![near]);
        assert_eq!(table.ids_in_rows(0, 1), vec![far, near]);
        assert_eq!(table.ids_in_rows(1, 63), vec![near]);
        let listed: Vec<(usize, usize, NodeId)> =
            table.entries().map(|(r, c, e)| (r, c, e.id)).collect();
        assert_eq!(listed, vec![(0, 7, far), (1, 0xa, near)]);
        // This node itself has no slot and is never stored.
        assert_eq!(table.slot_for(&me.0), None);
        table.insert(me, 1);
        assert!(!table.contains(&me));
        assert_eq!(table.len(), 2);
    }

    #[test]
    fn rows_are_allocated_only_up_to_the_deepest_entry() {
        let me = id_at(0x5000, 0);
        let mut table = RoutingTable::new(me, 4);
        assert_eq!(table.slot_positions(), 0);
        assert_eq!(table.row_ids(0), Vec::<NodeId>::new());
        // Shares 3 digits (0x500_): rows 0..=3 exist, only row 3 has slots.
        let deep = id_at(0x5008, 0);
        table.insert(deep, 1000);
        assert_eq!(table.slot_positions(), 4 * 16);
        assert_eq!(table.get(3, 8).map(|e| e.id), Some(deep));
        assert!(table.get(0, 7).is_none());
        assert!(table.slot_free(&id_at(0x7000, 0)));
        assert!(!table.slot_free(&id_at(0x5008, 9)), "taken by `deep`");
        assert!(!table.slot_free(&me), "no slot for this node");
    }

    #[test]
    fn lower_rtt_wins_a_slot_and_an_entry_keeps_its_best_rtt() {
        let mut table = RoutingTable::new(id_at(0x5000, 0), 4);
        let (first, nearer, farther) = (id_at(0x7100, 0), id_at(0x7200, 0), id_at(0x7300, 0));
        table.insert(first, 500);
        table.insert(nearer, 100);
        assert_eq!(table.get(0, 7).map(|e| e.id), Some(nearer));
        table.insert(farther, 90_000);
        assert_eq!(table.get(0, 7).map(|e| e.id), Some(nearer));
        // An equal RTT does not displace the occupant.
        table.insert(first, 100);
        assert_eq!(table.get(0, 7).map(|e| e.id), Some(nearer));
        // The occupant's RTT only ever improves.
        table.insert(nearer, 700);
        assert_eq!(table.entry_of(&nearer).map(|e| e.rtt), Some(100));
        table.insert(nearer, 40);
        assert_eq!(table.entry_of(&nearer).map(|e| e.rtt), Some(40));
    }

    #[test]
    fn removal_frees_the_slot_and_names_a_node_to_repair_it_from() {
        let me = id_at(0x5000, 0);
        let mut table = RoutingTable::new(me, 4);
        let (a, b, deeper) = (id_at(0x7100, 0), id_at(0x9100, 0), id_at(0x5a00, 0));
        for id in [a, b, deeper] {
            table.insert(id, 1000);
        }
        // Not in the table (its slot holds `a`): nothing removed.
        assert_eq!(table.remove(&id_at(0x7200, 0)), None);
        assert_eq!(table.remove(&a), Some(0));
        assert!(!table.contains(&a));
        assert!(table.slot_free(&a));
        assert_eq!(table.remove(&a), None, "already gone");
        // Row 0 still has `b`; once it is gone too, row 1 is asked.
        assert_eq!(table.repair_source(0, &a), Some(b));
        assert_eq!(table.remove(&b), Some(0));
        assert_eq!(table.repair_source(0, &b), Some(deeper));
        assert_eq!(table.repair_source(0, &deeper), None);
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn exchange_partners_take_turns_within_a_row_then_fall_back_to_the_next() {
        let me = id_at(0x5000, 0);
        let mut table = RoutingTable::new(me, 4);
        assert_eq!(table.row_count(), 0);
        let (a, b, deeper) = (id_at(0x7100, 0), id_at(0x9100, 0), id_at(0x5a00, 0));
        for id in [a, b, deeper] {
            table.insert(id, 1000);
        }
        assert_eq!(table.row_count(), 2);
        let turns: Vec<_> = (0..4).map(|t| table.exchange_partner(0, t)).collect();
        assert_eq!(turns, [Some(a), Some(b), Some(a), Some(b)]);
        assert_eq!(table.exchange_partner(1, 5), Some(deeper));
        // Row 0 empty: a row-1 entry shares a digit more with us, so its row 0 fits.
        table.remove(&a);
        table.remove(&b);
        assert_eq!(table.exchange_partner(0, 3), Some(deeper));
        assert_eq!(table.exchange_partner(2, 0), None);
    }
}
