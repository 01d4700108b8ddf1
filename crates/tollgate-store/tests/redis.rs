//! `RedisStore` against real `redis-server`s: the contract suite on a single server and on a
//! three-master Redis Cluster, an outage and recovery without rebuilding the store, a scan of
//! everything stored for leaked keys or tokens, and the Redis-specific parts of the design (credit
//! leases, trimmed feeds, a parked feed read not blocking other calls, crash leftovers).

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use tollgate_core::{generate_key, generate_token, Day, Overage, Status};
use tollgate_store::contract::{
    fresh_email, make_child, make_parent, next_op, parent_account, sub, EXPIRES, NOW,
};
use tollgate_store::redis_store::RedisStore;
use tollgate_store::{
    LeaseOp, NewInvitation, NewParent, Store, StoreError, UsageBatch, UsageDelta,
};
use tollgate_testkit::{wait_until, TestRedis, TestRedisCluster};

async fn single(redis: &TestRedis) -> RedisStore {
    RedisStore::connect(Some(&redis.url()), &[], "tg")
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contract_suite_single_server() {
    let redis = TestRedis::start();
    let store = single(&redis).await;
    assert_eq!(store.backend(), "redis");
    tollgate_store::contract::run_all(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contract_suite_on_a_three_master_cluster() {
    let cluster = TestRedisCluster::start();
    let store = RedisStore::connect(None, &cluster.urls(), "tg")
        .await
        .unwrap();
    tollgate_store::contract::run_all(&store).await;
    // Tenants really were spread over the masters (each script still ran in one slot).
    let holding = (0..cluster.ports.len())
        .filter(|&n| cluster.cli_at(n, &["dbsize"]).trim() != "0")
        .count();
    assert!(
        holding >= 2,
        "all data landed on one master: the test did not exercise the cluster"
    );
    // Leases and a blocking feed read work there too.
    lease_rule(&store).await;
    blocked_feed_read_does_not_stall(&store).await;
}

/// The same store answers `Unavailable` within a bound while Redis is down, and works again
/// (writes made before the outage intact) once it is back, without being rebuilt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_fails_fast_and_recovers_without_rebuilding() {
    let mut redis = TestRedis::start();
    let store = single(&redis).await;
    let (parent, key) = make_parent(&store, &fresh_email()).await;
    let head = store.feed_head().await.unwrap();

    redis.stop();
    let bound = Duration::from_secs(8);
    for what in [
        "ping",
        "account",
        "account_by_key",
        "create_parent",
        "read_feed",
    ] {
        let started = Instant::now();
        let res = tokio::time::timeout(bound + Duration::from_secs(5), async {
            match what {
                "ping" => store.ping().await.map(drop),
                "account" => store.account(&parent.id).await.map(drop),
                "account_by_key" => store.account_by_key(&key).await.map(drop),
                "create_parent" => {
                    let np = NewParent {
                        account: parent_account(&fresh_email()),
                        key_hash: generate_key(&mut rand::rng()).hash(),
                        subscriptions: Vec::new(),
                    };
                    store.create_parent(np).await.map(drop)
                }
                _ => store
                    .read_feed(&head, Duration::from_millis(500))
                    .await
                    .map(drop),
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{what} hung with Redis down"));
        assert!(
            matches!(res, Err(StoreError::Unavailable(_))),
            "{what} with Redis down: {res:?}"
        );
        assert!(
            started.elapsed() < bound,
            "{what} took {:?} to fail",
            started.elapsed()
        );
    }

    redis.restart();
    wait_until("the store to reconnect", Duration::from_secs(20), || {
        let store = store.clone();
        async move { store.ping().await.is_ok() }
    })
    .await;
    assert_eq!(
        store.account_by_key(&key).await.unwrap().map(|a| a.id),
        Some(parent.id.clone()),
        "the key written before the outage"
    );
    let (child, _) = make_child(&store, &parent.id).await;
    let mut seen = false;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut cursor = head;
    while !seen && Instant::now() < deadline {
        for ev in store
            .read_feed(&cursor, Duration::from_millis(500))
            .await
            .unwrap()
        {
            seen |= ev.change == tollgate_store::Change::Account(child.id.clone());
            cursor = ev.cursor;
        }
    }
    assert!(seen, "the feed after the outage");
}

/// A Redis that accepts connections but does not answer (all clients paused) makes calls fail
/// with `Unavailable` after the response time-out, not hang; afterwards every call gets its own
/// answer (late replies to the abandoned calls are not handed to later ones).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_redis_times_out_and_replies_stay_matched() {
    let redis = TestRedis::start();
    let store = single(&redis).await;
    let mut parents = Vec::new();
    for _ in 0..4 {
        parents.push(make_parent(&store, &fresh_email()).await);
    }
    assert_eq!(redis.cli(&["client", "pause", "3000", "ALL"]).trim(), "OK");
    let started = Instant::now();
    let frozen =
        futures_util::future::join_all(parents.iter().map(|(p, _)| store.account(&p.id))).await;
    assert!(
        frozen
            .iter()
            .all(|r| matches!(r, Err(StoreError::Unavailable(_)))),
        "{frozen:?}"
    );
    assert!(
        started.elapsed() < Duration::from_millis(2900),
        "{:?}",
        started.elapsed()
    );
    wait_until("Redis to answer again", Duration::from_secs(10), || {
        let store = store.clone();
        async move { store.ping().await.is_ok() }
    })
    .await;
    for _ in 0..3 {
        let answers = futures_util::future::join_all(
            parents.iter().map(|(_, key)| store.account_by_key(key)),
        )
        .await;
        for ((parent, _), answer) in parents.iter().zip(answers) {
            assert_eq!(answer.unwrap().map(|a| a.id), Some(parent.id.clone()));
        }
    }
}

/// After a scenario with every kind of write, no plaintext key or invitation token is anywhere
/// in Redis: not in a key name, not in any value of any type.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_plaintext_key_or_token_is_stored() {
    let redis = TestRedis::start();
    let store = single(&redis).await;
    let mut rng = rand::rng();
    let mut secrets = Vec::new();

    let parent_key = generate_key(&mut rng);
    let parent = store
        .create_parent(NewParent {
            account: parent_account(&fresh_email()),
            key_hash: parent_key.hash(),
            subscriptions: vec![sub("whois", 1000, Overage::Deny)],
        })
        .await
        .unwrap();
    secrets.push(parent_key.expose().to_owned());
    for n in 0..3 {
        let token = generate_token(&mut rng);
        let child = tollgate_store::contract::child_account(&parent.id, &fresh_email());
        store
            .invite(NewInvitation {
                child: child.clone(),
                token_hash: token.hash(),
                expires_at: EXPIRES,
            })
            .await
            .unwrap();
        secrets.push(token.expose().to_owned());
        if n == 2 {
            continue; // one invitation stays pending
        }
        let key = generate_key(&mut rng);
        store
            .accept_invitation(&token.hash(), key.hash(), NOW)
            .await
            .unwrap();
        secrets.push(key.expose().to_owned());
        let rotated = generate_key(&mut rng);
        store
            .rotate_key(&child.id, &key.hash(), rotated.hash())
            .await
            .unwrap();
        secrets.push(rotated.expose().to_owned());
        let delta = UsageDelta {
            account_id: child.id.as_str().into(),
            parent_id: parent.id.as_str().into(),
            product: "whois".into(),
            pool: "whois".into(),
            day: Day::from_unix_secs(NOW),
            requests: 3,
            credits: 3,
        };
        store
            .record_usage(&UsageBatch {
                writer: "node_t".into(),
                seq: n as u64,
                deltas: vec![delta],
            })
            .await
            .unwrap();
        if n == 1 {
            store.set_status(&child.id, Status::Deleted).await.unwrap();
        }
    }
    store
        .lease_credits(&parent.id, "whois", 1, 10, next_op())
        .await
        .unwrap();

    let dump = dump_everything(&redis);
    assert!(dump.len() > 1000, "the scan found too little: {dump}");
    for secret in &secrets {
        assert!(
            !dump.contains(secret.as_str()),
            "a plaintext secret is stored"
        );
    }
    assert!(
        !looks_like_secret(&dump, "at_", 29) && !looks_like_secret(&dump, "inv_", 40),
        "something shaped like a key or token is stored"
    );
}

/// Every key name and every value, read as its type requires.
fn dump_everything(redis: &TestRedis) -> String {
    let mut out = String::new();
    for key in redis.cli(&["--scan"]).lines().filter(|k| !k.is_empty()) {
        out.push_str(key);
        out.push('\n');
        let kind = redis.cli(&["type", key]);
        let read: &[&str] = match kind.trim() {
            "string" => &["get"],
            "hash" => &["hgetall"],
            "list" => &["lrange"],
            "set" => &["smembers"],
            "zset" => &["zrange"],
            "stream" => &["xrange"],
            other => panic!("unexpected type {other:?} of a stored key"),
        };
        let mut args = vec!["--raw", read[0], key];
        match read[0] {
            "lrange" | "zrange" => args.extend(["0", "-1"]),
            "xrange" => args.extend(["-", "+"]),
            _ => {}
        }
        out.push_str(&redis.cli(&args));
    }
    out
}

/// Whether `text` holds `prefix` followed by `len` characters of `[a-z0-9]`.
fn looks_like_secret(text: &str, prefix: &str, len: usize) -> bool {
    text.match_indices(prefix).any(|(at, _)| {
        let body = &text.as_bytes()[at + prefix.len()..];
        body.len() >= len
            && body[..len]
                .iter()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credit_leases_follow_the_rule() {
    let redis = TestRedis::start();
    lease_rule(&single(&redis).await).await;
}

async fn lease_rule(store: &dyn Store) {
    let (parent, _) = make_parent(store, &fresh_email()).await;
    let p = parent.id.as_str();
    store
        .put_subscription(p, sub("whois", 1000, Overage::Deny))
        .await
        .unwrap();
    // avail 1000: min(want 100, 1000 / 16 = 62) = 62.
    assert_eq!(
        store.lease_credits(p, "whois", 1, 100, next_op()).await,
        Ok((62, 938))
    );
    // want below need: need wins.
    assert_eq!(
        store.lease_credits(p, "whois", 5, 1, next_op()).await,
        Ok((5, 933))
    );
    assert_eq!(
        store.lease_credits(p, "whois", 934, 934, next_op()).await,
        Ok((0, 933))
    );
    store
        .release_credits(p, "whois", 67, next_op())
        .await
        .unwrap();
    // avail 1000 again; slices shrink as it runs low, down to exactly `need`.
    assert_eq!(
        store.lease_credits(p, "whois", 990, 990, next_op()).await,
        Ok((990, 10))
    );
    assert_eq!(
        store.lease_credits(p, "whois", 10, 100, next_op()).await,
        Ok((10, 0))
    );
    assert_eq!(
        store.lease_credits(p, "whois", 1, 1, next_op()).await,
        Ok((0, 0))
    );
    // Releasing more than reserved never makes credits appear.
    store
        .release_credits(p, "whois", 5000, next_op())
        .await
        .unwrap();
    assert_eq!(
        store.lease_credits(p, "whois", 1, 16_000, next_op()).await,
        Ok((62, 938))
    );
    assert!(matches!(
        store.lease_credits(p, "drs", 1, 1, next_op()).await,
        Err(StoreError::NotFound(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_feed_read_does_not_stall_other_calls() {
    let redis = TestRedis::start();
    blocked_feed_read_does_not_stall(&single(&redis).await).await;
}

async fn blocked_feed_read_does_not_stall(store: &dyn Store) {
    let (parent, _) = make_parent(store, &fresh_email()).await;
    let head = store.feed_head().await.unwrap();
    let wait = Duration::from_secs(3);
    let reader = async {
        let started = Instant::now();
        let events = store.read_feed(&head, wait).await.unwrap();
        (events, started.elapsed())
    };
    let others = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let started = Instant::now();
        for _ in 0..20 {
            store.account(&parent.id).await.unwrap().unwrap();
        }
        started.elapsed()
    };
    let ((events, waited), took) = tokio::join!(reader, others);
    assert!(
        took < Duration::from_secs(1),
        "20 reads took {took:?} while a feed read was parked"
    );
    // Nothing written meanwhile (on a store nobody else uses), so the reader waited it out.
    assert!(events.is_empty(), "{events:?}");
    assert!(waited >= wait - Duration::from_millis(50), "{waited:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trimmed_or_foreign_cursors_are_feed_trimmed() {
    let redis = TestRedis::start();
    let store = single(&redis).await;
    assert_eq!(store.feed_head().await.unwrap(), "0-0");
    assert_eq!(store.read_feed("0-0", Duration::ZERO).await, Ok(Vec::new()));
    make_parent(&store, &fresh_email()).await;
    let old = store.read_feed("0-0", Duration::ZERO).await.unwrap();
    assert_eq!(old.len(), 2, "create_parent appends two changes");
    make_parent(&store, &fresh_email()).await;
    assert_eq!(redis.cli(&["xtrim", "tg:feed", "MAXLEN", "1"]).trim(), "3");
    for cursor in ["0-0", old[0].cursor.as_str(), old[1].cursor.as_str()] {
        assert_eq!(
            store.read_feed(cursor, Duration::ZERO).await,
            Err(StoreError::FeedTrimmed),
            "cursor {cursor} after trimming"
        );
    }
    let head = store.feed_head().await.unwrap();
    assert_eq!(store.read_feed(&head, Duration::ZERO).await, Ok(Vec::new()));
    // A cursor from a stream that lost its data is older history: reload.
    let (ms, _) = head.split_once('-').unwrap();
    let future = format!("{}-0", ms.parse::<u64>().unwrap() + 60_000);
    assert_eq!(
        store.read_feed(&future, Duration::from_secs(5)).await,
        Err(StoreError::FeedTrimmed)
    );
}

/// Racing writers: one email, one winner; one invitation, one accepted key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_writers_keep_emails_and_invitations_unique() {
    let redis = TestRedis::start();
    let store = single(&redis).await;
    let email = fresh_email();
    let creates = (0..8).map(|n| {
        let email = if n % 2 == 0 {
            email.to_uppercase()
        } else {
            email.clone()
        };
        store.create_parent(NewParent {
            account: parent_account(&email),
            key_hash: generate_key(&mut rand::rng()).hash(),
            subscriptions: Vec::new(),
        })
    });
    let results = futures_util::future::join_all(creates).await;
    assert_eq!(
        results.iter().filter(|r| r.is_ok()).count(),
        1,
        "{results:?}"
    );
    assert!(results
        .iter()
        .all(|r| r.is_ok() || *r == Err(StoreError::EmailTaken)));

    let (parent, _) = make_parent(&store, &fresh_email()).await;
    let (child, token) =
        tollgate_store::contract::make_invite(&store, &parent.id, &fresh_email(), EXPIRES).await;
    let keys: Vec<_> = (0..8)
        .map(|_| generate_key(&mut rand::rng()).hash())
        .collect();
    let accepts = keys
        .iter()
        .map(|k| store.accept_invitation(&token, *k, NOW));
    let results = futures_util::future::join_all(accepts).await;
    assert_eq!(
        results.iter().filter(|r| r.is_ok()).count(),
        1,
        "{results:?}"
    );
    let mut resolving = 0;
    for key in &keys {
        if let Some(a) = store.account_by_key(key).await.unwrap() {
            assert_eq!(a.id, child.id);
            resolving += 1;
        }
    }
    assert_eq!(resolving, 1, "exactly the winning key resolves");
}

/// What a writer that died halfway leaves behind is harmless and heals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_leftovers_are_harmless() {
    let redis = TestRedis::start();
    let store = single(&redis).await;
    let (parent, _) = make_parent(&store, &fresh_email()).await;
    let (child, child_key) = make_child(&store, &parent.id).await;

    // A key pointer whose account was never written (claimed, then the writer died), and one
    // pointing at an account that does not hold that key: neither resolves.
    for (n, account) in [("ghost", "acc_ghost"), ("stale", child.id.as_str())] {
        let key = generate_key(&mut rand::rng()).hash();
        let pointer = format!(r#"{{"t":"{}","a":"{account}"}}"#, parent.id);
        redis.cli(&["set", &format!("tg:k:{}", key.to_hex()), &pointer]);
        assert_eq!(store.account_by_key(&key).await, Ok(None), "{n} pointer");
    }
    assert_eq!(
        store
            .account_by_key(&child_key)
            .await
            .unwrap()
            .map(|a| a.id),
        Some(child.id.clone())
    );

    // An email claimed by a writer that died before writing the account: taken while young...
    let email = fresh_email();
    let index = format!("tg:e:{}", email.to_lowercase());
    let young = format!(r#"{{"a":"acc_ghost","at":{}}}"#, now_ms());
    redis.cli(&["set", &index, &young]);
    let np = || NewParent {
        account: parent_account(&email),
        key_hash: generate_key(&mut rand::rng()).hash(),
        subscriptions: Vec::new(),
    };
    assert_eq!(store.create_parent(np()).await, Err(StoreError::EmailTaken));
    // ...and taken over once old.
    let old = format!(r#"{{"a":"acc_ghost","at":{}}}"#, now_ms() - 3_600_000);
    redis.cli(&["set", &index, &old]);
    let created = store.create_parent(np()).await.unwrap();
    assert!(redis.cli(&["get", &index]).contains(&created.id));
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// `rediss://` works: a real `redis-server` serving only TLS, with a certificate from a test CA
/// that the client trusts through `SSL_CERT_FILE` (how an operator adds a private CA).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_url_connects_and_serves() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let path = |name: &str| d.join(name).to_str().unwrap().to_owned();
    std::fs::write(
        d.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(&[
        &["req", "-x509"],
        &ec[..],
        &["-keyout", &path("ca.key"), "-out", &path("ca.pem")],
        &["-days", "2", "-subj", "/CN=tollgate-test-ca"],
    ]);
    openssl(&[
        &["req"],
        &ec[..],
        &["-keyout", &path("server.key"), "-out", &path("server.csr")],
        &["-subj", "/CN=127.0.0.1"],
    ]);
    openssl(&[
        &[
            "x509",
            "-req",
            "-in",
            &path("server.csr"),
            "-CA",
            &path("ca.pem"),
        ],
        &[
            "-CAkey",
            &path("ca.key"),
            "-CAcreateserial",
            "-out",
            &path("server.pem"),
        ],
        &["-days", "2", "-extfile", &path("ext.cnf")],
    ]);

    let port = tollgate_testkit::free_port();
    let server = Killed(
        std::process::Command::new("redis-server")
            .args([
                "--port",
                "0",
                "--tls-port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .args([
                "--tls-cert-file",
                &path("server.pem"),
                "--tls-key-file",
                &path("server.key"),
            ])
            .args([
                "--tls-ca-cert-file",
                &path("ca.pem"),
                "--tls-auth-clients",
                "no",
            ])
            .args(["--save", "", "--dir", &path("")])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-server on PATH"),
    );
    let ping = || {
        std::process::Command::new("redis-cli")
            .args([
                "--tls",
                "--cacert",
                &path("ca.pem"),
                "-p",
                &port.to_string(),
                "ping",
            ])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "PONG")
    };
    let end = Instant::now() + Duration::from_secs(10);
    while !ping() {
        assert!(Instant::now() < end, "redis-server did not answer over TLS");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Only this test uses TLS, so the process-wide variable affects no other test.
    std::env::set_var("SSL_CERT_FILE", path("ca.pem"));
    let url = format!("rediss://127.0.0.1:{port}/0");
    let store = RedisStore::connect(Some(&url), &[], "tg").await.unwrap();
    let head = store.feed_head().await.unwrap();
    let (parent, key) = make_parent(&store, &fresh_email()).await;
    assert_eq!(
        store.account_by_key(&key).await.unwrap().map(|a| a.id),
        Some(parent.id)
    );
    let events = store
        .read_feed(&head, Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(events.len(), 2, "{events:?}");
    drop(server);
}

/// A child process killed on drop.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn openssl(parts: &[&[&str]]) {
    let args: Vec<&str> = parts.iter().flat_map(|p| p.iter().copied()).collect();
    let out = std::process::Command::new("openssl")
        .args(&args)
        .output()
        .expect("openssl on PATH (it comes with ca-certificates)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A lease or release sent again with the same op (after a reply that timed out while Redis went
/// on to apply it, say) is applied once, and a repeated lease answers as the first one did; each
/// node's ops are its own; a node's final release removes its record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_or_release_sent_twice_is_applied_once() {
    let redis = TestRedis::start();
    let store = single(&redis).await;
    let (parent, _) = make_parent(&store, &fresh_email()).await;
    let p = parent.id.as_str();
    store
        .put_subscription(p, sub("whois", 1000, Overage::Deny))
        .await
        .unwrap();
    let a = |seq, last| LeaseOp {
        node: "node_a",
        seq,
        last,
    };
    for _ in 0..2 {
        assert_eq!(
            store.lease_credits(p, "whois", 1, 100, a(1, false)).await,
            Ok((62, 938))
        );
    }
    let b = LeaseOp {
        node: "node_b",
        seq: 1,
        last: false,
    };
    assert_eq!(
        store.lease_credits(p, "whois", 1, 10, b).await,
        Ok((10, 928))
    );
    for _ in 0..2 {
        store
            .release_credits(p, "whois", 62, a(2, false))
            .await
            .unwrap();
    }
    // node_b's 10 are still out: 990 left, not 1,000 (a release applied twice) or 928.
    assert_eq!(
        store.lease_credits(p, "whois", 1, 1, a(3, false)).await,
        Ok((1, 989))
    );
    let ops = format!("{{tg:t:{p}}}:leaseop");
    assert!(redis.cli(&["hkeys", &ops]).contains("node_a"));
    store
        .release_credits(p, "whois", 0, a(4, true))
        .await
        .unwrap();
    let left = redis.cli(&["hkeys", &ops]);
    assert!(
        !left.contains("node_a") && left.contains("node_b"),
        "{left}"
    );
}
