//! Redis deployment shapes for tests: a local Cluster, a Sentinel set with
//! a primary and a replica, a TLS server with a private CA, and a server
//! with an ACL file.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use tempfile::TempDir;

use crate::{
    process::{find_binary, free_port, wait_for_port},
    redis::RedisServer,
};

const INSTALL_REDIS: &str = "Install it with `apt-get install -y redis-server redis-tools`.";

fn redis_cli(args: &[&str]) -> Result<String, String> {
    let cli = find_binary("redis-cli", &[], INSTALL_REDIS);
    let output = Command::new(cli)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|error| error.to_string())?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if output.status.success() {
        Ok(text)
    } else {
        Err(text)
    }
}

/// A local Redis Cluster of primaries (no replicas), slots spread evenly.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts `primaries` cluster-enabled servers and joins them with
    /// `redis-cli --cluster create`.
    pub fn start(primaries: usize) -> Self {
        let nodes: Vec<RedisServer> = (0..primaries.max(3))
            .map(|_| {
                RedisServer::start_with(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "2000",
                ])
            })
            .collect();
        let addresses: Vec<String> = nodes
            .iter()
            .map(|node| format!("127.0.0.1:{}", node.port()))
            .collect();
        let mut args = vec!["--cluster", "create"];
        args.extend(addresses.iter().map(String::as_str));
        args.extend(["--cluster-replicas", "0", "--cluster-yes"]);
        redis_cli(&args)
            .unwrap_or_else(|error| panic!("redis-cli --cluster create failed: {error}"));
        let cluster = RedisCluster { nodes };
        cluster.wait_ok(Duration::from_secs(20));
        cluster
    }

    fn wait_ok(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let ok = self.nodes.iter().all(|node| {
                redis_cli(&["-p", &node.port().to_string(), "CLUSTER", "INFO"])
                    .is_ok_and(|info| info.contains("cluster_state:ok"))
            });
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the cluster did not reach cluster_state:ok"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The nodes' ports.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(RedisServer::port).collect()
    }

    /// `redis+cluster://127.0.0.1:{p1},127.0.0.1:{p2},...`.
    pub fn url(&self) -> String {
        let nodes: Vec<String> = self
            .nodes
            .iter()
            .map(|node| format!("127.0.0.1:{}", node.port()))
            .collect();
        format!("redis+cluster://{}", nodes.join(","))
    }

    /// The nodes.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// The port of the node that owns `key`.
    pub fn owner_of(&self, key: &str) -> u16 {
        let port = self.nodes[0].port().to_string();
        let slot = redis_cli(&["-p", &port, "CLUSTER", "KEYSLOT", key]).unwrap_or_default();
        let slot: u16 = slot.trim().parse().unwrap_or(0);
        let shards = redis_cli(&["-p", &port, "CLUSTER", "SLOTS"]).unwrap_or_default();
        let numbers: Vec<u32> = shards
            .lines()
            .filter_map(|line| line.trim().parse().ok())
            .collect();
        // CLUSTER SLOTS prints: start, end, then the primary's port (after
        // its address line) for each range.
        numbers
            .windows(3)
            .find(|window| {
                u32::from(slot) >= window[0] && u32::from(slot) <= window[1] && window[2] > 1000
            })
            .map(|window| window[2] as u16)
            .unwrap_or(0)
    }
}

/// One `redis-sentinel` process (redis-server in sentinel mode).
#[derive(Debug)]
struct Sentinel {
    port: u16,
    child: Option<Child>,
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A primary, a replica and three sentinels watching the primary as
/// service `mymaster`, with short timeouts so a failover takes seconds.
#[derive(Debug)]
pub struct RedisSentinelSet {
    primary: RedisServer,
    replica: RedisServer,
    sentinels: Vec<Sentinel>,
    _dir: TempDir,
}

impl RedisSentinelSet {
    /// The monitored service's name.
    pub const SERVICE: &'static str = "mymaster";

