//! Fail-fast start-up: [`RedisStore::connect`](super::RedisStore::connect) checks, once, that
//! the server can be reached, accepts the credentials and lets this user do everything the store
//! needs (scripts, keys under the prefix, pub/sub on the store's channels), and says what is
//! missing if not. Also the URL helpers: parsing with a helpful error, and password redaction.

use super::scripts;
use crate::error::ConfigError;
use crate::store::contract::{StoreError, StoreErrorKind};
use std::fmt;
use std::future::Future;
use std::time::Duration;
use tokio::time::Instant;

/// What kind of failure a redis-rs error is.
pub(crate) fn classify(e: &redis::RedisError) -> StoreErrorKind {
    use redis::ErrorKind as K;
    if e.is_timeout() {
        return StoreErrorKind::Timeout;
    }
    if e.code() == Some("NOPERM") {
        return StoreErrorKind::PermissionDenied;
    }
    if e.code() == Some("WRONGPASS") || e.code() == Some("NOAUTH") {
        return StoreErrorKind::Authentication;
    }
    match e.kind() {
        K::AuthenticationFailed => StoreErrorKind::Authentication,
        K::TypeError | K::ResponseError | K::ParseError => StoreErrorKind::Protocol,
        K::IoError if e.is_connection_refusal() => StoreErrorKind::ConnectionRefused,
        _ => StoreErrorKind::Other,
    }
}

/// A failed request as a [`StoreError`] (`url` is already redacted).
pub(crate) fn store_error(url: &str, e: &redis::RedisError) -> StoreError {
    StoreError::new(classify(e), format!("redis at {url}: {}", describe(e)))
}

/// A failed connection attempt as a [`StoreError`] that says what failed, with the URL
/// (`url` is already redacted).
pub(crate) fn connect_error(url: &str, e: &redis::RedisError) -> StoreError {
    let kind = classify(e);
    let what = match kind {
        StoreErrorKind::ConnectionRefused => {
            "connection refused (is the server running, and is this its host and port?)".to_string()
        }
        StoreErrorKind::Authentication => format!(
            "authentication failed: the server refused the credentials in the URL, or needs \
             some and the URL has none ({})",
            describe(e)
        ),
        _ => format!("could not connect: {}", describe(e)),
    };
    StoreError::new(kind, format!("redis at {url}: {what}"))
}

/// The client's address as a URL for messages, password replaced by `***` (the original URL
/// string is not kept: only what redis-rs parsed from it).
pub(crate) fn display_url(client: &redis::Client) -> String {
    let info = client.get_connection_info();
    let scheme = match info.addr {
        redis::ConnectionAddr::Tcp(..) => "redis://",
        redis::ConnectionAddr::TcpTls { .. } => "rediss://",
        redis::ConnectionAddr::Unix(..) => "redis+unix://",
    };
    let user = info.redis.username.as_deref().unwrap_or("");
    let auth = match (&info.redis.password, user) {
        (Some(_), user) => format!("{user}:***@"),
        (None, "") => String::new(),
        (None, user) => format!("{user}@"),
    };
    match info.addr {
        redis::ConnectionAddr::Unix(_) => {
            format!("{scheme}{auth}{}?db={}", info.addr, info.redis.db)
        }
        _ => format!("{scheme}{auth}{}/{}", info.addr, info.redis.db),
    }
}

/// The URL form shown in error messages.
pub(crate) const URL_FORM: &str = "redis://[user:password@]host:port[/db]";

/// The URL with its password replaced by `***` (`redis://user:***@host:port/db`), also in a
/// `pass=`/`password=` query parameter (the unix-socket form). Works on strings that do not
/// parse as URLs too, so that error messages can always echo what was given.
pub(crate) fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(i) => url.split_at(i + 3),
        None => ("", url),
    };
    // The user info ends at the last `@` (a password may itself contain `@`, `/`, `?` or `#`).
    let (userinfo, host) = match rest.rfind('@') {
        Some(i) => (Some(&rest[..i]), &rest[i + 1..]),
        None => (None, rest),
    };
    let mut out = String::with_capacity(url.len());
    out.push_str(scheme);
    if let Some(info) = userinfo {
        match info.split_once(':') {
            Some((user, pw)) if !pw.is_empty() => {
                out.push_str(user);
                out.push_str(":***");
            }
            _ => out.push_str(info),
        }
        out.push('@');
    }
    match host.split_once('?') {
        Some((path, query)) => {
            out.push_str(path);
            out.push('?');
            let params: Vec<String> = query
                .split('&')
                .map(|p| match p.split_once('=') {
                    Some((k, v))
                        if !v.is_empty()
                            && (k.eq_ignore_ascii_case("pass")
                                || k.eq_ignore_ascii_case("password")) =>
                    {
                        format!("{k}=***")
                    }
                    _ => p.to_string(),
                })
                .collect();
            out.push_str(&params.join("&"));
        }
        None => out.push_str(host),
    }
    out
}

