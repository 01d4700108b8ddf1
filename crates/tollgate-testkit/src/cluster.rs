//! `TestRedisCluster`: a real Redis Cluster of three masters (no replicas) on free ports, in one
//! temp dir, joined with `redis-cli --cluster create`, killed on drop.

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// See the module docs.
pub struct TestRedisCluster {
    /// The client port of each master.
    pub ports: Vec<u16>,
    children: Vec<Child>,
    dir: tempfile::TempDir,
}

impl TestRedisCluster {
    /// Starts three masters, joins them and waits (with a deadline) until every node says
    /// `cluster_state:ok`.
    pub fn start() -> TestRedisCluster {
        TestRedisCluster::start_with(3)
    }

    /// The same with `masters` nodes (Redis Cluster needs at least three).
    pub fn start_with(masters: usize) -> TestRedisCluster {
        let dir = tempfile::tempdir().expect("tempdir");
        // The bus port must be given: the default (port + 10000) does not exist above 55535.
        let mut taken = HashSet::new();
        let mut fresh = || loop {
            let p = crate::free_port();
            if taken.insert(p) {
                return p;
            }
        };
        let pairs: Vec<(u16, u16)> = (0..masters).map(|_| (fresh(), fresh())).collect();
        let mut cluster = TestRedisCluster {
            ports: pairs.iter().map(|(p, _)| *p).collect(),
            children: Vec::new(),
            dir,
        };
        for (port, bus) in &pairs {
            cluster.spawn(*port, *bus);
        }
        for port in cluster.ports.clone() {
            wait_for(
                &format!("redis-server on port {port} to answer PING"),
                || cli(port, &["ping"]).trim() == "PONG",
            );
        }
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for port in &cluster.ports {
            create.arg(format!("127.0.0.1:{port}"));
        }
        let out = create
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli on PATH");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        for port in cluster.ports.clone() {
            wait_for(&format!("node {port} to report cluster_state:ok"), || {
                cli(port, &["cluster", "info"]).contains("cluster_state:ok")
            });
        }
        cluster
    }

    fn spawn(&mut self, port: u16, bus: u16) {
        let dir = self.dir.path().to_str().expect("utf-8 temp path");
        let child = Command::new("redis-server")
            .args([
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                &format!("{dir}/nodes-{port}.conf"),
                "--port",
                &port.to_string(),
                "--cluster-port",
                &bus.to_string(),
                "--bind",
                "127.0.0.1",
                "--dir",
                dir,
                "--dbfilename",
                &format!("dump-{port}.rdb"),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on PATH (apt-get install redis-server)");
        self.children.push(child);
    }

    /// `redis://127.0.0.1:PORT` of every master: the seed list for a cluster client.
    pub fn urls(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect()
    }

    /// Runs `redis-cli -c` (follows redirects) against the first master; returns stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        cli_cluster(self.ports[0], args)
    }

    /// Runs `redis-cli` against one master (no redirects); returns stdout.
    pub fn cli_at(&self, node: usize, args: &[&str]) -> String {
        cli(self.ports[node], args)
    }

    /// The master (index into `ports`) that serves `key`'s slot, from `CLUSTER KEYSLOT` and the
    /// slot ranges of `CLUSTER NODES`.
    pub fn node_of(&self, key: &str) -> usize {
        let slot: u32 = self
            .cli_at(0, &["cluster", "keyslot", key])
            .trim()
            .parse()
            .expect("CLUSTER KEYSLOT answers a number");
        let nodes = self.cli_at(0, &["cluster", "nodes"]);
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            let Some(addr) = fields.get(1) else { continue };
            let serves = fields.iter().skip(8).any(|range| {
                let (lo, hi) = range.split_once('-').unwrap_or((range, range));
                matches!((lo.parse::<u32>(), hi.parse::<u32>()), (Ok(lo), Ok(hi)) if (lo..=hi).contains(&slot))
            });
            if serves {
                let port: u16 = addr
                    .split(['@', ','])
                    .next()
                    .and_then(|a| a.rsplit(':').next())
                    .and_then(|p| p.parse().ok())
                    .expect("CLUSTER NODES names ip:port@bus");
                return self
                    .ports
                    .iter()
                    .position(|p| *p == port)
                    .expect("the slot's master is one of ours");
            }
        }
        panic!("no master serves slot {slot} of `{key}`:\n{nodes}");
    }

    /// Lets the other masters keep serving their slots while one is down (Redis's default is to
    /// refuse every command once the cluster notices a master is gone).
    pub fn serve_partial_coverage(&self) {
        for node in 0..self.ports.len() {
            let out = self.cli_at(
                node,
                &["config", "set", "cluster-require-full-coverage", "no"],
            );
            assert_eq!(out.trim(), "OK", "CONFIG SET on node {node}");
        }
    }

    /// Kills one master (its slots become unreachable; connections to it are refused).
    pub fn stop(&mut self, node: usize) {
        let child = &mut self.children[node];
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for TestRedisCluster {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .arg("-p")
        .arg(port.to_string())
        .args(args)
        .output()
        .expect("redis-cli on PATH");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn cli_cluster(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .arg("-c")
        .arg("-p")
        .arg(port.to_string())
        .args(args)
        .output()
        .expect("redis-cli on PATH");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Polls `cond` every 50 ms for up to 30 s; panics with `what` on time-out.
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
