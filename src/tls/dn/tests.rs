use super::*;

fn cn(dn: &str) -> Result<Option<String>, DnError> {
    common_name(dn)
}

fn some(s: &str) -> Result<Option<String>, DnError> {
    Ok(Some(s.to_string()))
}

#[test]
fn plain_rfc4514_and_nginx_spacing() {
    assert_eq!(cn("CN=edge-1"), some("edge-1"));
    assert_eq!(cn("CN=edge-1,O=Acme,C=DE"), some("edge-1"));
    assert_eq!(cn("C=DE,O=Acme,CN=edge-1"), some("edge-1"));
    // OpenSSL's other separator styles: ", ", " + ", " = ".
    assert_eq!(cn("O=Acme, CN=site-b"), some("site-b"));
    assert_eq!(cn("O = Acme , CN = site-b "), some("site-b"));
    assert_eq!(
        cn("CN=a b c"),
        some("a b c"),
        "inner spaces are the value's"
    );
}

#[test]
fn attribute_types_are_case_insensitive_or_oids() {
    assert_eq!(cn("cn=edge-1"), some("edge-1"));
    assert_eq!(cn("commonName=edge-1"), some("edge-1"));
    assert_eq!(cn("2.5.4.3=edge-1,o=Acme"), some("edge-1"));
    assert_eq!(cn("OU=cn,O=CN"), Ok(None), "values named cn are no CN");
}

