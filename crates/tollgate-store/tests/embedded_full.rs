//! The embedded store on a disk that fills up, then has room again (its own test binary: the
//! limit on file size it sets holds for the whole process).
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::time::{Duration, Instant};

use tollgate_core::Overage;
use tollgate_store::contract::{fresh_email, make_parent, sub};
use tollgate_store::{EmbeddedStore, Store, StoreError};

/// Files this process writes may grow to `bytes` and no further (`None`: no limit), through
/// util-linux's `prlimit` on this process: a write past it fails with EFBIG, as one on a full disk
/// fails with ENOSPC.
fn limit_file_size(bytes: Option<u64>) {
    let soft = bytes.map_or("unlimited".to_owned(), |b| b.to_string());
    let out = std::process::Command::new("prlimit")
        .arg("--pid")
        .arg(std::process::id().to_string())
        .arg(format!("--fsize={soft}:"))
        .output()
        .expect("prlimit (util-linux) on PATH");
    assert!(
        out.status.success(),
        "prlimit: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A write the disk cannot take is 503 `store_unavailable` material (`Unavailable`), not an
/// internal error; and once the disk has room again, the store writes again without a restart
/// (redb refuses every write after an I/O error until the database is opened again, so before,
/// the store stayed broken until the process was restarted, and its usage was lost at exit).
#[tokio::test]
async fn a_full_disk_is_unavailable_and_the_store_writes_again_once_it_has_room() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let store = EmbeddedStore::open(&path).unwrap();
    let (parent, _) = make_parent(&store, &fresh_email()).await;
    let size = std::fs::metadata(&path).unwrap().len();
    // A write past the limit raises SIGXFSZ, whose default is to end the process: handled, the
    // write fails with EFBIG instead.
    let _xfsz =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::from_raw(libc::SIGXFSZ))
            .unwrap();
    limit_file_size(Some(size));

    // Subscriptions with long pool names grow the file until a write cannot.
    let mut failure = None;
    for n in 0..20_000 {
        let pool = format!("{n:0>200}");
        if let Err(e) = store
            .put_subscription(&parent.id, sub(&pool, 10, Overage::Allow))
            .await
        {
            failure = Some(e);
            break;
        }
    }
    let failure = failure.expect("the file never reached its limit");
    assert!(
        matches!(failure, StoreError::Unavailable(_)),
        "a full disk is {failure:?}"
    );

    limit_file_size(None);
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        match store
            .put_subscription(&parent.id, sub("after", 10, Overage::Allow))
            .await
        {
            Ok(()) => break,
            Err(StoreError::Unavailable(_)) if Instant::now() < end => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("the store did not write again: {e:?}"),
        }
    }
    store.ping().await.unwrap();
    let pools: Vec<String> = store
        .subscriptions(&parent.id)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.pool)
        .collect();
    assert!(pools.contains(&"after".to_owned()));
}
