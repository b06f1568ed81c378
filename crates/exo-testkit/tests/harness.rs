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