/// What redis-rs says, without its error-kind suffix (`Redis URL did not parse- InvalidClientConfig`).
fn describe(e: &redis::RedisError) -> String {
    let text = e.to_string();
    let kind = format!("{:?}", e.kind());
    let head = text
        .split_once(&format!(" - {kind}"))
        .or_else(|| text.split_once(&format!("- {kind}")))
        .map_or(text.as_str(), |(head, _)| head);
    match e.detail() {
        Some(d) if !head.contains(d) => format!("{head}: {d}"),
        _ => head.to_string(),
    }
}

/// Parses the URL into a client (no I/O), or explains what is wrong with it.
pub(crate) fn parse_url(url: &str) -> Result<redis::Client, ConfigError> {
    redis::Client::open(url).map_err(|e| {
        ConfigError::new(
            "url",
            format!(
                "`{}` is not a usable Redis URL ({}); expected {URL_FORM}",
                redact_url(url),
                describe(&e)
            ),
        )
    })
}

/// [`RedisStore::connect`](super::RedisStore::connect) failed: the server is unreachable,
/// refused the credentials, or the user lacks a permission the store needs. The message names
/// what failed and what to grant; the URL in it has its password redacted.
///
/// ```
/// use herdless::store::{RedisStore, StoreErrorKind};
/// // Nothing listens on port 1.
/// let err = RedisStore::connect_blocking("redis://app:secret@127.0.0.1:1/0").unwrap_err();
/// assert_eq!(err.kind(), StoreErrorKind::ConnectionRefused);
/// assert_eq!(err.url(), "redis://app:***@127.0.0.1:1/0");
/// assert!(!err.to_string().contains("secret"));
///
/// let err = RedisStore::connect_blocking("not a url").unwrap_err();
/// assert_eq!(err.config_error().unwrap().field(), "url");
/// ```
pub struct ConnectError(Box<Repr>);

#[derive(Debug)]
struct Repr {
    kind: StoreErrorKind,
    url: String,
    message: String,
    config: Option<ConfigError>,
    source: Option<redis::RedisError>,
}

impl fmt::Debug for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectError")
            .field("kind", &self.0.kind)
            .field("url", &self.0.url)
            .field("message", &self.0.message)
            .field("config", &self.0.config)
            .field("source", &self.0.source)
            .finish()
    }
}

impl ConnectError {
    /// An error that is not about a setting; `url` is already redacted.
    fn new(
        kind: StoreErrorKind,
        url: String,
        message: String,
        source: Option<redis::RedisError>,
    ) -> Self {
        ConnectError(Box::new(Repr {
            kind,
            url,
            message,
            config: None,
            source,
        }))
    }

    /// A request of a built store failed while checking it (`url` is redacted here).
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    pub(crate) fn from_store(url: &str, e: &StoreError) -> Self {
        ConnectError::new(e.kind(), redact_url(url), e.message().to_string(), None)
    }

    /// The builder rejected a setting (`url` is redacted here).
    pub(crate) fn config(url: &str, e: ConfigError) -> Self {
        ConnectError(Box::new(Repr {
            kind: StoreErrorKind::Other,
            url: redact_url(url),
            message: e.to_string(),
            config: Some(e),
            source: None,
        }))
    }

