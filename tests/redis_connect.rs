//! Fail-fast start-up of the Redis store (`RedisStore::connect`), against a private
//! `redis-server` per test: a reachable server, a closed port, wrong or missing passwords, ACL
//! users that lack scripts, keys or channels, and malformed URLs. Plus the ergonomics that come
//! with it: no password in `Debug` or error messages, the `StatsSnapshot` display and
//! `Error::into_compute`.

mod support;

use herdless::store::{ConnectError, RedisStore, StoreErrorKind};
use herdless::{memoize_stampede, Error, MemoryStore};
use std::sync::Arc;
use std::time::Duration;
use support::{bounded, free_port, redis_or_skip, BOUND};

const FORM: &str = "redis://[user:password@]host:port[/db]";

/// Runs `ACL SETUSER <args>` (or any command) on the server as the default user.
fn admin(con: &mut redis::Connection, args: &[&str]) {
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query::<()>(con)
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
}

/// `connect_blocking`, bounded so that a bug fails the test instead of hanging it.
fn connect(url: &str) -> Result<RedisStore, ConnectError> {
    let url = url.to_string();
    bounded("connect_blocking", BOUND, move || {
        RedisStore::connect_blocking(&url)
    })
}

fn expect_err(url: &str) -> ConnectError {
    match connect(url) {
        Ok(store) => panic!("connect to {url} succeeded: {store:?}"),
        Err(e) => e,
    }
}

