//! The real servers the production adapters' tests talk to, each started on a free loopback port
//! and stopped when dropped: redis-server, the tansu Kafka-protocol broker (SQLite storage, so
//! it keeps its data across a restart) and the nx-27017 MongoDB-wire server.
//!
//! They are installed by `scripts/stack install` (which `scripts/test` runs) under
//! `$STACK_TOOLS_DIR`, by default `~/.cache/libertum-tools`. A missing server fails the test with
//! the command that installs it: it never skips.
//!
//! `TESTKIT_REDIS_URL`, `TESTKIT_KAFKA_BROKERS` and `TESTKIT_MONGODB_URI` point `redis()`,
//! `kafka()` and `mongo()` at servers already running instead: the hosted CI runs the adapters'
//! tests against real Redis 7, Apache Kafka and MongoDB 7 that way. Tests that stop and start
//! their server use the `*_standin()` functions, which always start their own.

use std::{
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

pub fn tools_dir() -> PathBuf {
    std::env::var_os("STACK_TOOLS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
                .join(".cache/libertum-tools")
        })
}

/// A port the system considers free now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn require(program: &Path, what: &str) {
    assert!(
        program.exists() || which(program),
        "{what} is not installed ({} not found): run scripts/stack install, which scripts/test runs first",
        program.display()
    );
}

fn which(program: &Path) -> bool {
    program.components().count() == 1
        && std::env::var_os("PATH").is_some_and(|paths| {
            std::env::split_paths(&paths).any(|dir| dir.join(program).exists())
        })
}

/// One server process on 127.0.0.1:`port`, with its data under `dir`; or a server someone else
/// runs (`external`), which a test may use but not stop.
pub struct Server {
    pub port: u16,
    what: &'static str,
    external: Option<&'static str>,
    program: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
    dir: tempfile::TempDir,
    log: PathBuf,
}

impl Server {
    fn start(
        what: &'static str,
        program: PathBuf,
        args: impl Fn(&Path, u16) -> Vec<String>,
    ) -> Server {
        require(&program, what);
        let dir = tempfile::tempdir().expect("a data directory");
        let port = free_port();
        let log = dir.path().join("server.log");
        let mut server = Server {
            port,
            what,
            external: None,
            args: args(dir.path(), port),
            program,
            child: None,
            dir,
            log,
        };
        server.restart();
        server
    }

    /// The server named by the environment variable `var`, if it is set.
    fn external(what: &'static str, var: &'static str) -> Option<(Server, String)> {
        let address = std::env::var(var).ok().filter(|v| !v.is_empty())?;
        let server = Server {
            port: 0,
            what,
            external: Some(var),
            program: PathBuf::new(),
            args: Vec::new(),
            child: None,
            dir: tempfile::tempdir().expect("a directory"),
            log: PathBuf::new(),
        };
        Some((server, address))
    }

    fn owned(&self) {
        if let Some(var) = self.external {
            panic!(
                "{} is the server {var} names: a test that stops or starts its server must use a stand-in (servers::*_standin())",
                self.what
            );
        }
    }

    /// Starts the process again, on the same port with the same data, and waits until it accepts
    /// connections.
    pub fn restart(&mut self) {
        self.owned();
        assert!(self.child.is_none(), "{} is already running", self.what);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("server log");
        let child = Command::new(&self.program)
            .args(&self.args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "{} could not start ({}): {e}",
                    self.what,
                    self.program.display()
                )
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!(
                    "{} exited with {status} before accepting connections:\n{}",
                    self.what,
                    self.log_tail()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} did not accept connections on port {} within 60 s:\n{}",
                self.what,
                self.port,
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the process (SIGKILL); its data stays for `restart`.
    pub fn kill(&mut self) {
        self.owned();
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The server's process id while it runs (a stand-in's).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process still runs (a stopped one does).
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Sends `signal` (`STOP`, `CONT`...) to the running process.
    pub fn signal(&self, signal: &str) {
        self.owned();
        let pid = self.pid().expect("the server runs");
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{signal} {pid} failed");
    }

    /// Kills the server when this process exits, even if it is never dropped (a server shared
    /// by the tests of one binary, kept in a static): a watchdog shell waits for this process.
    pub fn die_with_this_process(&self) {
        let Some(pid) = self.pid() else { return };
        let script = format!(
            "while kill -0 {} 2>/dev/null; do sleep 1; done; kill -9 {pid} 2>/dev/null",
            std::process::id()
        );
        let _ = Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
    }

    /// The file the server's output goes to (in its data directory, gone when it is dropped).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

/// A stand-in server watched by a thread that restarts it, on the same port and data, when its
/// log says it has stopped serving while its process lives on (`dead`, a line of its log), as
/// an orchestrator's liveness probe would. Each restart is printed and counted.
///
/// tansu 0.6.0 needs it: its storage loop ends at the first request whose client went away
/// before the answer (`ChannelRequestService::serve` returns the error of a failed
/// `tx.send(response)`), after which every request fails with `UnableToSend`. A client killed
/// or paused mid-request (what the failover tests do to replicas) is enough. A real broker
/// restarted is a fault the services must survive anyway (`tests/faults.rs`).
pub struct Supervised {
    server: std::sync::Arc<std::sync::Mutex<Server>>,
    restarts: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    watchdog: Option<std::thread::JoinHandle<()>>,
}

impl Supervised {
    pub fn new(server: Server, dead: &'static str) -> Supervised {
        use std::sync::{Arc, Mutex, atomic::Ordering};
        let server = Arc::new(Mutex::new(server));
        let restarts = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let watchdog = {
            let (server, restarts, stop) = (server.clone(), restarts.clone(), stop.clone());
            std::thread::spawn(move || {
                use std::io::{Read, Seek};
                // Only what the log gained since the last look is read.
                let mut read = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(200));
                    let mut server = server.lock().unwrap_or_else(|e| e.into_inner());
                    let mut fresh = Vec::new();
                    if let Ok(mut log) = std::fs::File::open(&server.log)
                        && log.seek(std::io::SeekFrom::Start(read)).is_ok()
                    {
                        let _ = log.read_to_end(&mut fresh);
                    }
                    read += fresh.len() as u64;
                    let died = String::from_utf8_lossy(&fresh).contains(dead);
                    if died && server.child.is_some() {
                        eprintln!(
                            "{} stopped serving ({dead} in its log): restarted on port {}",
                            server.what, server.port
                        );
                        server.kill();
                        server.restart();
                        server.die_with_this_process();
                        restarts.fetch_add(1, Ordering::SeqCst);
                        read = std::fs::metadata(&server.log).map_or(0, |m| m.len());
                    }
                }
            })
        };
        Supervised {
            server,
            restarts,
            stop,
            watchdog: Some(watchdog),
        }
    }

