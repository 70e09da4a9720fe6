use super::*;

/// Checks `svg` is well-formed XML as far as this writer's output goes (elements nest and
/// close, attributes are quoted, `&` only starts one of the five entities, no stray `<`) and
/// returns every element's name with its attributes, in document order.
fn elements(svg: &str) -> Vec<(String, Vec<(String, String)>)> {
    let mut out = Vec::new();
    let mut stack: Vec<String> = Vec::new();
    let mut rest = svg;
    let check_text = |t: &str| {
        let mut r = t;
        while let Some(i) = r.find('&') {
            r = &r[i..];
            assert!(
                ["&amp;", "&lt;", "&gt;", "&quot;", "&apos;"]
                    .iter()
                    .any(|e| r.starts_with(e)),
                "bad entity in {t:?}"
            );
            r = &r[1..];
        }
        assert!(!t.contains('>'), "stray > in {t:?}");
    };
    while let Some(open) = rest.find('<') {
        check_text(&rest[..open]);
        let close = rest[open..].find('>').expect("tag closes") + open;
        let tag = &rest[open + 1..close];
        rest = &rest[close + 1..];
        if let Some(name) = tag.strip_prefix('/') {
            assert_eq!(stack.pop().as_deref(), Some(name), "closing {name}");
            continue;
        }
        let self_closing = tag.ends_with('/');
        let tag = tag.trim_end_matches('/');
        let (name, mut attrs_text) = tag.split_once(' ').unwrap_or((tag, ""));
        assert!(
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric()),
            "element name {name:?}"
        );
        let mut attrs = Vec::new();
        loop {
            attrs_text = attrs_text.trim_start();
            if attrs_text.is_empty() {
                break;
            }
            let eq = attrs_text.find("=\"").expect("attribute is name=\"value\"");
            let key = &attrs_text[..eq];
            assert!(
                key.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'),
                "attribute name {key:?}"
            );
            let after = &attrs_text[eq + 2..];
            let end = after.find('"').expect("attribute value closes");
            let value = &after[..end];
            assert!(!value.contains('<'), "< in attribute {value:?}");
            check_text(value);
            attrs.push((key.to_string(), value.to_string()));
            attrs_text = &after[end + 1..];
        }
        out.push((name.to_string(), attrs));
        if !self_closing {
            stack.push(name.to_string());
        }
    }
    check_text(rest);
    assert!(stack.is_empty(), "unclosed {stack:?}");
    assert_eq!(out.first().map(|e| e.0.as_str()), Some("svg"));
    out
}

fn attr<'a>(e: &'a (String, Vec<(String, String)>), key: &str) -> Option<&'a str> {
    e.1.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

fn figure(panels: Vec<Panel>) -> Figure {
    Figure {
        title: "a <title> & \"quotes\"".into(),
        notes: vec!["2 cores, noisy".into()],
        panels,
        columns: 2,
        panel_width: 400.0,
        panel_height: 260.0,
    }
}

fn panel(scale: Scale, series: Vec<Series>) -> Panel {
    Panel {
        title: "throughput vs size".into(),
        x_label: "payload".into(),
        y_label: "msgs/s".into(),
        x_scale: scale,
        x_unit: Unit::Bytes,
        series,
    }
}

fn line(name: &str, pts: &[(f64, f64)]) -> Series {
    Series {
        name: name.into(),
        points: pts.iter().map(|&(x, y)| Point::new(x, y)).collect(),
    }
}

/// Every number in a `points` attribute or coordinate attribute.
fn coords(els: &[(String, Vec<(String, String)>)]) -> Vec<f64> {
    let mut v = Vec::new();
    for e in els {
        for (k, val) in &e.1 {
            if k == "points" {
                for pair in val.split(' ') {
                    for n in pair.split(',') {
                        v.push(n.parse::<f64>().expect("a number"));
                    }
                }
            } else if ["x", "y", "x1", "x2", "y1", "y2", "cx", "cy"].contains(&k.as_str()) {
                v.push(val.parse::<f64>().expect("a number"));
            }
        }
    }
    v
}

