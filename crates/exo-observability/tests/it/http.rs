//! The worker's `/metrics`, `/healthz` and `/readyz` endpoint, over real
//! TCP connections.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use exo_observability::{
    HttpServer, MetricsRecorder, READ_TIMEOUT, Readiness, TaskLabels, record, serve_http,
};
use exo_proto::TaskStatus;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// A parsed response.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

/// Sends `request` as is and reads the answer to the end of the connection.
async fn send(addr: SocketAddr, request: &str) -> Answer {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request.as_bytes()).await.expect("write");
    read_answer(&mut stream).await
}

async fn read_answer(stream: &mut TcpStream) -> Answer {
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
        .await
        .expect("an answer within 10 s")
        .expect("read");
    let raw = String::from_utf8(raw).expect("UTF-8");
    let (head, body) = raw.split_once("\r\n\r\n").expect("a head and a body");
    let mut lines = head.lines();
    let status_line = lines.next().expect("status line");
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers = lines
        .map(|line| {
            let (name, value) = line.split_once(':').expect("header");
            (name.trim().to_owned(), value.trim().to_owned())
        })
        .collect();
    Answer {
        status,
        headers,
        body: body.to_owned(),
    }
}

struct Fixture {
    server: HttpServer,
    draining: Arc<AtomicBool>,
    connected: Arc<AtomicBool>,
}

/// A server whose registry holds 3 completed tasks, with readiness driven
/// by two switches.
async fn start(with_metrics: bool) -> Fixture {
    let recorder = MetricsRecorder::new();
    metrics::with_local_recorder(&recorder, || {
        for _ in 0..3 {
            record::task_finished(
                TaskLabels::new("exo:tasks", "worker-1"),
                TaskStatus::Completed,
                Duration::from_secs(1),
            );
        }
    });
    let draining = Arc::new(AtomicBool::new(false));
    let connected = Arc::new(AtomicBool::new(true));
    let readiness = {
        let draining = Arc::clone(&draining);
        let connected = Arc::clone(&connected);
        Arc::new(move || Readiness {
            redis_connected: connected.load(Ordering::SeqCst),
            draining: draining.load(Ordering::SeqCst),
        })
    };
    let metrics = with_metrics.then(|| recorder.handle());
    let server = serve_http("127.0.0.1:0".parse().expect("address"), metrics, readiness)
        .await
        .expect("serve");
    Fixture {
        server,
        draining,
        connected,
    }
}

async fn check(addr: SocketAddr, request: &str, status: u16, body_contains: &str) -> Answer {
    let answer = send(addr, request).await;
    assert_eq!(answer.status, status, "{request:?} -> {answer:?}");
    assert!(
        answer.body.contains(body_contains),
        "{request:?}: body {:?} lacks {body_contains:?}",
        answer.body
    );
    let length: usize = answer
        .header("Content-Length")
        .and_then(|length| length.parse().ok())
        .expect("a Content-Length");
    if !request.starts_with("HEAD") {
        assert_eq!(length, answer.body.len(), "{request:?}: Content-Length");
    }
    assert_eq!(answer.header("Connection"), Some("close"));
    answer
}

