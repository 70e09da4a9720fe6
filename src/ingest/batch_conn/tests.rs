use super::*;

#[test]
fn an_hpub_carries_the_header_block_the_id_and_the_payload() {
    let mut headers = super::super::sink::Headers::default();
    headers.append("Tag", "x").unwrap();
    let mut buf = Vec::new();
    push_hpub(
        &mut buf,
        "up.p.a",
        &["_INBOX.i.b.500.fail.", "1", ".0.$FI"],
        headers.block(),
        "p.1",
        b"pay",
    );
    let block = "NATS/1.0\r\nTag: x\r\nNats-Msg-Id: p.1\r\n\r\n";
    let want = format!(
        "HPUB up.p.a _INBOX.i.b.500.fail.1.0.$FI {} {}\r\n{block}pay\r\n",
        block.len(),
        block.len() + 3
    );
    assert_eq!(String::from_utf8(buf).unwrap(), want);
    // The size the ingest checks against max_payload is what goes on the wire.
    assert_eq!(headers.block_len("p.1"), block.len());
}