    /// What kind of failure this is: [`ConnectionRefused`](StoreErrorKind::ConnectionRefused),
    /// [`Timeout`](StoreErrorKind::Timeout), [`Authentication`](StoreErrorKind::Authentication),
    /// [`PermissionDenied`](StoreErrorKind::PermissionDenied), or
    /// [`Other`](StoreErrorKind::Other) (also for an invalid setting, see
    /// [`ConnectError::config_error`]).
    pub fn kind(&self) -> StoreErrorKind {
        self.0.kind
    }

    /// The URL, password redacted (`redis://user:***@host:port/db`).
    pub fn url(&self) -> &str {
        &self.0.url
    }

    /// The rejected setting, when the builder's configuration (the URL, the prefix, ...) is what
    /// failed; no connection was attempted then.
    pub fn config_error(&self) -> Option<&ConfigError> {
        self.0.config.as_ref()
    }
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.config.is_some() {
            f.write_str(&self.0.message)
        } else {
            write!(f, "redis at {}: {}", self.0.url, self.0.message)
        }
    }
}

impl std::error::Error for ConnectError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match (&self.0.config, &self.0.source) {
            (Some(c), _) => Some(c),
            (None, Some(e)) => Some(e),
            (None, None) => None,
        }
    }
}

/// The start-up checks of one store: what they need, taken from its builder.
pub(crate) struct Checks {
    client: redis::Client,
    url: String,
    prefix: String,
    /// The pattern the store subscribes to (glob characters of the prefix escaped).
    pattern: Vec<u8>,
    bound: Duration,
}

impl Checks {
    fn fail(
        &self,
        kind: StoreErrorKind,
        message: String,
        e: Option<redis::RedisError>,
    ) -> ConnectError {
        ConnectError::new(kind, self.url.clone(), message, e)
    }

    fn timed_out(&self, stage: &str) -> ConnectError {
        self.fail(
            StoreErrorKind::Timeout,
            format!(
                "no answer within {:?} while {stage} (host unreachable or firewalled, or the \
                 server is overloaded or paused)",
                self.bound
            ),
            None,
        )
    }

