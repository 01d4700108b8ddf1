//! The hot path, piece by piece: key extraction, hashing, a cache look-up among 1,000,000 keys,
//! `admit()`, the meter's record and the rate limiter. Also prints memory per cached key.
//!
//! `cargo bench -p tollgate-benches` (add `-- --quick` for a fast pass).
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use tollgate_benches::{populated_cache, rss_bytes};
use tollgate_config::KeySource;
use tollgate_core::{admit, is_well_formed_key, Access, Day, KeyHash, Limit};
use tollgate_meter::{CellKey, Meter, RateLimits};
use tollgate_store::CacheLookup;

fn hot_path(c: &mut Criterion) {
    let sources = vec![
        KeySource::Header("x-api-key".into()),
        KeySource::Bearer,
        KeySource::Header("x-authentication-token".into()),
        KeySource::Query("apiKey".into()),
        KeySource::Json("apiKey".into()),
    ];
    let key = "at_abcdefghijklmnopqrstuvwxyz012";
    let req = http::Request::builder()
        .uri(format!(
            "/whoisserver/WhoisService?domainName=example.com&apiKey={key}"
        ))
        .header("user-agent", "bench")
        .header("accept", "*/*")
        .body(())
        .unwrap();
    let (parts, _) = req.into_parts();
    c.bench_function("extract key (query, 4th source)", |b| {
        b.iter(|| {
            black_box(tollgate_proxy::extract::from_head(
                black_box(&parts),
                &sources,
            ))
        })
    });
    c.bench_function("shape check + sha256", |b| {
        b.iter(|| {
            let k = black_box(key.as_bytes());
            assert!(is_well_formed_key(k));
            black_box(KeyHash::of(k))
        })
    });

    let before = rss_bytes();
    let (cache, keys) = populated_cache(10_000, 1_000_000);
    let after = rss_bytes();
    println!(
        "memory: {:.0} bytes per cached key (1,010,000 keys, RSS {} MiB -> {} MiB)",
        (after.saturating_sub(before)) as f64 / 1_010_000.0,
        before >> 20,
        after >> 20
    );
    let hashes: Vec<KeyHash> = keys.iter().step_by(997).map(|k| k.hash()).collect();
    let mut i = 0;
    c.bench_function("cache lookup (1M keys)", |b| {
        b.iter(|| {
            i = (i + 1) % hashes.len();
            match cache.lookup(&hashes[i]) {
                CacheLookup::Hit(p) => black_box(p),
                other => panic!("expected a hit, got {other:?}"),
            }
        })
    });
    let CacheLookup::Hit(p) = cache.lookup(&hashes[0]) else {
        panic!("hit")
    };
    let access = Access {
        pool: Some("whois"),
        permission: None,
    };
    c.bench_function("admit()", |b| {
        b.iter(|| {
            black_box(admit(
                &p.account.account,
                p.parent(),
                |pool| p.tenant.subscribed(pool),
                access,
            ))
        })
    });
    c.bench_function("cached decision (hash + lookup + admit)", |b| {
        b.iter(|| {
            let h = KeyHash::of(black_box(keys[12_345].expose()));
            let CacheLookup::Hit(p) = cache.lookup(&h) else {
                panic!("hit")
            };
            black_box(admit(
                &p.account.account,
                p.parent(),
                |pool| p.tenant.subscribed(pool),
                access,
            ))
        })
    });

    let meter = Meter::new(Arc::new(tollgate_benches::Unreached), u64::MAX);
    let cell = CellKey {
        account: p.account.id.clone(),
        parent: p.tenant.id.clone(),
        product: Arc::from("whois"),
        pool: Arc::from("whois"),
        day: Day(20_000),
    };
    c.bench_function("meter record", |b| {
        b.iter(|| meter.record(black_box(cell.clone()), 1))
    });

    let big = Limit {
        rps: u32::MAX,
        burst: u32::MAX,
    };
    let limits = RateLimits::new(big, big);
    c.bench_function("rate limiter check", |b| {
        b.iter(|| black_box(limits.check(&p).is_ok()))
    });
}

criterion_group!(benches, hot_path);
criterion_main!(benches);
