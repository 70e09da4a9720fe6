//! The one classification of a failed attempt, by value.

use super::*;

#[test]
fn statuses() {
    use http::StatusCode as S;
    let ingest = br#"{"error":"malformed","detail":"x"}"#;
    assert_eq!(of_answer(S::BAD_REQUEST, ingest), Retry::Never);
    assert_eq!(of_answer(S::PAYLOAD_TOO_LARGE, ingest), Retry::Never);
    assert_eq!(of_answer(S::UNSUPPORTED_MEDIA_TYPE, ingest), Retry::Never);
    // The same statuses from something that is not the ingest: keep and retry.
    let nginx = b"<html>400 No required SSL certificate was sent</html>";
    assert_eq!(of_answer(S::BAD_REQUEST, nginx), Retry::Backoff);
    assert_eq!(of_answer(S::PAYLOAD_TOO_LARGE, b""), Retry::Backoff);
    // Identity, routing and misdirection problems are setup errors, not bad messages.
    assert_eq!(of_answer(S::FORBIDDEN, ingest), Retry::Backoff);
    assert_eq!(of_answer(S::NOT_FOUND, ingest), Retry::Backoff);
    assert_eq!(of_answer(S::MISDIRECTED_REQUEST, b""), Retry::Backoff);
    assert_eq!(of_answer(S::REQUEST_TIMEOUT, ingest), Retry::Backoff);
    assert_eq!(of_answer(S::TOO_MANY_REQUESTS, b""), Retry::Backoff);
    assert_eq!(of_answer(S::SERVICE_UNAVAILABLE, ingest), Retry::Backoff);
    assert_eq!(of_answer(S::INTERNAL_SERVER_ERROR, b""), Retry::Backoff);
    assert_eq!(of_answer(S::BAD_GATEWAY, b""), Retry::Backoff);
    // The ingest's 400 for a body that broke off, or an unknown code, is not a verdict.
    let broke = br#"{"error":"body_error","detail":"reset"}"#;
    assert_eq!(of_answer(S::BAD_REQUEST, broke), Retry::Backoff);
    let newer = br#"{"error":"from_a_newer_ingest","detail":"x"}"#;
    assert_eq!(of_answer(S::BAD_REQUEST, newer), Retry::Backoff);
    // A share of the ingest's memory that is full: retry later, never dead-letter.
    let busy = br#"{"error":"busy","detail":"x"}"#;
    assert_eq!(of_answer(S::SERVICE_UNAVAILABLE, busy), Retry::Backoff);
}

#[test]
fn back_pressure_and_setup_problems_are_told_apart() {
    use http::StatusCode as S;
    for s in [
        S::REQUEST_TIMEOUT,
        S::TOO_MANY_REQUESTS,
        S::SERVICE_UNAVAILABLE,
    ] {
        assert!(is_back_pressure(s), "{s}");
        assert!(!is_setup(s), "{s}");
    }
    for s in [
        S::BAD_REQUEST,
        S::FORBIDDEN,
        S::NOT_FOUND,
        S::MISDIRECTED_REQUEST,
    ] {
        assert!(is_setup(s), "{s}");
        assert!(!is_back_pressure(s), "{s}");
    }
    for s in [S::INTERNAL_SERVER_ERROR, S::BAD_GATEWAY, S::GATEWAY_TIMEOUT] {
        assert!(!is_setup(s) && !is_back_pressure(s), "{s}");
    }
    let timeout = Err(ForwardError::RequestTimeout {
        after: std::time::Duration::from_secs(1),
    });
    assert!(was_back_pressure(&timeout));
    assert!(!was_back_pressure(&Err(ForwardError::NotSent)));
}
