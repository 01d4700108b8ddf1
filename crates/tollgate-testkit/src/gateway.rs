//! `TestGateway`: the real `tollgate` binary, on free ports, with its own temp dir for config and
//! data. Stopped with SIGTERM (graceful) or killed on drop; SIGHUP reloads its config file; a
//! sibling process started with `--takeover` can share its ports (`SO_REUSEPORT`), as in a rolling
//! restart. [`exit_of`] runs the binary when it is expected to refuse to start.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::free_port;

/// `(id, api_key)` of a 201/200 body.
fn id_and_key(r: &crate::http::Reply) -> (String, String) {
    let v = r.json();
    let field = |f: &str| {
        v[f].as_str()
            .unwrap_or_else(|| panic!("no `{f}` in {v}"))
            .to_owned()
    };
    (field("id"), field("api_key"))
}

/// The operator token every test gateway is started with.
pub const OPERATOR_TOKEN: &str = "test-operator-token-0123456789";

/// See the module docs.
pub struct TestGateway {
    pub proxy: String,
    pub account: String,
    pub ops: String,
    bin: PathBuf,
    config_path: PathBuf,
    env: Vec<(String, String)>,
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// Shares its ports with another process: its own `/healthz` cannot tell that it is up.
    sibling: bool,
}

impl TestGateway {
    /// Starts the binary with `[proxy]`, `[account_api]`, `[ops]` on free ports, the embedded store
    /// in a temp dir unless `extra_toml` has its own `[store]`, and `extra_toml` (routes, limits...).
    pub async fn start(bin: &Path, extra_toml: &str) -> TestGateway {
        Self::start_with_env(bin, extra_toml, &[]).await
    }

    pub async fn start_with_env(bin: &Path, extra_toml: &str, env: &[(&str, &str)]) -> TestGateway {
        let dir = tempfile::tempdir().expect("tempdir");
        let (p, a, o) = (free_port(), free_port(), free_port());
        // The extra TOML may have a `[proxy]` section of its own: the listener goes into it.
        let proxy = format!("[proxy]\nlisten = \"127.0.0.1:{p}\"\ndrain_timeout = \"10s\"\n");
        let (own_proxy, extra_toml) = match extra_toml.contains("[proxy]\n") {
            true => ("", extra_toml.replacen("[proxy]\n", &proxy, 1)),
            false => (proxy.as_str(), extra_toml.to_owned()),
        };
        let mut toml = format!(
            "{own_proxy}\n[account_api]\nlisten = \"127.0.0.1:{a}\"\n\n[ops]\nlisten = \"127.0.0.1:{o}\"\n\n"
        );
        if !extra_toml.contains("[store]") {
            toml.push_str(&format!(
                "[store]\nbackend = \"embedded\"\npath = \"{}\"\n\n",
                dir.path().join("tollgate.db").display()
            ));
        }
        toml.push_str(&extra_toml);
        let config_path = dir.path().join("gateway.toml");
        std::fs::write(&config_path, toml).expect("write config");
        let mut g = TestGateway {
            proxy: format!("http://127.0.0.1:{p}"),
            account: format!("http://127.0.0.1:{a}"),
            ops: format!("http://127.0.0.1:{o}"),
            bin: bin.to_owned(),
            config_path,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            child: None,
            dir,
            sibling: false,
        };
        g.spawn().await;
        g
    }

