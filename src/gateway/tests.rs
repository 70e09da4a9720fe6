use super::batches_url;
use super::consume::pull_max_bytes;
use super::deliver::confirms;

#[test]
fn a_pull_asks_for_four_batches_of_bytes_but_never_less_than_one_message() {
    // The defaults: a 1 MiB batch, a 1 MiB max_payload.
    assert_eq!(pull_max_bytes(1 << 20, 1 << 20), 4 << 20);
    assert_eq!(pull_max_bytes(8 << 20, 1 << 20), 32 << 20);
    // Batches smaller than the largest possible message still pull that message.
    assert_eq!(pull_max_bytes(4096, 8 << 20), (8 << 20) + (64 << 10));
}

#[test]
fn the_path_of_cloud_url_is_honoured() {
    let url = |s: &str| batches_url(&s.parse().unwrap()).map(|u| u.to_string());
    assert_eq!(url("https://h:8443").unwrap(), "https://h:8443/v1/batches");
    assert_eq!(url("https://h:8443/").unwrap(), "https://h:8443/v1/batches");
    assert_eq!(
        url("https://h/ingest/").unwrap(),
        "https://h/ingest/v1/batches"
    );
    assert!(
        url("https://h/x?y=1")
            .unwrap_err()
            .to_string()
            .contains("query")
    );
    assert!(url("/only/a/path").is_err());
}

#[test]
fn a_bind_refusal_is_explained_by_its_error_code_not_its_text() {
    use async_nats::jetstream;
    let server = |code: u64, text: &str| -> jetstream::Error {
        serde_json::from_value(
            serde_json::json!({"code": 400, "err_code": code, "description": text}),
        )
        .unwrap()
    };
    let second = super::consume::BindError::Consumer {
        consumer: "x".into(),
        stream: "TELEMETRY".into(),
        source: server(
            10099,
            "multiple non-filtered consumers not allowed on workqueue stream",
        )
        .into(),
    };
    let hint = second.hint().unwrap();
    assert!(
        hint.contains("nats.consumer") && hint.contains("nats.retention"),
        "{hint}"
    );
    // The code decides, whatever the text says.
    let storage = super::consume::BindError::CreateStream {
        stream: "TELEMETRY".into(),
        source: server(10047, "worded differently by a newer server").into(),
    };
    assert!(storage.hint().unwrap().contains("max_file_store"));
    let other = super::consume::BindError::Consumer {
        consumer: "x".into(),
        stream: "TELEMETRY".into(),
        source: server(10014, "multiple non-filtered consumers (said in passing)").into(),
    };
    assert!(other.hint().is_none());
    assert!(
        super::consume::BindError::Recreated("TELEMETRY".into())
            .hint()
            .is_none()
    );
}

#[test]
fn only_a_full_confirmation_acks() {
    assert!(confirms(br#"{"accepted":3,"duplicates":2}"#, 5));
    assert!(!confirms(br#"{"accepted":3,"duplicates":1}"#, 5));
    assert!(!confirms(b"", 5));
    assert!(!confirms(b"<html>ok</html>", 5));
    assert!(!confirms(br#"{"status":"ok"}"#, 5));
}