#[test]
fn a_figure_is_well_formed_svg_with_every_series_named_and_inside_its_box() {
    let fig = figure(vec![
        panel(
            Scale::Log2,
            vec![
                line(
                    "uplink",
                    &[(16.0, 30_000.0), (1024.0, 25_000.0), (65536.0, 900.0)],
                ),
                line("p99 <ms>", &[(16.0, 5.0), (65536.0, 80.0)]),
            ],
        ),
        panel(Scale::Linear, vec![line("t", &[(0.0, 1.0), (2.5, 3.0)])]),
        panel(Scale::Linear, vec![]),
    ]);
    let svg = render(&fig);
    let els = elements(&svg);
    let svg_el = &els[0];
    let (w, h): (f64, f64) = (
        attr(svg_el, "width").unwrap().parse().unwrap(),
        attr(svg_el, "height").unwrap().parse().unwrap(),
    );
    assert_eq!(w, 800.0);
    assert!(h > 2.0 * 260.0, "two rows under a header: {h}");
    assert_eq!(attr(svg_el, "xmlns"), Some("http://www.w3.org/2000/svg"));
    // Self-contained: nothing fetched from anywhere.
    for bad in ["href", "<script", "<image", "url(", "@import"] {
        assert!(!svg.contains(bad), "{bad}");
    }
    let series: Vec<&str> = els.iter().filter_map(|e| attr(e, "data-series")).collect();
    assert_eq!(series, ["uplink", "p99 &lt;ms&gt;", "t"]);
    assert!(svg.contains("a &lt;title&gt; &amp; &quot;quotes&quot;"));
    let lines = els.iter().filter(|e| e.0 == "polyline").count();
    assert_eq!(lines, 3);
    for c in coords(&els) {
        assert!(c.is_finite() && (0.0..=w.max(h)).contains(&c), "{c}");
    }
    // The empty panel says so instead of drawing axes from nothing.
    assert!(svg.contains(">no data</text>"));
}

#[test]
fn log2_axis_puts_powers_of_two_evenly_and_labels_them_in_bytes() {
    let a = Axis::fit(Scale::Log2, &[16.0, 65536.0], false, 6).unwrap();
    // 2^4 … 2^16 with a quarter of a doubling of margin each side.
    assert_eq!((a.min, a.max), (3.75, 16.25));
    // 13 powers are too many labels: every second one.
    assert_eq!(a.ticks.first(), Some(&16.0));
    assert_eq!(a.ticks.last(), Some(&65536.0));
    assert_eq!(a.ticks.len(), 7);
    assert_eq!(a.frac(1024.0), Some(0.5));
    assert_eq!(a.frac(0.0), None);
    assert_eq!(a.frac(f64::NAN), None);
    let labels: Vec<String> = a.ticks.iter().map(|&t| label(t, Unit::Bytes)).collect();
    assert_eq!(
        labels,
        [
            "16 B", "64 B", "256 B", "1 KiB", "4 KiB", "16 KiB", "64 KiB"
        ]
    );
}

#[test]
fn linear_axis_starts_at_zero_and_ends_on_a_round_tick_above_the_data() {
    let a = Axis::fit(Scale::Linear, &[12_300.0, 48_700.0], true, 6).unwrap();
    assert_eq!(a.min, 0.0);
    assert_eq!(a.max, 50_000.0);
    assert_eq!(
        a.ticks,
        [0.0, 10_000.0, 20_000.0, 30_000.0, 40_000.0, 50_000.0]
    );
    assert_eq!(a.frac(25_000.0), Some(0.5));
    let labels: Vec<String> = a.ticks.iter().map(|&t| label(t, Unit::Number)).collect();
    assert_eq!(labels, ["0", "10k", "20k", "30k", "40k", "50k"]);
    assert_eq!(label(1_500_000.0, Unit::Number), "1.5M");
    assert_eq!(label(0.25, Unit::Number), "0.25");
    // Fractional data get fractional ticks, not a single tick at 0 and 1.
    let b = Axis::fit(Scale::Linear, &[0.12, 0.47], true, 6).unwrap();
    assert_eq!(b.max, 0.5);
    assert_eq!(b.ticks.len(), 6);
    // Time axes may take up to 10 intervals for a tighter fit: 0–35 s for a 31 s run.
    let t = Axis::fit(Scale::Linear, &[0.0, 31.0], false, 10).unwrap();
    assert_eq!((t.min, t.max, t.ticks.len()), (0.0, 35.0, 8));
    let t = Axis::fit(Scale::Linear, &[0.0, 31.0], false, 6).unwrap();
    assert_eq!(t.max, 40.0);
    assert_eq!(finer_step(10.0), 5.0);
    assert_eq!(finer_step(5.0), 2.0);
    assert_eq!(finer_step(0.2), 0.1);
}