#[test]
fn connect_succeeds_against_a_private_server_and_the_store_works() {
    let Some(server) = redis_or_skip() else {
        return;
    };
    let store = connect(&server.url()).unwrap_or_else(|e| panic!("{e}"));
    let f = memoize_stampede(&store, Duration::from_secs(60))
        .name("connect_ok")
        .build_blocking_infallible(|k: &u32| k + 1)
        .unwrap();
    assert_eq!(f.get(&1).unwrap(), 2);
    assert_eq!(f.get(&1).unwrap(), 2);
    assert_eq!(f.stats().computations, 1);
    assert_eq!(
        store
            .stats()
            .errors
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_connect_with_builder_settings() {
    let Some(server) = redis_or_skip() else {
        return;
    };
    let store = tokio::time::timeout(
        BOUND,
        RedisStore::builder(&server.url())
            .prefix("app*1")
            .op_timeout(Duration::from_millis(100))
            .connect(),
    )
    .await
    .expect("connect is bounded")
    .unwrap_or_else(|e| panic!("{e}"));
    let f = memoize_stampede(&store, Duration::from_secs(60))
        .name("connect_async")
        .build(|k: u32| async move { Ok::<_, std::io::Error>(k * 3) })
        .unwrap();
    assert_eq!(f.get(&2).await.unwrap(), 6);
    // The future is `Send + 'static`: it can be spawned.
    let spawned = tokio::spawn(RedisStore::builder(&server.url()).connect());
    tokio::time::timeout(BOUND, spawned)
        .await
        .expect("connect is bounded")
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}"));
    // An invalid setting is reported before any connection attempt.
    let err = RedisStore::builder(&server.url())
        .prefix("a{b}")
        .connect()
        .await
        .unwrap_err();
    assert_eq!(err.config_error().unwrap().field(), "prefix");
}

#[test]
fn closed_port_is_connection_refused_with_the_url_redacted() {
    // Nothing listens on a port that was just free (no redis-server needed).
    let port = free_port();
    let url = format!("redis://app:hunter2@127.0.0.1:{port}/0");
    let err = expect_err(&url);
    let text = err.to_string();
    assert_eq!(err.kind(), StoreErrorKind::ConnectionRefused, "{text}");
    let redacted = format!("redis://app:***@127.0.0.1:{port}/0");
    assert_eq!(err.url(), redacted);
    assert!(text.contains(&redacted), "{text}");
    assert!(text.contains("refused"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
    assert!(!format!("{err:?}").contains("hunter2"), "{err:?}");
    assert!(err.config_error().is_none());
}

#[test]
fn wrong_or_missing_password_is_authentication() {
    let Some(server) = redis_or_skip() else {
        return;
    };
    let port = server.port();
    let mut con = server.raw();
    admin(&mut con, &["CONFIG", "SET", "requirepass", "secret"]);

    let err = expect_err(&format!("redis://:wrong@127.0.0.1:{port}/"));
    let text = err.to_string();
    assert_eq!(err.kind(), StoreErrorKind::Authentication, "{text}");
    assert!(text.contains("authentication failed"), "{text}");
    assert!(
        text.contains(&format!("redis://:***@127.0.0.1:{port}/")),
        "{text}"
    );
    assert!(!text.contains("wrong"), "{text}");
    assert!(!format!("{err:?}").contains(":wrong@"), "{err:?}");

    // No password at all: the connection succeeds, the first command says NOAUTH.
    let err = expect_err(&server.url());
    assert_eq!(err.kind(), StoreErrorKind::Authentication, "{err}");
    assert!(err.to_string().contains("needs a password"), "{err}");

    connect(&format!("redis://:secret@127.0.0.1:{port}/")).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn acl_user_without_scripts_is_permission_denied_naming_scripts() {
    let Some(server) = redis_or_skip() else {
        return;
    };
    let port = server.port();
    let mut con = server.raw();
    admin(
        &mut con,
        &[
            "ACL", "SETUSER", "noeval", "on", ">pw", "~*", "&*", "+@all", "-eval", "-evalsha",
            "-script",
        ],
    );
    let err = expect_err(&format!("redis://noeval:pw@127.0.0.1:{port}/"));
    let text = err.to_string();
    assert_eq!(err.kind(), StoreErrorKind::PermissionDenied, "{text}");
    assert!(text.contains("EVAL (scripts)"), "{text}");
    assert!(text.contains("+evalsha"), "{text}");
    assert!(
        text.contains(&format!("redis://noeval:***@127.0.0.1:{port}/")),
        "{text}"
    );
    assert!(!text.contains(":pw@"), "{text}");
}

#[test]
fn acl_user_without_keys_is_permission_denied_naming_keys() {
    let Some(server) = redis_or_skip() else {
        return;
    };
    let port = server.port();
    let mut con = server.raw();
    admin(
        &mut con,
        &[
            "ACL", "SETUSER", "nokeys", "on", ">pw", "~other:*", "&*", "+@all",
        ],
    );
    let err = expect_err(&format!("redis://nokeys:pw@127.0.0.1:{port}/"));
    let text = err.to_string();
    assert_eq!(err.kind(), StoreErrorKind::PermissionDenied, "{text}");
    assert!(text.contains("keys under `herdless:`"), "{text}");
    assert!(text.contains("~herdless:*"), "{text}");
}

#[test]
fn acl_user_without_channels_is_permission_denied_naming_channels() {
    let Some(server) = redis_or_skip() else {
        return;
    };
    let port = server.port();
    let mut con = server.raw();
    admin(
        &mut con,
        &[
            "ACL",
            "SETUSER",
            "nochan",
            "on",
            ">pw",
            "~*",
            "resetchannels",
            "+@all",
        ],
    );
    let err = expect_err(&format!("redis://nochan:pw@127.0.0.1:{port}/"));
    let text = err.to_string();
    assert_eq!(err.kind(), StoreErrorKind::PermissionDenied, "{text}");
    assert!(text.contains("channels under `herdless:`"), "{text}");
    assert!(text.contains("&herdless:{*}:c"), "{text}");

    // The intuitive grant is not enough: Redis matches a subscribed pattern literally, so
    // `&herdless:*` allows PUBLISH but refuses the store's PSUBSCRIBE `herdless:{*}:c`.
    admin(
        &mut con,
        &[
            "ACL",
            "SETUSER",
            "prefixchan",
            "on",
            ">pw",
            "~*",
            "resetchannels",
            "&herdless:*",
            "+@all",
        ],
    );
    let err = expect_err(&format!("redis://prefixchan:pw@127.0.0.1:{port}/"));
    assert_eq!(err.kind(), StoreErrorKind::PermissionDenied, "{err}");
    assert!(err.to_string().contains("channels"), "{err}");

    // What the message says to grant is enough.
    admin(
        &mut con,
        &[
            "ACL",
            "SETUSER",
            "okchan",
            "on",
            ">pw",
            "~*",
            "resetchannels",
            "&herdless:{*}:c",
            "+@all",
        ],
    );
    connect(&format!("redis://okchan:pw@127.0.0.1:{port}/")).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn malformed_url_is_a_config_error_on_url_with_the_expected_form() {
    let err = expect_err("not a url");
    let config = err.config_error().expect("a config error");
    assert_eq!(config.field(), "url");
    let text = err.to_string();
    assert!(text.contains(FORM), "{text}");
    assert!(text.contains("not a url"), "{text}");

    // The lazy constructor says the same.
    let config = RedisStore::new("not a url").unwrap_err();
    assert_eq!(config.field(), "url");
    let text = config.to_string();
    assert!(text.contains(FORM), "{text}");
    assert!(!text.contains("InvalidClientConfig"), "{text}");

    // The echoed URL has its password redacted.
    let config = RedisStore::new("redis://app:s3cret@:6379/").unwrap_err();
    let text = config.to_string();
    assert_eq!(config.field(), "url");
    assert!(text.contains("redis://app:***@:6379/"), "{text}");
    assert!(!text.contains("s3cret"), "{text}");
}

#[test]
fn builder_debug_does_not_show_the_password() {
    let builder = RedisStore::builder("redis://app:s3cret@127.0.0.1:6379/2").prefix("shop");
    let text = format!("{builder:?}");
    assert!(!text.contains("s3cret"), "{text}");
    assert!(text.contains("redis://app:***@127.0.0.1:6379/2"), "{text}");
    assert!(text.contains("shop"), "{text}");
}

#[test]
fn stats_snapshot_display_has_one_counter_per_line() {
    let store = MemoryStore::<u32, u32>::new(16).unwrap();
    let f = memoize_stampede(&store, Duration::from_secs(60))
        .build_blocking_infallible(|k: &u32| k * 2)
        .unwrap();
    for _ in 0..3 {
        f.get(&1).unwrap();
    }
    let text = f.stats().to_string();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() >= 10, "{text}");
    let row = |label: &str| {
        lines
            .iter()
            .find(|l| l.trim_start().starts_with(label))
            .unwrap_or_else(|| panic!("no `{label}` line in\n{text}"))
            .split_whitespace()
            .last()
            .unwrap()
            .to_string()
    };
    assert_eq!(row("calls"), "3");
    assert_eq!(row("hits"), "2");
    assert_eq!(row("computations"), "1");
    assert_eq!(row("fenced writes"), "0");
    // Aligned: every counter ends in the same column.
    let ends: Vec<usize> = lines
        .iter()
        .filter(|l| l.ends_with(|c: char| c.is_ascii_digit()))
        .map(|l| l.len())
        .collect();
    assert!(ends.windows(2).all(|w| w[0] == w[1]), "{text}");
}

#[test]
fn into_compute_returns_the_owned_error() {
    let store = MemoryStore::<u32, u32>::new(16).unwrap();
    let f = memoize_stampede(&store, Duration::from_secs(60))
        .build_blocking(|k: &u32| Err::<u32, _>(std::io::Error::other(format!("no {k}"))))
        .unwrap();
    let err = f.get(&7).unwrap_err();
    assert!(std::error::Error::source(&err).is_some());
    let io: std::io::Error = err.into_compute().expect("the only owner of the error");
    assert_eq!(io.to_string(), "no 7");

    // Shared with another holder: handed back unchanged.
    let shared = Arc::new(std::io::Error::other("shared"));
    let err: Error<std::io::Error> = Error::Compute(shared.clone());
    let back = err.into_compute().unwrap_err();
    assert!(Arc::ptr_eq(back.compute_arc().unwrap(), &shared));
    drop(back);
    let err: Error<std::io::Error> = Error::Compute(shared);
    assert_eq!(err.into_compute().unwrap().to_string(), "shared");

    assert!(matches!(
        Error::<std::io::Error>::Busy.into_compute(),
        Err(Error::Busy)
    ));
}
