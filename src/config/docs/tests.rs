#[test]
fn alternatives_pick_per_program() {
    let t = "{Edge|Cloud} stream of the {gateway|ingest}; {reason=\"x\"} stays";
    assert_eq!(
        super::pick_alternative(t, 0),
        "Edge stream of the gateway; {reason=\"x\"} stays"
    );
    assert_eq!(
        super::pick_alternative(t, 1),
        "Cloud stream of the ingest; {reason=\"x\"} stays"
    );
}

#[test]
fn doc_comments_become_the_docs() {
    settings! {
        /// Not a setting.
        #[allow(dead_code)]
        struct Example {
            /// First line.
            ///   indented second line.
            #[allow(unused)]
            pub a: u32,
            b: Vec<String>,
        }
    }
    use super::Documented;
    let f = Example::fields();
    assert_eq!(f[0].name, "a");
    assert_eq!(f[0].doc, "First line.\n  indented second line.");
    assert!(!f[0].flatten && f[1].doc.is_empty());
}
