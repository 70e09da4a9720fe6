//! The one configuration of the crate's property tests: a fixed seed unless
//! `PROPTEST_RNG_SEED` names another (so CI runs the same cases every time and a failure can be
//! replayed), a bounded number of cases (`PROPTEST_CASES` overrides) and bounded shrinking, so
//! each block ends in bounded time.

use proptest::test_runner::{Config, RngSeed};

/// The seed every property test runs with when `PROPTEST_RNG_SEED` is unset.
pub const DEFAULT_SEED: u64 = 20261206;

/// Shrinking a failure stops after this long (ms) or this many steps, whichever comes first.
const MAX_SHRINK_TIME_MS: u32 = 10_000;
const MAX_SHRINK_ITERS: u32 = 4_096;

/// `cases` cases (unless `PROPTEST_CASES` says otherwise), seeded with `PROPTEST_RNG_SEED` or
/// [`DEFAULT_SEED`]; the seed in use is printed (shown with the output of a failing test).
pub fn bounded(cases: u32) -> Config {
    // `Config::default()` reads the PROPTEST_* variables.
    let mut c = Config::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        c.cases = cases;
    }
    if std::env::var_os("PROPTEST_RNG_SEED").is_none() {
        c.rng_seed = RngSeed::Fixed(DEFAULT_SEED);
    }
    if c.max_shrink_time == 0 || c.max_shrink_time > MAX_SHRINK_TIME_MS {
        c.max_shrink_time = MAX_SHRINK_TIME_MS;
    }
    c.max_shrink_iters = c.max_shrink_iters.min(MAX_SHRINK_ITERS);
    eprintln!(
        "proptest: {} cases, seed {:?} (PROPTEST_RNG_SEED to change)",
        c.cases, c.rng_seed
    );
    c
}
