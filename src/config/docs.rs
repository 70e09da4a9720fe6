//! One line (or a few) of documentation per setting, with unit and default rationale, printed by
//! `uplink config defaults`. A unit test checks every key has one and no doc is stale.

pub const GATEWAY_DOCS: &[(&str, &str)] = &[
    (
        "platform",
        "Platform name used in message ids and cloud subjects. Empty = the CN of the client certificate.",
    ),
    (
        "trace_h2",
        "Log every HTTP/2 frame sent and received (target uplink::h2, level info); also --trace-h2\nor UPLINK_TRACE_H2=1. Verbose: for investigations.",
    ),
    ("nats", "Edge NATS JetStream: where the gateway reads from."),
    (
        "nats.url",
        "Edge NATS server URL, or several comma-separated (nats://a:4222,nats://b:4222); nats:// or\ntls:// (tls:// = TLS required). Servers the cluster announces are added. Keep credentials out\nof the URL: use the keys below.",
    ),
    (
        "nats.creds",
        "Credentials file (user JWT + nkey seed, as `nsc generate creds` writes); empty = none.\nExclusive with nats.nkey, nats.user/password, nats.token.",
    ),
    (
        "nats.nkey",
        "File holding a user nkey seed (SU…); empty = none. Exclusive with the other credentials.",
    ),
    (
        "nats.user",
        "User name for user/password authentication (with nats.password); empty = none.",
    ),
    (
        "nats.password",
        "Password of nats.user; never printed (logs and Debug show \"(set)\"). Prefer the environment:\nUPLINK_GATEWAY_NATS__PASSWORD.",
    ),
    (
        "nats.token",
        "Authentication token; empty = none; never printed. Prefer UPLINK_GATEWAY_NATS__TOKEN.",
    ),
    (
        "nats.connect_timeout",
        "Timeout of one connection attempt to a NATS server, TLS and authentication included\n(duration). The gateway retries forever, also when the server refuses the credentials\n(logged at error with the keys to check; /readyz says why).",
    ),
    (
        "nats.tls",
        "TLS to NATS. Used when the server asks for it (its INFO), a tls:// URL is given, or\nnats.tls.required.",
    ),
    (
        "nats.tls.ca",
        "PEM CA bundle that signs the NATS servers' certificates; empty = the system's trusted roots.",
    ),
    (
        "nats.tls.cert",
        "PEM client certificate chain, for servers with `verify: true`; empty = none (with nats.tls.key).",
    ),
    ("nats.tls.key", "PEM private key of nats.tls.cert."),
    (
        "nats.tls.required",
        "Refuse to talk to a NATS server without TLS.",
    ),
    (
        "nats.max_age",
        "Edge stream retention when the gateway creates it: drop messages older than this (duration;\n\"0s\" = no limit). Default 7 days. An existing stream keeps its own limits.",
    ),
    (
        "nats.max_bytes",
        "Edge stream size limit when created (bytes; -1 = no limit). Default 1 GiB, so a long outage\ncannot fill the disk; JetStream reserves it at creation and refuses more than its storage\n(max_store). Size it to the device: hours of outage × message rate × message size.",
    ),
    (
        "nats.max_msgs",
        "Edge stream message-count limit when created (messages; -1 = no limit).",
    ),
    (
        "nats.discard",
        "When the edge stream is full: \"new\" = refuse publishes (collectors see the error; nothing\nbuffered is dropped), \"old\" = drop the oldest messages, forwarded or not. Used when created.",
    ),
    ("nats.stream", "Edge stream name."),
    (
        "nats.subjects",
        "Subjects of the edge stream (used when the stream is created).",
    ),
    (
        "nats.retention",
        "Retention of the edge stream the gateway creates: \"work_queue\" (a message leaves it once\nacked: the stream holds the backlog, the limits bound an outage) or \"limits\" (acked\nmessages stay for other local consumers until max_age/max_bytes/max_msgs — with\ndiscard = \"new\" a full stream then refuses publishes although everything was delivered).\nAn existing stream keeps its own.",
    ),
    (
        "nats.create_stream",
        "Create the edge stream when it does not exist: file storage, work-queue retention (a message\nleaves it once the gateway acked it, so the limits below bound the backlog, not the history).",
    ),
    (
        "nats.consumer",
        "Durable pull consumer name; created when missing (explicit ack).",
    ),
    (
        "nats.ack_wait",
        "JetStream ack_wait of the consumer (duration). Messages still being retried get\n`in_progress` every third of it, so they are not redelivered meanwhile.",
    ),
    (
        "nats.max_ack_pending",
        "JetStream max_ack_pending (messages): bounds what the gateway holds unacked.",
    ),
    (
        "nats.recreate_grace",
        "When a bound edge stream disappears, how long to wait for someone else to recreate it before\ncreating it ourselves (duration; racing a recreate can leave nats-server 2.9 with a stuck consumer).",
    ),
    (
        "cloud",
        "The ingest endpoint and the client's mTLS identity.",
    ),
    (
        "cloud.url",
        "Ingest base URL, https only (mTLS is always on); batches go to <url path>/v1/batches\n(a path such as https://gw.example/ingest is kept, for an ingest behind a proxy route).",
    ),
    (
        "cloud.server_name",
        "TLS server name to verify; empty = the host of cloud.url.",
    ),
    (
        "cloud.ca",
        "PEM CA bundle that signs the ingest's certificate.",
    ),
    (
        "cloud.cert",
        "PEM client certificate chain (its CN is the platform identity).",
    ),
    ("cloud.key", "PEM private key of the client certificate."),
    ("batch", "How messages are grouped into one request."),
    ("batch.max_messages", "Most messages in one batch."),
    (
        "batch.max_bytes",
        "Most payload+header bytes in one batch (bytes, before compression).",
    ),
    (
        "batch.linger",
        "Longest a partial batch waits for more messages (duration): the upper bound. With\nbatch.adaptive the batch usually leaves sooner.",
    ),
    (
        "batch.adaptive",
        "Adaptive linger (true): a partial batch is sent as soon as the pipe is idle, i.e. a send slot\n(forward.max_in_flight) is free and no further message is ready from the edge consumer; under\nload (every slot busy, messages arriving) batches still fill up to max_messages/max_bytes.\nfalse: a partial batch always waits batch.linger.",
    ),
    (
        "batch.compression",
        "Body encoding: identity, gzip or zstd.",
    ),
    ("batch.zstd_level", "zstd level (1..=22); 1 is fastest."),
    ("forward", "HTTP/2 forwarding."),
    (
        "forward.max_in_flight",
        "Most batches being sent at once (requests); the consumer stops pulling when reached.",
    ),
    (
        "forward.connections",
        "HTTP/2 connections kept to the ingest.",
    ),
    (
        "forward.max_requests_per_connection",
        "Rotate a connection after this many requests (below nginx's keepalive_requests 1000).",
    ),
    (
        "forward.max_connection_age",
        "Rotate a connection older than this (duration).",
    ),
    (
        "forward.on_rejected",
        "Messages the ingest refuses for their content (its JSON 400/413/415; the batch is split until\nthey are alone): \"term\" = log, count and term them in JetStream (kept in the edge stream, not\nredelivered); \"keep\" = nak them for redelivery after retry.max_backoff.",
    ),
    (
        "forward.full_warning",
        "Log a warning (once per crossing) when the edge stream would reach its max_bytes or\nmax_msgs within this horizon at its current net growth (duration, 1h; \"0s\" = never warn).",
    ),
    (
        "forward.sample_interval",
        "How often the edge consumer's backlog, lag and the edge stream's limit usage are sampled\nfor /metrics (duration, 5s; rates are averaged over the last minute).",
    ),
    ("timeouts", "Every client timeout is finite."),
    ("timeouts.connect", "TCP connect timeout (duration)."),
    (
        "timeouts.tls_handshake",
        "TLS handshake deadline from accept (duration, 5s): unauthenticated connections hold\nlimits.max_handshakes only this long.",
    ),
    (
        "timeouts.request",
        "Whole-request timeout, headers to end of response (duration); must be < nats.ack_wait.",
    ),
    (
        "timeouts.idle",
        "Close a connection unused this long (duration); below nginx's keepalive_timeout 75s.",
    ),
    (
        "timeouts.ping_interval",
        "HTTP/2 PING interval to detect half-open connections (duration).",
    ),
    (
        "timeouts.ping_timeout",
        "A PING unanswered this long closes the connection (duration).",
    ),
    (
        "timeouts.shutdown_grace",
        "On SIGTERM/SIGINT, how long in-flight batches may finish before the rest are nak'ed (duration).",
    ),
    (
        "retry",
        "Backoff for ambiguous failures (exponential, full jitter). Requests the server provably did not\nprocess are retried at once.",
    ),
    ("retry.initial_backoff", "First backoff ceiling (duration)."),
    ("retry.max_backoff", "Largest backoff ceiling (duration)."),
    (
        "admin",
        "Admin listener (plain HTTP): /healthz, /readyz, /deliveryz, /metrics, /status, /status.json.",
    ),
    (
        "admin.listen",
        "Admin listen address; port 0 picks a free one.",
    ),
];

