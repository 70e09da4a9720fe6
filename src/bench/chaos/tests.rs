use super::*;

#[test]
fn scenario_lists_parse_and_all_means_every_one() {
    assert_eq!(parse("all").unwrap().len(), SCENARIOS.len());
    assert_eq!(
        parse("stall, reset,stall").unwrap(),
        vec![Fault::Stall, Fault::Reset]
    );
    let e = parse("stall,flood").unwrap_err();
    assert!(e.to_string().contains("\"flood\""), "{e}");
    assert!(e.to_string().contains("kill-gateway"), "{e}");
    assert!(parse(" , ").is_err());
}

#[test]
fn every_fault_has_one_named_scenario_in_the_help() {
    let h = help();
    for s in SCENARIOS {
        assert_eq!(SCENARIOS.iter().filter(|o| o.fault == s.fault).count(), 1);
        assert!(h.contains(s.name));
        assert_eq!(scenario(s.fault).name, s.name);
    }
}

#[test]
fn the_readme_lists_every_scenario_as_the_table_says() {
    let readme = include_str!("../../../README.md");
    for s in SCENARIOS {
        let row = format!("| `{}` | {} |", s.name, s.about);
        assert!(readme.contains(&row), "README.md lacks the row\n{row}");
    }
}

#[test]
fn this_process_can_be_sampled() {
    let s = sample(std::process::id()).expect("/proc/self");
    assert!(s.rss_kib > 0 && s.fds > 0 && s.threads > 0, "{s:?}");
    let mut r = Resources::default();
    r.add(Sample {
        rss_kib: 10,
        fds: 5,
        threads: 3,
    });
    r.add(Sample {
        rss_kib: 30,
        fds: 4,
        threads: 3,
    });
    r.add(Sample {
        rss_kib: 20,
        fds: 6,
        threads: 2,
    });
    assert_eq!(
        (r.start.rss_kib, r.peak.rss_kib, r.end.rss_kib),
        (10, 30, 20)
    );
    assert_eq!((r.peak.fds, r.peak.threads, r.samples), (6, 3, 3));
}
