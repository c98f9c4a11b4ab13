//! The time to join with the puzzle: how long a node takes to make a key that solves
//! the static puzzle on node keys ([`Difficulty`]) at 8 to 24 bits, in steps of 4.
//!
//! `cargo bench -p cairn-benches --bench puzzle` (release), or with `--profile dev`
//! (the dev profile builds every dependency, ed25519 and SHA-256 included, at
//! opt-level 3, so it measures nearly the same). `CAIRN_PUZZLE_MAX_BITS=20` stops
//! earlier; `CAIRN_BENCH_QUICK=1` stops at 12 bits.
//!
//! First the cost of one attempt, from a search that cannot succeed in its bound (a
//! 255-bit puzzle, stopped at 2^16 attempts): the expected time at `d` bits is `2^d`
//! of those. Then the measured searches: the number of attempts is geometric, so the
//! median of a few runs is about `ln 2` (0.69) of the mean and single runs spread
//! widely; the table prints both, and min and max, and the rate the runs went at (a
//! machine busy with other work lowers it, and the times with it).

use std::time::Instant;

use cairn_benches::{machine_note, quick};
use cairn_core::crypto::KeyPair;
use cairn_core::id::Difficulty;
use cairn_testkit::fixtures::percentile;

fn main() {
    println!("{}", machine_note());
    let max_bits: u8 = if quick() {
        12
    } else {
        std::env::var("CAIRN_PUZZLE_MAX_BITS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(24)
    };

    let probe = 1u64 << 16;
    let start = Instant::now();
    let unsolved = KeyPair::generate_solving(Difficulty(255), probe, |_| {});
    let per_attempt = start.elapsed().as_secs_f64() / probe as f64;
    assert!(unsolved.is_err(), "a 255-bit puzzle solved");
    println!(
        "one attempt (key derivation + 2 SHA-256): {:.2} us, {:.0} attempts/s",
        per_attempt * 1e6,
        1.0 / per_attempt
    );
    println!(
        "{:>5} {:>5} {:>12} {:>12} {:>12} {:>12} {:>12}",
        "bits", "runs", "median s", "min s", "max s", "mean (exp) s", "attempts/s"
    );
    for bits in (8..=max_bits).step_by(4) {
        let difficulty = Difficulty(bits);
        let runs = match bits {
            0..=12 => 21,
            13..=16 => 9,
            17..=20 => 5,
            _ => 3,
        };
        // Per run: its time, and the attempts made and time taken up to its last
        // progress call (the rate it ran at, which a busy machine lowers).
        let mut seconds = Vec::with_capacity(runs);
        let (mut counted_attempts, mut counted_seconds) = (0u64, 0f64);
        for _ in 0..runs {
            let start = Instant::now();
            let mut last = (0u64, 0f64);
            let key = KeyPair::generate_solving(difficulty, difficulty.attempt_bound(), |made| {
                last = (made, start.elapsed().as_secs_f64());
            });
            seconds.push(start.elapsed().as_secs_f64());
            assert!(key.is_ok(), "no key at {difficulty} within the bound");
            counted_attempts += last.0;
            counted_seconds += last.1;
        }
        seconds.sort_by(f64::total_cmp);
        let expected = per_attempt * difficulty.expected_attempts() as f64;
        let rate = (counted_seconds > 0.0).then(|| counted_attempts as f64 / counted_seconds);
        println!(
            "{bits:>5} {runs:>5} {:>12.3} {:>12.3} {:>12.3} {:>12.3} {:>12}",
            percentile(&seconds, 0.5),
            seconds[0],
            seconds[seconds.len() - 1],
            expected,
            rate.map_or("-".to_string(), |r| format!("{r:.0}"))
        );
        println!(
            "{}",
            serde_json::json!({
                "bench": format!("node key puzzle {bits} bits"),
                "runs": runs,
                "median_s": percentile(&seconds, 0.5),
                "min_s": seconds[0],
                "max_s": seconds[seconds.len() - 1],
                "expected_mean_s": expected,
                "attempts_per_s_during_runs": rate,
            })
        );
    }
}
