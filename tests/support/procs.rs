//! Private dockerd and registry processes a test can stop and start again,
//! apart from the shared ones of scripts/test-env.sh (which other tests use).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn wait_until(what: &str, limit: Duration, ready: impl Fn() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(start.elapsed() < limit, "{what} did not come up");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn stop(child: &mut Option<Child>) {
    if let Some(mut child) = child.take() {
        // SIGTERM, so dockerd unmounts what it mounted.
        let _ = Command::new("kill").arg(child.id().to_string()).status();
        let start = Instant::now();
        while child.try_wait().ok().flatten().is_none() && start.elapsed() < Duration::from_secs(20)
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// A dockerd of its own, with its own data root and socket.
pub struct PrivateEngine {
    dir: PathBuf,
    child: Option<Child>,
}

impl PrivateEngine {
    pub fn start(dir: &Path) -> PrivateEngine {
        let mut engine = PrivateEngine {
            dir: dir.to_owned(),
            child: None,
        };
        engine.start_again();
        engine
    }

    pub fn host(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("d.sock")
    }

    pub fn start_again(&mut self) {
        let log = std::fs::File::create(self.dir.join("dockerd.log")).unwrap();
        let child = Command::new("dockerd")
            .arg("--data-root")
            .arg(self.dir.join("data"))
            .arg("--exec-root")
            .arg(self.dir.join("exec"))
            .arg("--pidfile")
            .arg(self.dir.join("dockerd.pid"))
            .arg("-H")
            .arg(self.host())
            .args(["--iptables=false", "--ip6tables=false", "--bridge=none"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("dockerd starts");
        self.child = Some(child);
        let socket = self.socket();
        wait_until("private dockerd", Duration::from_secs(30), || {
            std::os::unix::net::UnixStream::connect(&socket).is_ok()
        });
    }

    pub fn stop(&mut self) {
        stop(&mut self.child);
    }
}

impl Drop for PrivateEngine {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A docker-registry of its own, on a fixed loopback port and storage.
pub struct PrivateRegistry {
    pub host: String,
    config: PathBuf,
    child: Option<Child>,
}

impl PrivateRegistry {
    pub fn start(dir: &Path) -> PrivateRegistry {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = dir.join("registry.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog: {{level: warn}}\nstorage:\n  filesystem: {{rootdirectory: {}}}\n\
                 http: {{addr: 127.0.0.1:{port}}}\n",
                dir.join("storage").display()
            ),
        )
        .unwrap();
        let mut registry = PrivateRegistry {
            host: format!("127.0.0.1:{port}"),
            config,
            child: None,
        };
        registry.start_again();
        registry
    }

    /// Starts the registry on its port again, and waits until it is the
    /// one answering there. A connect to a port nobody listens on yet can
    /// be made to itself (the kernel may pick that port as the source), and
    /// a registry that finds its port so taken exits: then it is started
    /// again, and a connection to itself is not taken for the registry.
    pub fn start_again(&mut self) {
        let start = Instant::now();
        let log = self.config.with_file_name("registry.log");
        loop {
            let mut child = Command::new("docker-registry")
                .arg("serve")
                .arg(&self.config)
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .expect("docker-registry starts");
            while child.try_wait().unwrap().is_none() {
                if let Ok(stream) = std::net::TcpStream::connect(&self.host)
                    && stream.local_addr().ok() != stream.peer_addr().ok()
                {
                    self.child = Some(child);
                    return;
                }
                assert!(
                    start.elapsed() < Duration::from_secs(20),
                    "private registry did not come up"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "private registry keeps exiting: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
    }

    pub fn stop(&mut self) {
        stop(&mut self.child);
    }
}

impl Drop for PrivateRegistry {
    fn drop(&mut self) {
        self.stop();
    }
}
