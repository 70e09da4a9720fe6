use super::*;

#[test]
fn free_ports_are_never_handed_out_twice_even_before_anything_binds_them() {
    // Nothing binds these, so every one stays free: only the record of what was handed out
    // keeps the 3000 picks (a quarter of the range) apart.
    let mut seen = std::collections::HashSet::new();
    for _ in 0..3000 {
        let port = free_port();
        assert!(seen.insert(port), "port {port} handed out twice");
    }
}