    /// Runs `f` on the server (the watchdog waits meanwhile).
    pub fn with<R>(&self, f: impl FnOnce(&mut Server) -> R) -> R {
        f(&mut self.server.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// How many times the watchdog restarted it.
    pub fn restarts(&self) -> usize {
        self.restarts.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(watchdog) = self.watchdog.take() {
            let _ = watchdog.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.external.is_none() {
            self.kill();
        }
    }
}

/// Redis: the one `TESTKIT_REDIS_URL` names, or a stand-in.
pub fn redis() -> (Server, String) {
    Server::external("Redis", "TESTKIT_REDIS_URL").unwrap_or_else(redis_standin)
}

/// A Kafka broker: the one `TESTKIT_KAFKA_BROKERS` names, or a stand-in.
pub fn kafka() -> (Server, String) {
    Server::external("Kafka", "TESTKIT_KAFKA_BROKERS").unwrap_or_else(kafka_standin)
}

/// MongoDB: the one `TESTKIT_MONGODB_URI` names (a replica set: the store needs transactions),
/// or a stand-in.
pub fn mongo() -> (Server, String) {
    Server::external("MongoDB", "TESTKIT_MONGODB_URI").unwrap_or_else(mongo_standin)
}

/// redis-server with no persistence.
pub fn redis_standin() -> (Server, String) {
    let server = Server::start("redis-server", PathBuf::from("redis-server"), |_, port| {
        [
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ]
        .map(String::from)
        .to_vec()
    });
    let url = format!("redis://127.0.0.1:{}", server.port);
    (server, url)
}

/// The tansu broker on SQLite: topics, messages and committed offsets survive `kill` + `restart`.
pub fn kafka_standin() -> (Server, String) {
    let server = Server::start(
        "the tansu Kafka broker",
        tools_dir().join("bin/tansu"),
        |_, port| {
            let url = format!("tcp://127.0.0.1:{port}");
            vec![
                "broker".into(),
                "--listener-url".into(),
                url.clone(),
                "--advertised-listener-url".into(),
                url,
                // tansu reads a sqlite:// path relative to its working directory, which is `dir`.
                "--storage-engine".into(),
                "sqlite://tansu.db".into(),
            ]
        },
    );
    let brokers = format!("127.0.0.1:{}", server.port);
    (server, brokers)
}

/// The nx-27017 MongoDB-wire server on SQLite, started through `mongo_standin.py`: that launcher
/// rolls back a transaction whose client went away, as MongoDB does, instead of leaving it open
/// and readable by every other client.
pub fn mongo_standin() -> (Server, String) {
    const WHAT: &str = "the nx-27017 MongoDB-wire server";
    require(&tools_dir().join("nx/bin/nx-27017"), WHAT);
    let server = Server::start(WHAT, tools_dir().join("nx/bin/python3"), |dir, port| {
        let data = dir.join("data");
        std::fs::create_dir_all(&data).expect("data directory");
        vec![
            "-c".into(),
            include_str!("mongo_standin.py").into(),
            "--data-dir".into(),
            data.display().to_string(),
            "--port".into(),
            port.to_string(),
            "--log-file".into(),
            dir.join("nx.log").display().to_string(),
            "--pid-file".into(),
            dir.join("nx.pid").display().to_string(),
        ]
    });
    let uri = format!("mongodb://127.0.0.1:{}/?directConnection=true", server.port);
    (server, uri)
}

/// Runs `script` with the Python of the virtual environment `venv` under [`tools_dir`] (where
/// `scripts/stack install` puts `package`), on a file holding `input` as JSON: its report, or
/// `Err` with it if the script failed. A missing environment fails the test, naming the fix.
pub fn python_check(
    venv: &str,
    package: &str,
    script: &Path,
    input: &serde_json::Value,
) -> Result<String, String> {
    let python = tools_dir().join(venv).join("bin/python3");
    assert!(
        python.exists(),
        "the {package} package is not installed ({} not found): run scripts/stack install, which scripts/test runs first",
        python.display()
    );
    let file = tempfile::NamedTempFile::new().expect("a temporary file");
    std::fs::write(file.path(), serde_json::to_vec(input).unwrap_or_default())
        .expect("the input written");
    let out = std::process::Command::new(python)
        .arg(script)
        .arg(file.path())
        .output()
        .expect("python runs");
    let report =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        Ok(report)
    } else {
        Err(report)
    }
}
