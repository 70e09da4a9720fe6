use super::*;

const ALL: [ErrorCode; 19] = [
    ErrorCode::NotFound,
    ErrorCode::MethodNotAllowed,
    ErrorCode::NoIdentity,
    ErrorCode::BadIdentity,
    ErrorCode::Revoked,
    ErrorCode::UnsupportedEncoding,
    ErrorCode::UnsupportedMediaType,
    ErrorCode::TooLarge,
    ErrorCode::TooManyMessages,
    ErrorCode::Malformed,
    ErrorCode::BadSubject,
    ErrorCode::BadId,
    ErrorCode::BadHeader,
    ErrorCode::BodyTimeout,
    ErrorCode::BodyError,
    ErrorCode::Unavailable,
    ErrorCode::Busy,
    ErrorCode::RateLimited,
    ErrorCode::Internal,
];

#[test]
fn codes_round_trip_with_their_wire_names() {
    for code in ALL {
        let json = serde_json::to_string(&ErrorAnswer {
            error: code,
            detail: "d".into(),
        })
        .unwrap();
        assert!(json.contains(&format!("\"{}\"", code.as_str())), "{json}");
        assert_eq!(ErrorAnswer::parse(json.as_bytes()).unwrap().error, code);
    }
}

#[test]
fn verdicts_on_content_are_exactly_the_4xx_a_retry_cannot_fix() {
    for code in ALL {
        let s = code.status().as_u16();
        assert_eq!(
            code.is_verdict_on_content(),
            matches!(s, 400 | 413 | 415) && code != ErrorCode::BodyError,
            "{code:?}"
        );
    }
}

#[test]
fn unknown_codes_and_foreign_bodies() {
    let a = ErrorAnswer::parse(br#"{"error":"from_the_future","detail":"x"}"#).unwrap();
    assert_eq!(a.error, ErrorCode::Unknown);
    assert!(!a.error.is_verdict_on_content());
    assert!(ErrorAnswer::parse(b"<html>400 Bad Request</html>").is_none());
    assert!(ErrorAnswer::parse(br#"{"error":"malformed"}"#).is_none());
}

#[test]
fn accepted_confirms_only_the_whole_batch() {
    let a = Accepted::parse(br#"{"accepted":3,"duplicates":2}"#).unwrap();
    assert!(a.confirms(5));
    assert!(!a.confirms(4));
    assert!(Accepted::parse(br#"{"status":"ok"}"#).is_none());
    assert!(
        !Accepted {
            accepted: usize::MAX,
            duplicates: 1
        }
        .confirms(0)
    );
}