    /// Starts the primary, the replica (waiting until it is in sync) and the
    /// sentinels (waiting until they see the replica and each other).
    pub fn start() -> Self {
        let primary = RedisServer::start();
        let replica =
            RedisServer::start_with(&["--replicaof", "127.0.0.1", &primary.port().to_string()]);
        let dir = tempfile::Builder::new()
            .prefix("exo-sentinel-")
            .tempdir()
            .expect("a sentinel dir");
        let binary = find_binary("redis-server", &[], INSTALL_REDIS);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !redis_cli(&["-p", &replica.port().to_string(), "INFO", "replication"])
            .is_ok_and(|info| info.contains("master_link_status:up"))
        {
            assert!(Instant::now() < deadline, "the replica did not sync");
            std::thread::sleep(Duration::from_millis(50));
        }
        let sentinels = (0..3)
            .map(|index| {
                let port = free_port();
                let config = dir.path().join(format!("sentinel-{index}.conf"));
                std::fs::write(
                    &config,
                    format!(
                        "port {port}\nbind 127.0.0.1\ndir {}\nsentinel monitor {service} 127.0.0.1 {primary} 2\n\
                         sentinel down-after-milliseconds {service} 1000\nsentinel failover-timeout {service} 5000\n\
                         sentinel parallel-syncs {service} 1\n",
                        dir.path().display(),
                        service = Self::SERVICE,
                        primary = primary.port(),
                    ),
                )
                .expect("write the sentinel config");
                let log = dir.path().join(format!("sentinel-{index}.log"));
                let child = Command::new(&binary)
                    .arg(&config)
                    .arg("--sentinel")
                    .arg("--logfile")
                    .arg(&log)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("start a sentinel");
                assert!(wait_for_port(port, Duration::from_secs(10)), "a sentinel did not start");
                Sentinel { port, child: Some(child) }
            })
            .collect::<Vec<_>>();
        let set = RedisSentinelSet {
            primary,
            replica,
            sentinels,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !set.sentinels.iter().all(|sentinel| {
            redis_cli(&[
                "-p",
                &sentinel.port.to_string(),
                "SENTINEL",
                "REPLICAS",
                Self::SERVICE,
            ])
            .is_ok_and(|replicas| replicas.contains(&set.replica.port().to_string()))
                && redis_cli(&[
                    "-p",
                    &sentinel.port.to_string(),
                    "SENTINEL",
                    "SENTINELS",
                    Self::SERVICE,
                ])
                .is_ok_and(|others| others.matches("127.0.0.1").count() >= 2)
        }) {
            assert!(
                Instant::now() < deadline,
                "the sentinels did not discover the set"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        set
    }

    /// `redis+sentinel://127.0.0.1:{s1},127.0.0.1:{s2},127.0.0.1:{s3}/mymaster`.
    pub fn url(&self) -> String {
        let nodes: Vec<String> = self
            .sentinels
            .iter()
            .map(|sentinel| format!("127.0.0.1:{}", sentinel.port))
            .collect();
        format!("redis+sentinel://{}/{}", nodes.join(","), Self::SERVICE)
    }

    /// The port the sentinels name as primary now.
    pub fn primary_port(&self) -> Option<u16> {
        let answer = redis_cli(&[
            "-p",
            &self.sentinels[0].port.to_string(),
            "SENTINEL",
            "GET-MASTER-ADDR-BY-NAME",
            Self::SERVICE,
        ])
        .ok()?;
        answer.lines().nth(1)?.trim().parse().ok()
    }

    /// The original primary.
    pub fn primary(&mut self) -> &mut RedisServer {
        &mut self.primary
    }

    /// The original replica.
    pub fn replica(&mut self) -> &mut RedisServer {
        &mut self.replica
    }

    /// Kills the primary and waits until the sentinels have promoted the
    /// replica. Returns how long the failover took.
    pub fn fail_over(&mut self, timeout: Duration) -> Duration {
        let started = Instant::now();
        let old = self.primary.port();
        self.primary.kill();
        loop {
            let switched = self.primary_port().is_some_and(|port| port != old);
            let promoted = redis_cli(&["-p", &self.replica.port().to_string(), "ROLE"])
                .is_ok_and(|role| role.starts_with("master"));
            if switched && promoted {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < timeout,
                "no failover within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A Redis that speaks only TLS, with a certificate for 127.0.0.1 signed
/// by a private CA (whose certificate clients must trust).
#[derive(Debug)]
pub struct TlsRedis {
    server: RedisServer,
    dir: TempDir,
}

impl TlsRedis {
    /// Generates the CA and server certificate with `openssl` and starts
    /// the server.
    pub fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("exo-tls-")
            .tempdir()
            .expect("a certificate dir");
        let openssl = find_binary(
            "openssl",
            &[],
            "Install it with `apt-get install -y openssl`.",
        );
        let run = |args: &[&str]| {
            let status = Command::new(&openssl)
                .args(args)
                .current_dir(dir.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("run openssl");
            assert!(status.success(), "openssl {args:?} failed");
        };
        std::fs::write(
            dir.path().join("ext.cnf"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
        )
        .expect("write ext.cnf");
        run(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=exo-test-ca",
        ]);
        run(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ]);
        run(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ]);
        let path = |name: &str| dir.path().join(name).display().to_string();
        let server = RedisServer::start_tls(&[
            "--tls-cert-file",
            &path("server.crt"),
            "--tls-key-file",
            &path("server.key"),
            "--tls-ca-cert-file",
            &path("ca.crt"),
            "--tls-auth-clients",
            "no",
        ]);
        TlsRedis { server, dir }
    }

    /// `rediss://127.0.0.1:{port}`.
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// The CA certificate clients must trust.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }
}

/// A Redis whose users come from an ACL file.
#[derive(Debug)]
pub struct AclRedis {
    server: RedisServer,
    _dir: TempDir,
}

impl AclRedis {
    /// Starts a server with these ACL file lines (`user ...`). The default
    /// user stays enabled with no password unless a line redefines it.
    pub fn start(acl_lines: &[&str]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("exo-acl-")
            .tempdir()
            .expect("an ACL dir");
        let file: PathBuf = dir.path().join("users.acl");
        let mut text = String::new();
        if !acl_lines
            .iter()
            .any(|line| line.starts_with("user default "))
        {
            text.push_str("user default on nopass ~* &* +@all\n");
        }
        for line in acl_lines {
            text.push_str(line);
            text.push('\n');
        }
        std::fs::write(&file, text).expect("write the ACL file");
        let server = RedisServer::start_with(&["--aclfile", &file.display().to_string()]);
        AclRedis { server, _dir: dir }
    }

    /// `redis://{user}:{password}@127.0.0.1:{port}`.
    pub fn url_for(&self, user: &str, password: &str) -> String {
        format!("redis://{user}:{password}@127.0.0.1:{}", self.server.port())
    }

    /// The server (for admin checks as the default user).
    pub fn server(&self) -> &RedisServer {
        &self.server
    }
}
