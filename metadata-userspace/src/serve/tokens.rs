//! Session tokens with the semantics of AWS IMDSv2, on the datapath's
//! proxy: `PUT /latest/api/token` with a TTL header gives a token; a
//! request carrying one is served only when it is valid for the asking
//! instance; in `required` mode a request without one gets 401.
//!
//! Tokens are stateless: a version byte, the expiry, and an HMAC-SHA256
//! over both and the instance id, with a key kept under `state_dir`. They
//! survive restarts and upgrades, cost no memory per token, and all die
//! when the key file is removed (a rotation).

use std::{
    fs,
    io::Write as _,
    os::unix::fs::OpenOptionsExt as _,
    path::Path,
    time::{SystemTime, UNIX_EPOCH},
};

use base64::Engine as _;
use hmac::{Hmac, Mac as _};
use http::{HeaderMap, HeaderValue, Method, StatusCode, request::Parts};
use sha2::Sha256;

use crate::{
    backends::Reply,
    config::{TokenMode, TokensConfig},
    inventory::Identity,
};

/// The key file under `state_dir`.
pub const KEY_FILE: &str = "token.key";
const VERSION: u8 = 1;
const MAX_TTL: u64 = 21_600;
const TOKEN_PATH: &str = "/latest/api/token";
/// AWS's header names, then Firecracker's.
const TTL_HEADERS: [&str; 2] = [
    "x-aws-ec2-metadata-token-ttl-seconds",
    "x-metadata-token-ttl-seconds",
];
const TOKEN_HEADERS: [&str; 2] = ["x-aws-ec2-metadata-token", "x-metadata-token"];

#[derive(Debug, thiserror::Error)]
#[error("{what} {}: {source}", path.display())]
pub struct TokenKeyError {
    what: &'static str,
    path: std::path::PathBuf,
    source: std::io::Error,
}

/// What to do with one request.
#[derive(Debug)]
pub enum Decision {
    /// Pass it to the backend.
    Serve,
    /// Answer it here.
    Reply(Reply),
    /// A new token: answer it here, with the hop limit on the socket.
    Token(Reply, u8),
}

/// The key and the policy.
#[derive(Debug)]
pub struct Tokens {
    key: [u8; 32],
    default_mode: TokenMode,
    hop_limit: u8,
}

impl Tokens {
    /// Loads the key from `state_dir`, creating it (0600) on first use.
    pub fn load(config: &TokensConfig, state_dir: &Path) -> Result<Self, TokenKeyError> {
        let path = state_dir.join(KEY_FILE);
        let err = |what| {
            move |source| TokenKeyError {
                what,
                path: path.clone(),
                source,
            }
        };
        let key = match fs::read(state_dir.join(KEY_FILE)) {
            Ok(bytes) if bytes.len() == 32 => bytes.try_into().expect("32 bytes"),
            Ok(_) => return Err(err("reading")(std::io::Error::other("not a 32-byte key"))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                create_key(state_dir).map_err(err("creating"))?
            }
            Err(e) => return Err(err("reading")(e)),
        };
        Ok(Self {
            key,
            default_mode: config.mode,
            hop_limit: config.hop_limit.get(),
        })
    }

    /// The token rules for one request of `who`.
    pub fn decide(&self, who: &Identity, parts: &Parts) -> Decision {
        let mode = who.instance.token_mode.unwrap_or(self.default_mode);
        let path = parts.uri.path();
        if path.ends_with("/api/token") {
            return self.token_endpoint(who, parts, mode);
        }
        match header(&parts.headers, &TOKEN_HEADERS) {
            Some(token) if mode != TokenMode::Disabled && self.valid(token, &who.instance.id) => {
                Decision::Serve
            }
            Some(_) if mode != TokenMode::Disabled => {
                Decision::Reply(Reply::status(StatusCode::UNAUTHORIZED))
            }
            _ if mode == TokenMode::Required => {
                Decision::Reply(Reply::status(StatusCode::UNAUTHORIZED))
            }
            _ => Decision::Serve,
        }
    }