    /// A second process on the same config file, hence the same ports and store, as the new node of
    /// a rolling restart (`run --takeover`). Its log is its own; it is up once the log says it is listening. The
    /// config file lives in `self`'s temp dir: keep `self` (stopped or not) alive as long.
    pub async fn start_sibling(&self) -> TestGateway {
        let mut g = TestGateway {
            proxy: self.proxy.clone(),
            account: self.account.clone(),
            ops: self.ops.clone(),
            bin: self.bin.clone(),
            config_path: self.config_path.clone(),
            env: self.env.clone(),
            child: None,
            dir: tempfile::tempdir().expect("tempdir"),
            sibling: true,
        };
        g.spawn().await;
        g
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    async fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("gateway.log"))
            .expect("log file");
        let mut command = Command::new(&self.bin);
        command.args(["run", "--config"]).arg(&self.config_path);
        if self.sibling {
            command.arg("--takeover");
        }
        let child = command
            .env("TOLLGATE_OPERATOR_TOKEN", OPERATOR_TOKEN)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn tollgate");
        self.child = Some(child);
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("tollgate exited early ({status}):\n{}", self.log());
            }
            if self.sibling {
                if self.log().contains("tollgate is listening") {
                    return;
                }
            } else if let Ok(r) = crate::http::get(&format!("{}/healthz", self.ops), &[]).await {
                if r.status.is_success() {
                    return;
                }
            }
            assert!(
                Instant::now() < end,
                "tollgate did not become healthy:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The process's log so far (stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("gateway.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends SIGTERM and waits (up to 30 s) for the exit status.
    pub async fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() > end {
                let _ = child.kill();
                panic!("tollgate did not exit after SIGTERM:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends `signal` (a name such as `HUP`) to the running process.
    pub fn signal(&self, signal: &str) {
        let pid = self.pid().expect("running");
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {pid} failed");
    }

    /// SIGHUP: re-read the config file. Returns at once; wait on the effect.
    pub fn reload(&self) {
        self.signal("HUP");
    }

    /// SIGKILL, no chance to flush: what a crash looks like.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Terminates gracefully and starts again on the same config, ports and data.
    pub async fn restart(&mut self) {
        if self.child.is_some() {
            let status = self.terminate().await;
            assert!(
                status.success(),
                "graceful exit failed: {status}\n{}",
                self.log()
            );
        }
        self.spawn().await;
    }

    /// `Authorization` header value for the operator API.
    pub fn operator_auth() -> String {
        format!("Bearer {OPERATOR_TOKEN}")
    }

    /// A team-enabled parent created through the operator API; `(id, key)`. Panics unless 201.
    pub async fn create_parent(
        &self,
        email: &str,
        subscriptions: serde_json::Value,
    ) -> (String, String) {
        let r = crate::http::post_json(
            &format!("{}/admin/v1/parents", self.ops),
            &[("authorization", &Self::operator_auth())],
            &serde_json::json!({"email": email, "team": true, "subscriptions": subscriptions}),
        )
        .await
        .expect("operator API reachable");
        assert_eq!(
            r.status,
            201,
            "create parent: {}",
            String::from_utf8_lossy(&r.body)
        );
        id_and_key(&r)
    }

    /// The parent invites `email` through the account API; returns the invitation token.
    pub async fn invite(&self, parent_key: &str, email: &str) -> String {
        let r = crate::http::post_json(
            &format!("{}/v1/team/members", self.account),
            &[("x-api-key", parent_key)],
            &serde_json::json!({ "email": email }),
        )
        .await
        .expect("account API reachable");
        assert_eq!(
            r.status,
            201,
            "invite: {}",
            String::from_utf8_lossy(&r.body)
        );
        r.json()["invitation_token"]
            .as_str()
            .expect("invitation_token")
            .to_owned()
    }

    /// Accepts an invitation; `(id, key)` of the new child. Panics unless 200.
    pub async fn accept(&self, token: &str) -> (String, String) {
        let r = crate::http::send(
            http::Method::POST,
            &format!("{}/v1/invitations/{token}/accept", self.account),
            &[],
            bytes::Bytes::new(),
        )
        .await
        .expect("account API reachable");
        assert_eq!(
            r.status,
            200,
            "accept: {}",
            String::from_utf8_lossy(&r.body)
        );
        id_and_key(&r)
    }

    /// Invites and accepts a child; `(id, key)`.
    pub async fn create_child(&self, parent_key: &str, email: &str) -> (String, String) {
        let token = self.invite(parent_key, email).await;
        self.accept(&token).await
    }
}

/// Runs `bin` with `args` (and the test operator token) until it exits, within `deadline`, and
/// returns its exit status and stderr: for a command that must refuse to start. Panics, killing
/// it, if it is still running at the deadline (it started instead of refusing).
pub async fn exit_of(
    bin: &Path,
    args: &[&std::ffi::OsStr],
    deadline: Duration,
) -> (ExitStatus, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let log_path = dir.path().join("stderr.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let mut child = Command::new(bin)
        .args(args)
        .env("TOLLGATE_OPERATOR_TOKEN", OPERATOR_TOKEN)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn tollgate");
    let end = Instant::now() + deadline;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return (
                status,
                std::fs::read_to_string(&log_path).unwrap_or_default(),
            );
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "still running after {deadline:?}, expected it to exit:\n{}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        self.kill();
    }
}