    /// Runs `fut` until the overall deadline.
    async fn within<T>(
        &self,
        deadline: Instant,
        stage: &str,
        fut: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<redis::RedisResult<T>, ConnectError> {
        tokio::time::timeout_at(deadline, fut)
            .await
            .map_err(|_| self.timed_out(stage))
    }

    /// A new connection (authenticated, database selected) before `deadline`.
    async fn open(
        &self,
        deadline: Instant,
        cfg: &redis::AsyncConnectionConfig,
        stage: &str,
    ) -> Result<redis::aio::MultiplexedConnection, ConnectError> {
        self.within(
            deadline,
            stage,
            self.client
                .get_multiplexed_async_connection_with_config(cfg),
        )
        .await?
        .map_err(|e| self.connect_failed(e))
    }

    /// A failure while connecting, authenticating or selecting the database.
    fn connect_failed(&self, e: redis::RedisError) -> ConnectError {
        let info = &self.client.get_connection_info().redis;
        let detail = describe(&e);
        let (kind, message) = match classify(&e) {
            StoreErrorKind::ConnectionRefused => (
                StoreErrorKind::ConnectionRefused,
                format!(
                    "connection refused: nothing accepts connections at {} (is the server \
                     running, and is this its host and port?)",
                    self.client.get_connection_info().addr
                ),
            ),
            StoreErrorKind::Timeout => return self.timed_out("connecting"),
            StoreErrorKind::Authentication => (
                StoreErrorKind::Authentication,
                match &info.username {
                    Some(user) => format!(
                        "authentication failed: the server refused user `{user}` with the \
                         password in the URL (or the user is disabled)"
                    ),
                    None => "authentication failed: the server refused the password in the URL"
                        .to_string(),
                },
            ),
            _ if detail.contains("switch database") => {
                let db = info.db;
                if detail.contains("NOAUTH") || detail.contains("Authentication required") {
                    (
                        StoreErrorKind::Authentication,
                        format!(
                            "authentication required: the server needs a password and the URL \
                             has none ({URL_FORM})"
                        ),
                    )
                } else if detail.contains("permission") {
                    (
                        StoreErrorKind::PermissionDenied,
                        format!("permission missing: the user may not SELECT database {db} — grant +select"),
                    )
                } else {
                    (
                        StoreErrorKind::Other,
                        format!("the server refused to switch to database {db}: {detail}"),
                    )
                }
            }
            kind => (kind, format!("could not connect: {detail}")),
        };
        self.fail(kind, message, Some(e))
    }

    /// A failure of a command after the connection is up; `what` is what the store needs it
    /// for, `grant` what to add to the ACL user when the server said NOPERM.
    fn command_failed(&self, e: redis::RedisError, what: &str, grant: &str) -> ConnectError {
        let detail = describe(&e);
        let (kind, message) = match classify(&e) {
            StoreErrorKind::Authentication => (
                StoreErrorKind::Authentication,
                format!(
                    "authentication required: the server needs a password and the URL has \
                     none ({URL_FORM})"
                ),
            ),
            StoreErrorKind::PermissionDenied => (
                StoreErrorKind::PermissionDenied,
                format!("permission missing: the user may not {what} ({detail}) — grant {grant}"),
            ),
            kind => (kind, format!("{what} failed: {detail}")),
        };
        self.fail(kind, message, Some(e))
    }

    /// The checks, in the order the store would hit them.
    async fn check(self) -> Result<(), ConnectError> {
        let deadline = Instant::now() + self.bound;
        let cfg = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(self.bound)
            .set_response_timeout(self.bound);

        // 1. Connect; redis-rs authenticates (AUTH) and selects the database as part of it.
        let mut con = self.open(deadline, &cfg, "connecting").await?;

        // 2. A first command: catches a server that wants a password the URL lacks (NOAUTH).
        self.within(
            deadline,
            "sending PING",
            redis::cmd("PING").query_async::<()>(&mut con),
        )
        .await?
        .map_err(|e| self.command_failed(e, "run PING", "+ping"))?;

        // 3. Scripts: every store operation is a Lua script (SCRIPT LOAD, then EVALSHA).
        let scripts_grant = "+eval +evalsha +script|load (or +@scripting)";
        for s in scripts::all() {
            self.within(
                deadline,
                "loading scripts",
                s.prepare_invoke().load_async(&mut con),
            )
            .await?
            .map_err(|e| self.command_failed(e, "EVAL (scripts)", scripts_grant))?;
        }
        self.within(
            deadline,
            "running a script",
            redis::Script::new("return 1")
                .prepare_invoke()
                .invoke_async::<i64>(&mut con),
        )
        .await?
        .map_err(|e| self.command_failed(e, "EVAL (scripts)", scripts_grant))?;

        // 4. Keys under the prefix, read and written by those scripts.
        let probe = format!("{}:{{herdless-connect-check}}:v", self.prefix);
        self.within(
            deadline,
            "checking key access",
            redis::Script::new("return redis.call('EXISTS', KEYS[1])")
                .key(&probe)
                .invoke_async::<i64>(&mut con),
        )
        .await?
        .map_err(|e| {
            self.command_failed(
                e,
                &format!("read and write keys under `{}:`", self.prefix),
                &format!(
                    "~{}:*",
                    String::from_utf8_lossy(&super::keys::glob_escape(&self.prefix))
                ),
            )
        })?;

        // 5. Pub/sub: writers PUBLISH on the key's channel, every store PSUBSCRIBEs to the
        //    pattern of all of them. Redis matches a subscribed *pattern* against the ACL's
        //    channel patterns literally, so `&<prefix>:*` allows the PUBLISH but not this.
        let channels = format!(
            "PUBLISH/PSUBSCRIBE to channels under `{}:` (wake-ups of waiting callers)",
            self.prefix
        );
        let channels_grant = format!(
            "&{} and +publish +psubscribe +punsubscribe",
            String::from_utf8_lossy(&self.pattern)
        );
        let channel = format!("{}:{{herdless-connect-check}}:c", self.prefix);
        self.within(
            deadline,
            "publishing",
            redis::cmd("PUBLISH")
                .arg(&channel)
                .arg("")
                .query_async::<i64>(&mut con),
        )
        .await?
        .map_err(|e| self.command_failed(e, &channels, &channels_grant))?;
        // A dedicated connection, not redis-rs's `PubSub`: its `psubscribe` returns `Ok` even
        // when the server answers NOPERM. In RESP2 the reply to PSUBSCRIBE is an ordinary
        // reply; the subscription ends with PUNSUBSCRIBE (and the connection is dropped anyway).
        let mut sub = self.open(deadline, &cfg, "connecting for pub/sub").await?;
        self.within(
            deadline,
            "subscribing",
            redis::cmd("PSUBSCRIBE")
                .arg(&self.pattern)
                .query_async::<redis::Value>(&mut sub),
        )
        .await?
        .map_err(|e| self.command_failed(e, &channels, &channels_grant))?;
        let _ = self
            .within(
                deadline,
                "unsubscribing",
                redis::cmd("PUNSUBSCRIBE")
                    .arg(&self.pattern)
                    .query_async::<redis::Value>(&mut sub),
            )
            .await;
        Ok(())
    }
}

impl Checks {
    /// The checks of a store on `url` (`client` parsed from it) with this prefix and
    /// subscription pattern, bounded by 4 × `op_timeout`, at least 2 s, in all.
    pub(crate) fn new(
        url: &str,
        client: redis::Client,
        prefix: &str,
        pattern: Vec<u8>,
        op_timeout: Duration,
    ) -> Self {
        Checks {
            client,
            url: redact_url(url),
            prefix: prefix.to_string(),
            pattern,
            bound: (op_timeout * 4).max(Duration::from_secs(2)),
        }
    }