#[tokio::test]
async fn routes_methods_and_errors() {
    let fixture = start(true).await;
    let addr = fixture.server.local_addr();
    let counter =
        "exo_distributed_tasks_completed_total{queue=\"exo:tasks\",worker_id=\"worker-1\"} 3";

    let metrics = check(
        addr,
        "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
        200,
        counter,
    )
    .await;
    assert_eq!(
        metrics.header("Content-Type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    check(addr, "GET /metrics?name[]=x HTTP/1.1\r\n\r\n", 200, counter).await;
    check(addr, "GET /metrics HTTP/1.0\n\n", 200, counter).await;
    check(addr, "GET /healthz HTTP/1.1\r\n\r\n", 200, "ok").await;
    check(addr, "GET /readyz HTTP/1.1\r\n\r\n", 200, "ready").await;
    check(addr, "GET /nope HTTP/1.1\r\n\r\n", 404, "not found").await;
    check(addr, "GET / HTTP/1.1\r\n\r\n", 404, "not found").await;
    let post = check(
        addr,
        "POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
        405,
        "",
    )
    .await;
    assert_eq!(post.header("Allow"), Some("GET, HEAD"));
    check(addr, "DELETE /healthz HTTP/1.1\r\n\r\n", 405, "").await;
    check(addr, "POST /elsewhere HTTP/1.1\r\n\r\n", 404, "").await;
    check(addr, "garbage\r\n\r\n", 400, "malformed").await;
    check(addr, "GET /healthz SPDY/3\r\n\r\n", 505, "").await;

    let head = check(addr, "HEAD /metrics HTTP/1.1\r\n\r\n", 200, "").await;
    assert!(head.body.is_empty(), "HEAD has no body: {:?}", head.body);
    let announced: usize = head
        .header("Content-Length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert_eq!(
        announced,
        metrics.body.len(),
        "HEAD announces the GET length"
    );

    let too_large = format!(
        "GET /healthz HTTP/1.1\r\nX-Padding: {}\r\n\r\n",
        "a".repeat(10_000)
    );
    check(addr, &too_large, 431, "").await;
}

#[tokio::test]
async fn readiness_follows_the_callback() {
    let fixture = start(true).await;
    let addr = fixture.server.local_addr();
    let cases = [
        (true, false, 200, "ready"),
        (true, true, 503, "not ready: draining"),
        (false, false, 503, "not ready: not connected to Redis"),
        (false, true, 503, "not ready: draining"),
        (true, false, 200, "ready"),
    ];
    for (connected, draining, status, body) in cases {
        fixture.connected.store(connected, Ordering::SeqCst);
        fixture.draining.store(draining, Ordering::SeqCst);
        check(addr, "GET /readyz HTTP/1.1\r\n\r\n", status, body).await;
        // Liveness does not depend on readiness.
        check(addr, "GET /healthz HTTP/1.1\r\n\r\n", 200, "ok").await;
    }
}

#[tokio::test]
async fn metrics_off_is_a_404() {
    let fixture = start(false).await;
    let addr = fixture.server.local_addr();
    check(
        addr,
        "GET /metrics HTTP/1.1\r\n\r\n",
        404,
        "metrics are not enabled",
    )
    .await;
    check(addr, "GET /healthz HTTP/1.1\r\n\r\n", 200, "ok").await;
}

#[tokio::test]
async fn a_silent_client_blocks_nobody_and_is_timed_out() {
    let fixture = start(true).await;
    let addr = fixture.server.local_addr();

    let mut silent = TcpStream::connect(addr).await.expect("connect");
    let mut half_sent = TcpStream::connect(addr).await.expect("connect");
    half_sent.write_all(b"GET /metr").await.expect("write");

    let started = Instant::now();
    let clients: Vec<_> = (0..20)
        .map(|_| tokio::spawn(send(addr, "GET /metrics HTTP/1.1\r\n\r\n")))
        .collect();
    for client in clients {
        assert_eq!(client.await.expect("client task").status, 200);
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "20 clients took {:?} next to a silent one",
        started.elapsed()
    );

    // The silent clients are answered with 408 once the read deadline
    // passes.
    for stream in [&mut silent, &mut half_sent] {
        let answer = read_answer(stream).await;
        assert_eq!(answer.status, 408, "{answer:?}");
    }
    assert!(started.elapsed() >= READ_TIMEOUT - Duration::from_millis(100));
}

#[tokio::test]
async fn a_client_that_hangs_up_early_is_harmless() {
    let fixture = start(true).await;
    let addr = fixture.server.local_addr();
    drop(TcpStream::connect(addr).await.expect("connect"));
    let mut cut = TcpStream::connect(addr).await.expect("connect");
    cut.write_all(b"GET /healthz HTTP/1.1\r\n")
        .await
        .expect("write");
    cut.shutdown().await.expect("half-close");
    // A complete request line with the head cut short is still answered.
    assert_eq!(read_answer(&mut cut).await.status, 200);
    check(addr, "GET /healthz HTTP/1.1\r\n\r\n", 200, "ok").await;
}

#[tokio::test]
async fn shutdown_stops_listening() {
    let fixture = start(true).await;
    let addr = fixture.server.local_addr();
    check(addr, "GET /healthz HTTP/1.1\r\n\r\n", 200, "ok").await;
    fixture.server.shutdown().await;
    assert!(TcpStream::connect(addr).await.is_err(), "still listening");
}

#[tokio::test]
async fn binding_a_used_port_is_an_error() {
    let fixture = start(true).await;
    let addr = fixture.server.local_addr();
    let readiness = Arc::new(Readiness::ready);
    let error = serve_http(addr, None, readiness)
        .await
        .expect_err("port in use");
    assert!(error.to_string().contains(&addr.to_string()), "{error}");
}