    fn token_endpoint(&self, who: &Identity, parts: &Parts, mode: TokenMode) -> Decision {
        let refuse = |status| Decision::Reply(Reply::status(status));
        if parts.method != Method::PUT {
            return match parts.uri.path() {
                TOKEN_PATH => Decision::Reply(Reply::method_not_allowed("PUT")),
                _ => refuse(StatusCode::NOT_FOUND),
            };
        }
        // A versioned path, a request relayed with X-Forwarded-For (an
        // SSRF through a proxy in the guest), or tokens off: 403.
        if parts.uri.path() != TOKEN_PATH
            || parts.headers.contains_key("x-forwarded-for")
            || mode == TokenMode::Disabled
        {
            return refuse(StatusCode::FORBIDDEN);
        }
        let Some((name, ttl)) = TTL_HEADERS.iter().find_map(|name| {
            let value = parts.headers.get(*name)?.to_str().ok()?;
            Some((*name, value.trim().parse::<u64>().ok()))
        }) else {
            return refuse(StatusCode::BAD_REQUEST);
        };
        let Some(ttl) = ttl.filter(|t| (1..=MAX_TTL).contains(t)) else {
            return refuse(StatusCode::BAD_REQUEST);
        };
        let token = self.mint(&who.instance.id, now() + ttl);
        let reply = Reply::text(token).with_header(
            http::header::HeaderName::from_static(name),
            HeaderValue::from(ttl),
        );
        Decision::Token(reply, self.hop_limit)
    }

    fn mac(&self, instance: &str, expiry: u64) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("any key length");
        mac.update(&[VERSION]);
        mac.update(&expiry.to_be_bytes());
        mac.update(instance.as_bytes());
        mac
    }

    fn mint(&self, instance: &str, expiry: u64) -> String {
        let mut raw = vec![VERSION];
        raw.extend_from_slice(&expiry.to_be_bytes());
        raw.extend_from_slice(&self.mac(instance, expiry).finalize().into_bytes());
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    }

    /// Whether `token` was minted for `instance` with this key and has not
    /// expired.
    fn valid(&self, token: &str, instance: &str) -> bool {
        let Ok(raw) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token.trim()) else {
            return false;
        };
        let [version, rest @ ..] = raw.as_slice() else {
            return false;
        };
        if *version != VERSION || rest.len() != 8 + 32 {
            return false;
        }
        let expiry = u64::from_be_bytes(rest[..8].try_into().expect("8 bytes"));
        expiry > now() && self.mac(instance, expiry).verify_slice(&rest[8..]).is_ok()
    }
}

fn header<'a>(headers: &'a HeaderMap, names: &[&str]) -> Option<&'a str> {
    names
        .iter()
        .find_map(|name| headers.get(*name)?.to_str().ok())
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A new random key, written whole (temporary file, then rename) so that
/// no daemon ever reads half of one.
fn create_key(state_dir: &Path) -> std::io::Result<[u8; 32]> {
    let mut key = [0u8; 32];
    let mut filled = 0;
    while filled < key.len() {
        // SAFETY: writes at most the remaining length into our buffer.
        let n =
            unsafe { libc::getrandom(key[filled..].as_mut_ptr().cast(), key.len() - filled, 0) };
        if n < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::Interrupted {
                return Err(err);
            }
            continue;
        }
        filled += n as usize;
    }
    fs::create_dir_all(state_dir)?;
    let tmp = state_dir.join(format!("{KEY_FILE}.tmp"));
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(&key)?;
    file.sync_all()?;
    fs::rename(&tmp, state_dir.join(KEY_FILE))?;
    Ok(key)
}

