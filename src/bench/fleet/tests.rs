//! Unit tests of the fleet bench's arithmetic.

use std::net::IpAddr;
use std::time::Duration;

use tokio::time::Instant;

use super::platform::source_addr;
use super::report::{peak_in_window, quantile};
use super::{FleetOptions, MAX_PLATFORMS};

#[test]
fn source_addresses_are_distinct_loopback_hosts() {
    let mut seen = std::collections::HashSet::new();
    for i in 0..MAX_PLATFORMS {
        let a = source_addr(i);
        assert!(a.is_loopback(), "{a}");
        let IpAddr::V4(v4) = a else { panic!() };
        let last = v4.octets()[3];
        assert!(last != 0 && last != 255, "{a}");
        assert!(seen.insert(a), "{a} twice");
    }
}

#[test]
fn the_peak_counts_the_densest_window() {
    let t = Instant::now();
    let at = |ms: u64| t + Duration::from_millis(ms);
    let times = vec![at(0), at(50), at(99), at(100), at(300), at(310)];
    assert_eq!(peak_in_window(times, Duration::from_millis(100)), 3);
    assert_eq!(peak_in_window(vec![], Duration::from_millis(100)), 0);
}

#[test]
fn batches_split_the_fleet_rate() {
    let o = FleetOptions {
        platforms: 1000,
        duration: Duration::from_secs(30),
        rate: 2000.0,
        size: 200,
        interval: Duration::from_secs(1),
        nats_server: None,
        json: false,
    };
    assert_eq!(o.batch(), 2);
    assert!(o.check().is_ok());
    let tiny = FleetOptions {
        rate: 1.0,
        ..o.clone()
    };
    assert_eq!(tiny.batch(), 1);
    let none = FleetOptions {
        platforms: 0,
        ..o.clone()
    };
    assert!(
        none.check()
            .unwrap_err()
            .to_string()
            .contains("--platforms")
    );
    let short = FleetOptions {
        duration: Duration::from_secs(1),
        ..o
    };
    assert!(
        short
            .check()
            .unwrap_err()
            .to_string()
            .contains("--duration")
    );
}

#[test]
fn quantiles_of_small_sets() {
    assert_eq!(quantile(&[], 0.99), 0.0);
    assert_eq!(quantile(&[5.0], 0.99), 5.0);
    let v: Vec<f64> = (1..=100).map(f64::from).collect();
    assert_eq!(quantile(&v, 0.5), 50.0);
    assert_eq!(quantile(&v, 0.99), 99.0);
}
