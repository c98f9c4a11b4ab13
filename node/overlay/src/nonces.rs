//! Unguessable numbers for the overlay's messages: ping nonces, hop ids and the tags
//! drivers put on lookups ([`Nonces`]).
//!
//! Owns: the generator, SHA-256 over a secret seed and a counter (a hash in counter
//! mode). Someone who sees any number of its outputs learns nothing of the next one,
//! which a counter or a fast PRNG such as xoshiro would give away. Why it matters:
//! with a guessable tag a stranger can spray `Located` answers that match a pending
//! locate (Castro et al. 2002), and with a guessable ping nonce a peer can answer a
//! ping before it arrives and so claim a lower RTT than it has.
//!
//! May use: [`cairn_core::id`] (its SHA-256). The seed comes from the driver: the
//! daemon draws it from the operating system, the simulator from its seeded stream,
//! so a simulated run stays the same for the same seed.

use cairn_core::id::Id;

/// The secret seed of a node's [`Nonces`]; keep it out of logs.
pub type NonceSeed = [u8; 32];

/// A node's source of unguessable 64-bit numbers (never 0).
#[derive(Clone)]
pub(super) struct Nonces {
    seed: NonceSeed,
    counter: u64,
}

impl std::fmt::Debug for Nonces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The seed is a secret: every past and future number follows from it.
        f.debug_struct("Nonces")
            .field("counter", &self.counter)
            .finish_non_exhaustive()
    }
}

impl Nonces {
    /// A generator whose whole output is fixed by `seed` (and unguessable without it).
    pub(super) fn new(seed: NonceSeed) -> Nonces {
        Nonces { seed, counter: 0 }
    }

    /// The next number: the first 8 bytes of SHA-256("cairn/nonce" ‖ seed ‖ counter).
    /// 0 is skipped, since 0 means "no tag" in a route failure.
    pub(super) fn next(&mut self) -> u64 {
        loop {
            self.counter = self.counter.wrapping_add(1);
            let digest = Id::hash_parts(&[b"cairn/nonce", &self.seed, &self.counter.to_be_bytes()]);
            let [a, b, c, d, e, f, g, h, ..] = digest.0;
            let n = u64::from_be_bytes([a, b, c, d, e, f, g, h]);
            if n != 0 {
                return n;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_numbers_and_another_seed_others() {
        let mut a = Nonces::new([1; 32]);
        let mut b = Nonces::new([1; 32]);
        let mut c = Nonces::new([2; 32]);
        let from_a: Vec<u64> = (0..8).map(|_| a.next()).collect();
        let from_b: Vec<u64> = (0..8).map(|_| b.next()).collect();
        let from_c: Vec<u64> = (0..8).map(|_| c.next()).collect();
        assert_eq!(from_a, from_b);
        assert_ne!(from_a, from_c);
    }

    #[test]
    fn numbers_are_not_a_counter_and_use_the_whole_width() {
        let mut nonces = Nonces::new([7; 32]);
        let numbers: Vec<u64> = (0..64).map(|_| nonces.next()).collect();
        // No small numbers, no constant step: a counter from 1 would fail both.
        assert!(
            numbers.iter().all(|n| *n > u64::from(u32::MAX)),
            "{numbers:?}"
        );
        let steps: std::collections::BTreeSet<u64> = numbers
            .windows(2)
            .map(|w| w[1].wrapping_sub(w[0]))
            .collect();
        assert!(steps.len() > 60);
        // The high bit is set in about half of them.
        let high = numbers.iter().filter(|n| **n >> 63 == 1).count();
        assert!((16..=48).contains(&high), "{high}");
        assert!(
            !format!("{nonces:?}").contains("7, 7"),
            "the seed never prints"
        );
    }
}