    /// Runs the checks on a helper thread with its own small runtime, so that this works from
    /// any executor (or none) and whatever the caller's runtime enables.
    pub(crate) async fn run(self) -> Result<(), ConnectError> {
        let url = self.url.clone();
        let (tx, rx) = futures::channel::oneshot::channel();
        std::thread::Builder::new()
            .name("herdless-connect".into())
            .spawn(move || {
                let out = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt.block_on(self.check()),
                    Err(e) => Err(self.fail(
                        StoreErrorKind::Other,
                        format!("could not start a runtime for the checks: {e}"),
                        None,
                    )),
                };
                let _ = tx.send(out);
            })
            .map_err(|e| {
                let message = format!("could not start a thread for the checks: {e}");
                ConnectError::new(StoreErrorKind::Other, url.clone(), message, None)
            })?;
        rx.await.unwrap_or_else(|_| {
            let message = "the check thread stopped without an answer".to_string();
            Err(ConnectError::new(StoreErrorKind::Other, url, message, None))
        })
    }

    /// [`Checks::run`], blocking this thread.
    pub(crate) fn run_blocking(self) -> Result<(), ConnectError> {
        crate::wait::block_on(self.run())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords_only() {
        let cases = [
            ("redis://127.0.0.1:6379/", "redis://127.0.0.1:6379/"),
            ("redis://user:pw@host:1/2", "redis://user:***@host:1/2"),
            ("redis://:pw@host:1", "redis://:***@host:1"),
            ("redis://user@host", "redis://user@host"),
            ("redis://u:p@ss/w?rd#x@h:1/0", "redis://u:***@h:1/0"),
            ("user:pw@host", "user:***@host"),
            ("not a url", "not a url"),
            (
                "redis+unix:///tmp/r.sock?db=1&pass=pw",
                "redis+unix:///tmp/r.sock?db=1&pass=***",
            ),
        ];
        for (url, want) in cases {
            assert_eq!(redact_url(url), want, "{url}");
        }
    }

    #[test]
    fn display_urls_never_show_the_password() {
        let cases = [
            ("redis://127.0.0.1:6379/", "redis://127.0.0.1:6379/0"),
            ("redis://app:pw@host:1/2", "redis://app:***@host:1/2"),
            ("redis://:pw@host:1", "redis://:***@host:1/0"),
            ("redis://app@host:1", "redis://app@host:1/0"),
        ];
        for (url, want) in cases {
            let client = redis::Client::open(url).unwrap();
            assert_eq!(display_url(&client), want, "{url}");
        }
    }

    #[test]
    fn bad_urls_name_the_expected_form() {
        let e = parse_url("redis://:secret@").unwrap_err();
        assert_eq!(e.field(), "url");
        let text = e.to_string();
        assert!(text.contains(URL_FORM), "{text}");
        assert!(!text.contains("secret"), "{text}");
        assert!(!text.contains("InvalidClientConfig"), "{text}");
    }
}
