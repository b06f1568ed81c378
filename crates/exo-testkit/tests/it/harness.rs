//! The harness proves itself: start, PING, restart, stop.

use exo_testkit::{RedisServer, TestPostgres, TestRedis, redis_command};

#[test]
fn redis_starts_answers_restarts_and_stops() {
    let mut server = RedisServer::start();
    assert_eq!(server.command(&["PING"]).unwrap(), "+PONG");
    assert_eq!(server.command(&["SET", "k", "v"]).unwrap(), "+OK");
    server.restart();
    assert_eq!(server.command(&["PING"]).unwrap(), "+PONG");
    assert_eq!(
        server.command(&["EXISTS", "k"]).unwrap(),
        ":0",
        "no persistence by default"
    );
    server.kill();
    assert!(!server.is_running());
    assert!(server.command(&["PING"]).is_err());
    server.restart();
    assert_eq!(server.command(&["PING"]).unwrap(), "+PONG");
    let port = server.port();
    drop(server);
    assert!(
        redis_command(port, &["PING"]).is_err(),
        "dropped server still answers"
    );
}

#[test]
fn aof_survives_a_restart() {
    let mut server = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    assert_eq!(server.command(&["SET", "k", "v"]).unwrap(), "+OK");
    server.kill();
    server.restart();
    assert_eq!(server.command(&["EXISTS", "k"]).unwrap(), ":1");
}

#[test]
fn test_redis_gives_unique_prefixes() {
    let first = TestRedis::new();
    let second = TestRedis::new();
    assert_ne!(first.prefix(), second.prefix());
    assert!(first.prefix().ends_with(':'));
    assert_eq!(first.queue(), format!("{}tasks", first.prefix()));
}

#[test]
fn postgres_gives_each_test_its_own_database() {
    let first = TestPostgres::new();
    let second = TestPostgres::new();
    assert_ne!(first.url(), second.url());
    first
        .execute("CREATE TABLE t (x int); INSERT INTO t VALUES (41)")
        .unwrap();
    assert_eq!(first.execute("SELECT x + 1 FROM t").unwrap(), "42");
    assert!(
        second.execute("SELECT x FROM t").is_err(),
        "databases are isolated"
    );
}

#[test]
fn the_temporal_dev_server_serves_and_stops() {
    let mut server = exo_testkit::TemporalDevServer::start();
    let health = server.cli(&["operator", "cluster", "health"]);
    assert!(
        String::from_utf8_lossy(&health.stdout).contains("SERVING"),
        "{health:?}"
    );
    let port = server.port();
    server.kill();
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "a killed server still accepts connections"
    );
}

#[test]
fn test_temporal_gives_unique_task_queues_on_one_server() {
    let first = exo_testkit::TestTemporal::new();
    let second = exo_testkit::TestTemporal::new();
    assert_eq!(
        first.address(),
        second.address(),
        "one server per test process"
    );
    assert_ne!(first.task_queue(), second.task_queue());
    assert_eq!(first.workflow_status("exo-task-no-such-task"), None);
}
