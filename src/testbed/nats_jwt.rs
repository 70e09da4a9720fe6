//! A decentralized-auth NATS deployment in miniature, for tests: an operator, one account with
//! JetStream and one user, as JWTs signed with freshly made nkeys — what `nsc` would make —
//! so a creds file can be tested against a real nats-server in operator mode.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use data_encoding::BASE64URL_NOPAD;
use nkeys::KeyPair;
use serde_json::{Value, json};

/// An operator, its account (JetStream enabled, no limits) and a user of that account.
pub struct Operator {
    pub operator_jwt: String,
    pub account: String,
    pub account_jwt: String,
    /// The system account (JetStream needs one in operator mode).
    pub system: String,
    pub system_jwt: String,
    /// The user's creds file text (user JWT + user seed).
    pub user_creds: String,
}

impl Operator {
    pub fn new() -> anyhow::Result<Self> {
        let operator = KeyPair::new_operator();
        let account = KeyPair::new_account();
        let user = KeyPair::new_user();
        let system = KeyPair::new_account();
        let system_jwt = sign(
            &operator,
            &system.public_key(),
            "SYS",
            json!({ "type": "account", "version": 2 }),
        )?;
        let operator_jwt = sign(
            &operator,
            &operator.public_key(),
            "uplink-test-operator",
            json!({ "type": "operator", "version": 2 }),
        )?;
        let account_jwt = sign(
            &operator,
            &account.public_key(),
            "UPLINK",
            json!({
                "type": "account",
                "version": 2,
                "limits": {
                    "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
                    "wildcards": true, "conn": -1, "leaf": -1,
                    // Non-zero storage limits are what enables JetStream for the account.
                    "mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1
                },
                "default_permissions": { "pub": {}, "sub": {} }
            }),
        )?;
        let user_jwt = sign(
            &account,
            &user.public_key(),
            "uplink",
            json!({
                "type": "user", "version": 2,
                "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1
            }),
        )?;
        let seed = user.seed().context("user seed")?;
        let user_creds = format!(
            "-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n\
             ************************* IMPORTANT *************************\n\
             NKEY Seed printed below can be used to sign and prove identity.\n\n\
             -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
        );
        Ok(Operator {
            operator_jwt,
            account: account.public_key(),
            account_jwt,
            system: system.public_key(),
            system_jwt,
            user_creds,
        })
    }
}

/// A NATS JWT (`ed25519-nkey`): `issuer` signs claims about `subject`.
fn sign(issuer: &KeyPair, subject: &str, name: &str, nats: Value) -> anyhow::Result<String> {
    let header = json!({ "typ": "JWT", "alg": "ed25519-nkey" });
    let iat = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let claims = json!({
        // A unique id per token; servers do not recompute it.
        "jti": format!("{:016X}{:016X}", fastrand::u64(..), fastrand::u64(..)),
        "iat": iat,
        "iss": issuer.public_key(),
        "name": name,
        "sub": subject,
        "nats": nats,
    });
    let signing_input = format!(
        "{}.{}",
        BASE64URL_NOPAD.encode(header.to_string().as_bytes()),
        BASE64URL_NOPAD.encode(claims.to_string().as_bytes())
    );
    let sig = issuer
        .sign(signing_input.as_bytes())
        .map_err(|e| anyhow::anyhow!("signing a JWT: {e}"))?;
    Ok(format!("{signing_input}.{}", BASE64URL_NOPAD.encode(&sig)))
}

impl std::fmt::Debug for Operator {
    // The creds text holds the user's seed: show only who this is.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Operator")
            .field("account", &self.account)
            .finish_non_exhaustive()
    }
}
