//! Who may look: a login with the node's dashboard token (a session cookie follows), or
//! a TLS client certificate naming an administrator. Writes (restart, stop, start,
//! destroy) need the node to allow them, and a header a cross-site form cannot send.

use std::{
    collections::HashMap,
    net::IpAddr,
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    Json,
    extract::{ConnectInfo, FromRequestParts},
    http::{HeaderMap, StatusCode, header, request::Parts},
    response::{IntoResponse, Response},
};
use parking_lot::Mutex;
use ring::rand::{SecureRandom as _, SystemRandom};

use crate::{api::AppState, listener::Peer};

/// The session cookie's name.
pub const COOKIE: &str = "reef_session";
/// A login lasts this long.
const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at once; a login beyond that replaces the oldest.
const MAX_SESSIONS: usize = 256;
/// How long a wrong token holds its client address's login turn.
pub const WRONG_TOKEN_PAUSE: Duration = Duration::from_millis(500);
/// Client addresses that get a login turn of their own; past that, the others share one.
const TRACKED_ADDRESSES: usize = 4096;

/// The header every write must carry: browsers do not let another site's page set it.
pub const WRITE_HEADER: &str = "x-reef-dashboard";

/// The token in `path`, made (32 random bytes, hex, mode 0600) if the file is missing.
pub fn load_or_create_token(path: &Path) -> std::io::Result<String> {
    match std::fs::read_to_string(path) {
        Ok(token) if !token.trim().is_empty() => return Ok(token.trim().to_owned()),
        Ok(_) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(error),
    }
    let token = random_hex(32)?;
    reef_core::write_private(path, format!("{token}\n").as_bytes())?;
    Ok(token)
}

fn random_hex(bytes: usize) -> std::io::Result<String> {
    let mut buffer = vec![0u8; bytes];
    SystemRandom::new()
        .fill(&mut buffer)
        .map_err(|_| std::io::Error::other("the system's random source failed"))?;
    Ok(buffer.iter().map(|b| format!("{b:02x}")).collect())
}

/// Logged-in sessions, by cookie value.
#[derive(Debug, Default)]
pub struct Sessions {
    by_id: Mutex<HashMap<String, Instant>>,
}

impl Sessions {
    /// A new session; its id goes in the cookie.
    pub fn open(&self) -> std::io::Result<String> {
        let id = random_hex(24)?;
        let mut sessions = self.by_id.lock();
        let now = Instant::now();
        sessions.retain(|_, expires| *expires > now);
        if sessions.len() >= MAX_SESSIONS
            && let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, expires)| **expires)
                .map(|(id, _)| id.clone())
        {
            sessions.remove(&oldest);
        }
        sessions.insert(id.clone(), now + SESSION_LIFETIME);
        Ok(id)
    }

    fn valid(&self, id: &str) -> bool {
        let sessions = self.by_id.lock();
        sessions
            .get(id)
            .is_some_and(|expires| *expires > Instant::now())
    }

    /// Ends a session.
    pub fn close(&self, id: &str) {
        let mut sessions = self.by_id.lock();
        sessions.remove(id);
    }
}

/// Whether `given` is the token, compared in constant time.
pub fn token_matches(given: &str, token: &str) -> bool {
    let (given, token) = (given.trim().as_bytes(), token.as_bytes());
    given.len() == token.len()
        && given
            .iter()
            .zip(token)
            .fold(0u8, |differ, (a, b)| differ | (a ^ b))
            == 0
}

/// The session cookie of a request, if it sent one.
pub fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|cookies| cookies.split(';'))
        .find_map(|cookie| cookie.trim().strip_prefix(COOKIE)?.strip_prefix('='))
}

/// A logged-in viewer; handlers that take one refuse everyone else with 401.
#[derive(Debug, Clone, Copy)]
pub struct Viewer {
    /// Whether this viewer may act on containers.
    pub writes: bool,
}

impl FromRequestParts<Arc<AppState>> for Viewer {
    type Rejection = Refusal;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let by_certificate = parts
            .extensions
            .get::<ConnectInfo<Peer>>()
            .is_some_and(|ConnectInfo(peer)| peer.admin);
        let by_session = session_cookie(&parts.headers).is_some_and(|id| state.sessions.valid(id));
        match by_certificate || by_session {
            true => Ok(Viewer {
                writes: state.writes,
            }),
            false => Err(refusal(StatusCode::UNAUTHORIZED, "log in first")),
        }
    }
}

/// A viewer allowed to act, on a request a browser could only send from this page.
#[derive(Debug, Clone, Copy)]
pub struct Writer;