pub const INGEST_DOCS: &[(&str, &str)] = &[
    (
        "listen",
        "mTLS listen address (ALPN h2 and http/1.1); port 0 picks a free one.",
    ),
    (
        "trace_h2",
        "Log every HTTP/2 frame sent and received (target uplink::h2, level info); also --trace-h2\nor UPLINK_TRACE_H2=1. Verbose: for investigations.",
    ),
    (
        "tls",
        "Server certificate and the CA that client certificates must chain to.",
    ),
    (
        "tls.ca",
        "PEM CA bundle for client certificates (required, verified; re-read when it changes).",
    ),
    (
        "tls.cert",
        "PEM server certificate chain (re-read when it changes).",
    ),
    (
        "tls.key",
        "PEM server private key (re-read when it changes).",
    ),
    (
        "tls.deny_list",
        "File of revoked platforms, one per line (# comments); empty path = none. Re-read when it\nchanges: new handshakes of a listed platform fail, its requests on open connections get 403.",
    ),
    (
        "nats",
        "Cloud NATS JetStream: where accepted messages are persisted.",
    ),
    (
        "nats.url",
        "Cloud NATS server URL, or several comma-separated (nats://a:4222,nats://b:4222); nats:// or\ntls:// (tls:// = TLS required). Servers the cluster announces are added. Keep credentials out\nof the URL: use the keys below.",
    ),
    (
        "nats.creds",
        "Credentials file (user JWT + nkey seed, as `nsc generate creds` writes); empty = none.\nExclusive with nats.nkey, nats.user/password, nats.token.",
    ),
    (
        "nats.nkey",
        "File holding a user nkey seed (SU…); empty = none. Exclusive with the other credentials.",
    ),
    (
        "nats.user",
        "User name for user/password authentication (with nats.password); empty = none.",
    ),
    (
        "nats.password",
        "Password of nats.user; never printed (logs and Debug show \"(set)\"). Prefer the environment:\nUPLINK_INGEST_NATS__PASSWORD.",
    ),
    (
        "nats.token",
        "Authentication token; empty = none; never printed. Prefer UPLINK_INGEST_NATS__TOKEN.",
    ),
    (
        "nats.connect_timeout",
        "Timeout of one connection attempt to a NATS server, TLS and authentication included\n(duration). The ingest retries forever, also when the server refuses the credentials\n(logged at error with the keys to check; /readyz says why).",
    ),
    (
        "nats.tls",
        "TLS to NATS. Used when the server asks for it (its INFO), a tls:// URL is given, or\nnats.tls.required.",
    ),
    (
        "nats.tls.ca",
        "PEM CA bundle that signs the NATS servers' certificates; empty = the system's trusted roots.",
    ),
    (
        "nats.tls.cert",
        "PEM client certificate chain, for servers with `verify: true`; empty = none (with nats.tls.key).",
    ),
    ("nats.tls.key", "PEM private key of nats.tls.cert."),
    (
        "nats.tls.required",
        "Refuse to talk to a NATS server without TLS.",
    ),
    (
        "nats.max_age",
        "Cloud stream retention when the ingest creates it (duration; \"0s\" = no limit, the default:\ndownstream consumers own the cloud stream). Must be at least nats.duplicate_window when set.",
    ),
    (
        "nats.max_bytes",
        "Cloud stream size limit when created (bytes; -1 = no limit, the default).",
    ),
    (
        "nats.max_msgs",
        "Cloud stream message-count limit when created (messages; -1 = no limit, the default).",
    ),
    (
        "nats.discard",
        "When the cloud stream is full: \"old\" = drop the oldest (default), \"new\" = refuse publishes\n(the ingest answers 503 and the backlog waits at the edge). Used when created.",
    ),
    ("nats.stream", "Cloud stream name."),
    (
        "nats.subjects",
        "Subjects of the cloud stream (used when it is created).",
    ),
    (
        "nats.subject_prefix",
        "Cloud subject = <prefix>.<platform>.<edge subject>.",
    ),
    (
        "nats.create_stream",
        "Create the cloud stream (file storage) when it does not exist.",
    ),
    ("nats.replicas", "Stream replicas when created (1..=5)."),
    (
        "nats.duplicate_window",
        "JetStream duplicate window (duration): retries within it are dropped by Nats-Msg-Id.",
    ),
    (
        "nats.max_pending_acks",
        "Most publishes awaiting their PubAck at once (messages); requests wait beyond it.",
    ),
    ("limits", "Request limits."),
    (
        "limits.max_body_bytes",
        "Largest request body on the wire (bytes); larger gets 413.",
    ),
    (
        "limits.max_decoded_bytes",
        "Largest decompressed batch (bytes); larger gets 413.",
    ),
    (
        "limits.max_inflight_bytes",
        "Most request bytes (bodies as they arrive, decompressed output, decoded messages) held at\nonce across all requests: the ingest's memory bound. A request waits for room at most\nuntil timeouts.request_body from its start, then gets 503 busy.",
    ),
    (
        "limits.max_inflight_bytes_per_connection",
        "Most of limits.max_inflight_bytes one connection may hold (bytes); beyond it its requests\nget 503 busy at once.",
    ),
    (
        "limits.max_inflight_bytes_per_platform",
        "Most of limits.max_inflight_bytes one platform may hold over all its connections (bytes);\nbeyond it its requests get 503 busy at once.",
    ),
    (
        "limits.max_messages_per_second_per_platform",
        "Quota: messages per second one platform may send (a token bucket holding one second of\nit); over it, 429 rate_limited with Retry-After, which the gateway waits and retries\n(messages kept). 0 = no quota.",
    ),
    (
        "limits.max_bytes_per_second_per_platform",
        "Quota: request body bytes per second (as received, compressed) one platform may send;\n429 rate_limited with Retry-After over it. 0 = no quota.",
    ),
    (
        "limits.max_requests_in_flight_per_platform",
        "Quota: requests one platform may have in progress at once, over all its connections;\n429 rate_limited (Retry-After: 1) over it. 0 = no quota.",
    ),
    (
        "limits.max_pending_acks_per_platform",
        "Fairness: most messages of one platform being persisted (awaiting their PubAck) at once;\nits further requests wait in order for room (503 busy after timeouts.request_body). One\nplatform draining a backlog then queues at most this many messages at the cloud server\nahead of everyone else's. 0 = no share (only nats.max_pending_acks, for all).",
    ),
    (
        "limits.max_messages_per_batch",
        "Most messages in one batch; more gets 413.",
    ),
    (
        "limits.max_connections",
        "Most client connections at once (including those still in the TLS handshake or lingering\nafter close); a connection beyond it is accepted and closed at once, counted in\nuplink_ingest_connections_refused_total{reason=\"max_connections\"}.",
    ),
    (
        "limits.max_handshakes",
        "Most connections still in the TLS handshake at once (256): the budget of unauthenticated\nclients, so a flood of bare TCP connections cannot fill limits.max_connections; beyond it a new\nconnection is closed at once (reason=\"max_handshakes\").",
    ),
    (
        "limits.max_handshakes_per_ip",
        "Most connections in the TLS handshake from one source address (16); beyond it closed at once\n(reason=\"max_handshakes_per_ip\"). Raise it for many clients behind one NAT address.",
    ),
    (
        "limits.listen_backlog",
        "Listen backlog of the client (and proxy) listener (connections, 1024; capped by the kernel's\nnet.core.somaxconn). The accept loop never stops accepting, so it only absorbs bursts.",
    ),
    (
        "http2",
        "HTTP/2 server settings (nginx names in parentheses).",
    ),
    (
        "http2.max_concurrent_streams",
        "SETTINGS_MAX_CONCURRENT_STREAMS (http2_max_concurrent_streams, 128).",
    ),
    (
        "http2.max_requests_per_connection",
        "Graceful GOAWAY after this many requests on a connection (keepalive_requests, 1000).",
    ),
    (
        "http2.max_header_list_bytes",
        "SETTINGS_MAX_HEADER_LIST_SIZE (bytes).",
    ),
    (
        "http2.goaway_quiet",
        "Graceful close: the final GOAWAY (with the real last stream id) waits until the client opened\nno new stream for this long after acknowledging the first GOAWAY (duration, 100ms), so streams\nracing the GOAWAY are served, not refused (clients that cannot replay a body).",
    ),
    (
        "http2.goaway_max_wait",
        "Upper bound of that wait (duration, 1s), for a client that keeps opening streams.",
    ),
    ("timeouts", "Every server timeout is finite."),
    (
        "timeouts.tls_handshake",
        "TLS handshake timeout (duration).",
    ),
    (
        "timeouts.idle",
        "Close a connection without requests for this long with GOAWAY (keepalive_timeout, 75s).",
    ),
    (
        "timeouts.max_connection_age",
        "GOAWAY a connection older than this (keepalive_time, 1h).",
    ),
    (
        "timeouts.request_body",
        "Longest time to receive a request body (duration; client_body_timeout): slow-loris guard.",
    ),
    (
        "timeouts.publish",
        "Longest wait for JetStream PubAcks of one request before answering 503 (duration).",
    ),
    (
        "timeouts.shutdown_grace",
        "On SIGTERM/SIGINT: GOAWAY every connection, then wait this long for in-flight requests (duration).",
    ),
    (
        "timeouts.preface",
        "A TLS connection that has not sent the HTTP/2 client preface (HTTP/1.1: its first request)\nwithin this long after the handshake is closed (duration, 10s). Only before the first bytes:\nan idle connection after requests is timeouts.idle's.",
    ),
    (
        "timeouts.linger",
        "Lingering close (nginx lingering_timeout): after ending a connection the ingest half-closes it\nand reads and discards what the client still sends for at most this long, so a TCP reset cannot\ndestroy responses already written (duration, 3s).",
    ),
    (
        "admin",
        "Admin listener (plain HTTP): /healthz, /readyz, /metrics, /status, /status.json.",
    ),
    (
        "admin.listen",
        "Admin listen address; port 0 picks a free one.",
    ),
    (
        "proxy",
        "Behind a TLS-terminating proxy (nginx) that verifies client certificates itself.",
    ),
    (
        "proxy.listen",
        "Plain HTTP/1.1 listener for the proxy; empty = off. Only proxy.trusted peers are served.",
    ),
    (
        "proxy.trusted",
        "IP addresses of trusted proxies; connections from others are closed at once.",
    ),
    (
        "proxy.identity_header",
        "Header with the verified client certificate subject DN (nginx: $ssl_client_s_dn); its CN is the platform.",
    ),
    (
        "proxy.verify_header",
        "Header with the proxy's verification result (nginx: $ssl_client_verify); must be SUCCESS.",
    ),
];