/// Sets the IP TTL and IPv6 hop limit of a connected socket.
pub fn set_hop_limit(fd: std::os::fd::RawFd, hops: u8) {
    let value = libc::c_int::from(hops);
    for (level, option) in [
        (libc::IPPROTO_IP, libc::IP_TTL),
        (libc::IPPROTO_IPV6, libc::IPV6_UNICAST_HOPS),
    ] {
        // SAFETY: setsockopt on a socket the connection owns, with an int.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                level,
                option,
                (&raw const value).cast(),
                size_of::<libc::c_int>() as u32,
            )
        };
        // The option of the other family fails on a single-family socket.
        if rc != 0 {
            log::debug!(
                "hop limit option {option}: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::inventory::{Instance, PortIndex};

    fn who(id: &str, mode: Option<TokenMode>) -> Identity {
        let text = format!("[[instance]]\nid = \"{id}\"\nproject_id = \"p\"\n");
        let index = PortIndex::parse(Path::new("i.toml"), &text).unwrap();
        let mut instance: Instance = index.instances().next().unwrap().clone();
        instance.token_mode = mode;
        Identity {
            instance: Arc::new(instance),
            port: 0,
            device: "tap".into(),
            guest_addr: "10.0.0.5".parse().unwrap(),
        }
    }

    fn request(method: Method, path: &str, headers: &[(&str, &str)]) -> Parts {
        let mut builder = http::Request::builder().method(method).uri(path);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap().into_parts().0
    }

    fn tokens(mode: TokenMode) -> Tokens {
        Tokens {
            key: [7; 32],
            default_mode: mode,
            hop_limit: 1,
        }
    }

    fn status(decision: Decision) -> StatusCode {
        match decision {
            Decision::Serve => StatusCode::OK,
            Decision::Reply(reply) | Decision::Token(reply, _) => reply.status,
        }
    }

    #[test]
    fn the_token_put_follows_imdsv2() {
        let t = tokens(TokenMode::Optional);
        let a = who("a", None);
        let put = |path, headers: &[(&str, &str)]| {
            status(t.decide(&a, &request(Method::PUT, path, headers)))
        };
        assert_eq!(
            put(
                TOKEN_PATH,
                &[("X-aws-ec2-metadata-token-ttl-seconds", "21600")]
            ),
            StatusCode::OK
        );
        assert_eq!(
            put(TOKEN_PATH, &[("X-metadata-token-ttl-seconds", "60")]),
            StatusCode::OK
        );
        assert_eq!(put(TOKEN_PATH, &[]), StatusCode::BAD_REQUEST);
        for bad in ["0", "21601", "x", ""] {
            assert_eq!(
                put(TOKEN_PATH, &[("X-aws-ec2-metadata-token-ttl-seconds", bad)]),
                StatusCode::BAD_REQUEST,
                "{bad}"
            );
        }
        let ttl = ("X-aws-ec2-metadata-token-ttl-seconds", "60");
        assert_eq!(
            put(TOKEN_PATH, &[ttl, ("X-Forwarded-For", "10.0.0.9")]),
            StatusCode::FORBIDDEN
        );
        assert_eq!(put("/2021-03-23/api/token", &[ttl]), StatusCode::FORBIDDEN);
        assert_eq!(
            status(t.decide(&a, &request(Method::GET, TOKEN_PATH, &[]))),
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(
            status(
                tokens(TokenMode::Disabled).decide(&a, &request(Method::PUT, TOKEN_PATH, &[ttl]))
            ),
            StatusCode::FORBIDDEN
        );
    }

    #[test]
    fn tokens_are_checked_per_instance_and_expiry_and_modes_apply() {
        let t = tokens(TokenMode::Optional);
        let (a, b) = (who("a", None), who("b", None));
        let token = t.mint("a", now() + 60);
        let get = |who: &Identity, token: Option<&str>, t: &Tokens| {
            let headers: Vec<(&str, &str)> = token
                .map(|v| ("X-aws-ec2-metadata-token", v))
                .into_iter()
                .collect();
            status(t.decide(who, &request(Method::GET, "/latest/meta-data/", &headers)))
        };
        assert_eq!(get(&a, Some(&token), &t), StatusCode::OK);
        assert_eq!(
            get(&b, Some(&token), &t),
            StatusCode::UNAUTHORIZED,
            "another instance's token"
        );
        assert_eq!(
            get(&a, Some(&t.mint("a", now() - 1)), &t),
            StatusCode::UNAUTHORIZED,
            "expired"
        );
        assert_eq!(get(&a, Some("garbage"), &t), StatusCode::UNAUTHORIZED);
        assert_eq!(get(&a, None, &t), StatusCode::OK, "optional");
        let required = tokens(TokenMode::Required);
        assert_eq!(get(&a, None, &required), StatusCode::UNAUTHORIZED);
        assert_eq!(
            get(&a, Some(&required.mint("a", now() + 5)), &required),
            StatusCode::OK
        );
        let other_key = Tokens {
            key: [8; 32],
            ..tokens(TokenMode::Optional)
        };
        assert_eq!(
            get(&a, Some(&token), &other_key),
            StatusCode::UNAUTHORIZED,
            "a rotated key"
        );
        // Per-instance override of the default.
        assert_eq!(
            get(&who("c", Some(TokenMode::Required)), None, &t),
            StatusCode::UNAUTHORIZED
        );
    }
}