#[test]
fn one_point_gets_a_range_around_it_and_a_marker_but_no_line() {
    let a = Axis::fit(Scale::Linear, &[7.0], false, 6).unwrap();
    assert!(a.min < 7.0 && 7.0 < a.max, "{a:?}");
    let z = Axis::fit(Scale::Linear, &[0.0], true, 6).unwrap();
    assert!(z.min == 0.0 && z.max > 0.0, "{z:?}");
    let l = Axis::fit(Scale::Log2, &[64.0], false, 6).unwrap();
    assert_eq!((l.min, l.max), (5.0, 7.0));
    assert_eq!(l.ticks, [32.0, 64.0, 128.0]);
    let svg = render(&figure(vec![panel(
        Scale::Log2,
        vec![line("one", &[(64.0, 5.0)])],
    )]));
    let els = elements(&svg);
    assert_eq!(els.iter().filter(|e| e.0 == "polyline").count(), 0);
    assert_eq!(els.iter().filter(|e| e.0 == "circle").count(), 1);
    assert!(!svg.contains("NaN") && !svg.contains("inf"));
}

#[test]
fn non_finite_values_break_the_line_and_never_reach_the_output() {
    let s = line(
        "latency",
        &[
            (0.0, 1.0),
            (1.0, 2.0),
            (2.0, f64::NAN),
            (3.0, 4.0),
            (4.0, 5.0),
            (f64::INFINITY, 6.0),
            (5.0, f64::NEG_INFINITY),
        ],
    );
    let svg = render(&figure(vec![panel(Scale::Linear, vec![s])]));
    let els = elements(&svg);
    // Two runs of two points, around the gap.
    let lines: Vec<&str> = els
        .iter()
        .filter(|e| e.0 == "polyline")
        .filter_map(|e| attr(e, "points"))
        .collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines.iter().all(|p| p.split(' ').count() == 2));
    for bad in ["NaN", "inf"] {
        assert!(!svg.contains(bad), "{bad}");
    }
    // A series of nothing but NaN is an empty panel, not a broken one.
    let svg = render(&figure(vec![panel(
        Scale::Linear,
        vec![line("x", &[(f64::NAN, f64::NAN)])],
    )]));
    elements(&svg);
    assert!(svg.contains("no data"));
}

#[test]
fn whiskers_widen_the_y_axis_and_are_drawn_around_the_point() {
    let s = Series {
        name: "median".into(),
        points: vec![
            Point {
                x: 1.0,
                y: 10.0,
                lo: Some(8.0),
                hi: Some(14.0),
            },
            Point {
                x: 2.0,
                y: 20.0,
                lo: Some(15.0),
                hi: Some(33.0),
            },
        ],
    };
    let svg = render(&figure(vec![panel(Scale::Linear, vec![s])]));
    let els = elements(&svg);
    // Whiskers are the lines with the series colour and width 1.
    let whiskers: Vec<_> = els
        .iter()
        .filter(|e| e.0 == "line" && attr(e, "stroke-width") == Some("1"))
        .collect();
    assert_eq!(whiskers.len(), 2);
    // The y axis reaches 33 (its top tick is 35 or 40), so 33 is inside the box.
    assert!(
        svg.contains(">35</text>") || svg.contains(">40</text>"),
        "{svg}"
    );
}