impl FromRequestParts<Arc<AppState>> for Writer {
    type Rejection = Refusal;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let viewer = Viewer::from_request_parts(parts, state).await?;
        if !viewer.writes {
            return Err(refusal(
                StatusCode::FORBIDDEN,
                "this dashboard is read-only (start reefd with --dashboard-writes to allow actions)",
            ));
        }
        if !parts.headers.contains_key(WRITE_HEADER) {
            return Err(refusal(
                StatusCode::FORBIDDEN,
                "actions come from the dashboard's own page (x-reef-dashboard header missing)",
            ));
        }
        Ok(Writer)
    }
}

/// Why a request was not served: an HTTP status and a message for people, sent as
/// JSON (`{"error": "…"}`).
#[derive(Debug)]
pub struct Refusal {
    status: StatusCode,
    message: String,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.message });
        (self.status, Json(body)).into_response()
    }
}

/// A refusal with `status`.
pub fn refusal(status: StatusCode, message: impl Into<String>) -> Refusal {
    Refusal {
        status,
        message: message.into(),
    }
}

/// Login turns by client address: one attempt at a time from each address, and a wrong
/// token keeps its address's turn for [`WRONG_TOKEN_PAUSE`]. A flood of wrong tokens from
/// one address slows that address alone; the owner, elsewhere, logs in at once. The
/// tokens are 256 random bits, so the pause only keeps guessing slow and the log quiet.
#[derive(Debug, Default)]
pub struct LoginThrottle {
    turns: Mutex<HashMap<IpAddr, Arc<tokio::sync::Mutex<()>>>>,
    /// Shared by the addresses beyond [`TRACKED_ADDRESSES`].
    crowd: Arc<tokio::sync::Mutex<()>>,
}

impl LoginThrottle {
    /// The turn that a login from `address` waits for.
    pub fn turn(&self, address: IpAddr) -> Arc<tokio::sync::Mutex<()>> {
        let mut turns = self.turns.lock();
        if turns.len() >= TRACKED_ADDRESSES && !turns.contains_key(&address) {
            // Forget the addresses with no login in progress.
            turns.retain(|_, turn| Arc::strong_count(turn) > 1);
            if turns.len() >= TRACKED_ADDRESSES {
                return self.crowd.clone();
            }
        }
        turns.entry(address).or_default().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_turns_are_per_address_and_bounded() {
        let throttle = LoginThrottle::default();
        let owner: IpAddr = "192.0.2.1".parse().unwrap();
        let held = throttle.turn("198.51.100.7".parse().unwrap());
        assert!(
            !Arc::ptr_eq(&held, &throttle.turn(owner)),
            "an address of its own"
        );
        assert!(Arc::ptr_eq(
            &held,
            &throttle.turn("198.51.100.7".parse().unwrap())
        ));
        // Past the bound, addresses with no login in progress are forgotten...
        for n in 0..TRACKED_ADDRESSES as u32 {
            drop(throttle.turn(IpAddr::from(n.to_be_bytes())));
        }
        assert!(throttle.turns.lock().len() <= TRACKED_ADDRESSES);
        assert!(Arc::ptr_eq(
            &held,
            &throttle.turn("198.51.100.7".parse().unwrap())
        ));
        // ...and while every tracked address is busy, the others share one turn.
        let busy: Vec<_> = (0..TRACKED_ADDRESSES as u32)
            .map(|n| throttle.turn(IpAddr::from(((n + 1) << 8).to_be_bytes())))
            .collect();
        let late = throttle.turn(owner);
        assert!(Arc::ptr_eq(&late, &throttle.crowd));
        drop(busy);
    }

    #[test]
    fn a_token_is_made_once_and_kept_private() {
        let dir = std::env::temp_dir().join(format!("reef-dashboard-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("dashboard.token");
        let _ = std::fs::remove_file(&path);
        let token = load_or_create_token(&path).unwrap();
        assert_eq!(token.len(), 64);
        assert_eq!(load_or_create_token(&path).unwrap(), token, "kept");
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn tokens_and_cookies_are_read_exactly() {
        assert!(token_matches(" abc\n", "abc"));
        assert!(!token_matches("abd", "abc"));
        assert!(!token_matches("ab", "abc"));
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            "theme=dark; reef_session=s1".parse().unwrap(),
        );
        assert_eq!(session_cookie(&headers), Some("s1"));
        headers.insert(header::COOKIE, "reef_sessionx=s2".parse().unwrap());
        assert_eq!(session_cookie(&headers), None);
    }

    #[test]
    fn sessions_open_close_and_stay_bounded() {
        let sessions = Sessions::default();
        let first = sessions.open().unwrap();
        assert!(sessions.valid(&first));
        sessions.close(&first);
        assert!(!sessions.valid(&first));
        let ids: Vec<String> = (0..MAX_SESSIONS + 5)
            .map(|_| sessions.open().unwrap())
            .collect();
        assert_eq!(sessions.by_id.lock().len(), MAX_SESSIONS);
        assert!(sessions.valid(ids.last().unwrap()));
    }
}