#[test]
fn escaped_specials_stay_in_the_value() {
    assert_eq!(cn(r"CN=edge\,1"), some("edge,1"));
    assert_eq!(
        cn(r"O=Acme\, CN=admin,CN=edge-1"),
        some("edge-1"),
        "an escaped comma does not start an RDN"
    );
    assert_eq!(cn(r#"CN=\"q\"\+\\\<\>\;\="#), some(r#""q"+\<>;="#));
    assert_eq!(cn(r"CN=\#hash"), some("#hash"));
    assert_eq!(cn(r"CN=\ padded\ "), some(" padded "));
    assert_eq!(
        cn("CN=a=b"),
        some("a=b"),
        "`=` may stay unescaped in a value"
    );
}

#[test]
fn hex_escapes_decode_to_utf8() {
    assert_eq!(cn(r"CN=edge\2C1"), some("edge,1"));
    assert_eq!(cn(r"CN=edge\2c1"), some("edge,1"));
    assert_eq!(cn(r"CN=M\C3\BCnchen"), some("München"));
    assert_eq!(cn("CN=München"), some("München"));
    assert!(matches!(cn(r"CN=bad\C3"), Err(DnError::NotUtf8 { .. })));
}

#[test]
fn multi_valued_rdns() {
    assert_eq!(cn("CN=a+O=b"), some("a"));
    assert_eq!(cn("O=b + CN=a,C=DE"), some("a"));
    assert_eq!(
        parse("CN=a+O=b,C=DE").unwrap(),
        vec![
            vec![
                Attribute {
                    ty: "CN".into(),
                    value: Value::Text("a".into())
                },
                Attribute {
                    ty: "O".into(),
                    value: Value::Text("b".into())
                },
            ],
            vec![Attribute {
                ty: "C".into(),
                value: Value::Text("DE".into())
            }],
        ]
    );
}

#[test]
fn several_cns_are_ambiguous() {
    let two = Err(DnError::SeveralCommonNames { count: 2 });
    assert_eq!(cn("CN=edge-1,CN=admin"), two);
    assert_eq!(cn("CN=edge-1+CN=admin"), two);
    assert_eq!(cn("cn=edge-1,O=x,2.5.4.3=admin"), two);
    assert_eq!(cn("/CN=edge-1/CN=admin"), two);
    assert_eq!(cn("CN=,CN=admin"), two, "even when one is empty");
}

#[test]
fn no_or_empty_cn_is_none() {
    assert_eq!(cn("O=Acme"), Ok(None));
    assert_eq!(cn("CN="), Ok(None));
    assert_eq!(cn("CN= ,O=Acme"), Ok(None));
    assert_eq!(cn("/O=Acme"), Ok(None));
    assert_eq!(cn("/CN="), Ok(None));
}

#[test]
fn hex_encoded_values() {
    assert_eq!(cn("CN=#0c0465646765"), Err(DnError::HexCommonName));
    assert_eq!(
        cn("O=#0c0141,CN=edge-1"),
        some("edge-1"),
        "other attributes may be"
    );
    assert!(matches!(cn("CN=#abc"), Err(DnError::BadHex { .. })));
    assert!(matches!(cn("CN=#zz"), Err(DnError::BadHex { .. })));
    assert!(matches!(cn("CN=#aéa"), Err(DnError::BadHex { .. })));
    assert!(matches!(cn("CN=#"), Err(DnError::BadHex { .. })));
}

#[test]
fn legacy_slash_form() {
    assert_eq!(cn("/C=DE/O=Acme/CN=edge-2"), some("edge-2"));
    assert_eq!(cn("/cn=edge-2/O=Acme, Inc."), some("edge-2"));
    // No escaping in this form: a `/` in a value leaves a part without `=`.
    assert_eq!(
        cn("/O=Acme/CN=edge/2"),
        Err(DnError::MissingEquals { at: 16 })
    );
    assert!(matches!(cn("/C=DE/"), Err(DnError::MissingEquals { .. })));
}

#[test]
fn malformed_dns_say_what_is_wrong() {
    assert_eq!(cn(""), Err(DnError::Empty));
    assert_eq!(cn("   "), Err(DnError::Empty));
    assert_eq!(cn("edge-1"), Err(DnError::MissingEquals { at: 0 }));
    assert_eq!(cn("CN=a,"), Err(DnError::MissingEquals { at: 5 }));
    assert_eq!(cn("CN=a,,O=b"), Err(DnError::MissingEquals { at: 5 }));
    assert_eq!(cn("CN=a+"), Err(DnError::MissingEquals { at: 5 }));
    assert!(matches!(cn("C N=a"), Err(DnError::BadType { .. })));
    assert!(matches!(cn("=a"), Err(DnError::BadType { .. })));
    assert!(matches!(cn("2.5..3=a"), Err(DnError::BadType { .. })));
    assert_eq!(cn(r"CN=a\"), Err(DnError::DanglingEscape));
    assert_eq!(cn(r"CN=a\4"), Err(DnError::DanglingEscape));
    assert_eq!(cn(r"CN=a\q"), Err(DnError::BadEscape { at: 4, found: 'q' }));
    assert_eq!(
        cn(r"CN=a\4g"),
        Err(DnError::BadEscape { at: 4, found: '4' })
    );
    assert_eq!(
        cn("CN=a;O=b"),
        Err(DnError::Unescaped { at: 4, found: ';' })
    );
    assert!(matches!(cn("CN=\"a\""), Err(DnError::Unescaped { .. })));
    assert!(matches!(cn("CN=a\0b"), Err(DnError::Unescaped { .. })));
    let e = cn("CN=a,CN=b").unwrap_err().to_string();
    assert!(e.contains("2 CN") && e.contains("ambiguous"), "{e}");
}

#[test]
fn escape_value_round_trips_awkward_values() {
    for v in [
        "edge-1",
        "a,b+c",
        "#lead",
        " lead",
        "trail ",
        " ",
        "  ",
        r#"\"<>;="#,
        "tab\tnul\0",
        "München",
        "a / b",
    ] {
        let dn = format!("O=x,CN={},C=DE", escape_value(v));
        assert_eq!(common_name(&dn), Ok(Some(v.to_string())), "{dn}");
    }
}

mod proptests {
    //! Properties of the DN parser over generated input (bounded: 256 cases each).

    use proptest::prelude::*;

    use super::super::*;

    /// Strings made mostly of the characters that matter to a DN.
    fn near_dn() -> impl Strategy<Value = String> {
        prop::collection::vec(
            prop_oneof![
                prop::sample::select(vec![
                    ',', '+', '=', '\\', '#', '"', ';', '<', '>', '/', ' ', 'C', 'N', 'c', 'n',
                    'O', '2', 'c', 'F', '.', '\0',
                ]),
                any::<char>(),
            ],
            0..64,
        )
        .prop_map(|cs| cs.into_iter().collect())
    }

    fn cn_type() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec!["CN", "cn", "Cn", "commonName", "2.5.4.3"])
    }

    proptest! {
        #![proptest_config(crate::proptest_config::bounded(256))]

        #[test]
        fn never_panics(s in prop_oneof![any::<String>(), near_dn()]) {
            let _ = parse(&s);
            let _ = common_name(&s);
        }

        #[test]
        fn an_escaped_cn_round_trips(value in any::<String>(), ty in cn_type(), plus in any::<bool>()) {
            let cn = format!("{ty}={}", escape_value(&value));
            let dn = if plus {
                format!("O=Acme,{cn}+OU=ops,C=DE")
            } else {
                format!("O=Acme, {cn} ,C=DE")
            };
            let want = (!value.is_empty()).then(|| value.clone());
            prop_assert_eq!(common_name(&dn), Ok(want), "{}", dn);
        }

        #[test]
        fn an_escaped_value_never_becomes_a_cn(value in prop_oneof![any::<String>(), near_dn()]) {
            let dn = format!("O={},C=DE", escape_value(&value));
            prop_assert_eq!(common_name(&dn), Ok(None), "{}", dn);
        }

        #[test]
        fn two_cns_are_always_refused(
            a in any::<String>(),
            b in any::<String>(),
            ta in cn_type(),
            tb in cn_type(),
            same_rdn in any::<bool>(),
        ) {
            let sep = if same_rdn { "+" } else { "," };
            let dn = format!(
                "O=Acme,{ta}={}{sep}{tb}={},C=DE",
                escape_value(&a),
                escape_value(&b)
            );
            prop_assert_eq!(
                common_name(&dn),
                Err(DnError::SeveralCommonNames { count: 2 }),
                "{}",
                dn
            );
        }

        #[test]
        fn legacy_form_values_without_slash(value in "[^/]{0,32}") {
            let dn = format!("/C=DE/O=Acme/CN={value}");
            let want = (!value.is_empty()).then(|| value.clone());
            prop_assert_eq!(common_name(&dn), Ok(want), "{}", dn);
        }
    }
}
