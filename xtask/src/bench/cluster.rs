//! `cargo xtask bench cluster`: one queue drained over a local Redis
//! Cluster, split into 1, 3 and 6 shards.
//!
//! Each run starts a fresh cluster of `--primaries` nodes, prefills N no-op
//! tasks through [`Shards`] (a task goes to the shard of its id), starts
//! `--workers` worker processes with `--shards S`, and measures the drain
//! from the task hashes (first start to last completion). Redis's CPU is
//! read per node (`INFO cpu`), so the table shows both the cluster's total
//! per task and the busiest node's share: with one shard one node does all
//! the queue's work, however many nodes the cluster has.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use exo_broker::{BrokerConfig, Shards};
use exo_proto::{Keys, TaskStatus};
use serde_json::json;

use super::{
    RedisCounters, Spread, cpu_seconds, cpu_when_listening, finished_tasks, markdown_table, median,
    metric_sum, payload, rounded,
};
use crate::demo::{Process, build_exo};

struct Options {
    primaries: usize,
    shards: Vec<u32>,
    tasks: usize,
    concurrency: usize,
    workers: usize,
    rounds: usize,
}

const USAGE: &str =
    "--primaries 3, --shards 1,3,6, --tasks N, --concurrency C, --workers W, --rounds R";

fn options(args: &[String]) -> Result<Options> {
    let mut options = Options {
        primaries: 3,
        shards: vec![1, 3, 6],
        tasks: 20_000,
        concurrency: 32,
        workers: 1,
        rounds: 2,
    };
    let mut args = args.iter();
    while let Some(flag) = args.next() {
        let mut value = || {
            args.next()
                .with_context(|| format!("{flag} needs a value ({USAGE})"))
        };
        match flag.as_str() {
            "--primaries" => options.primaries = value()?.parse()?,
            "--shards" => {
                options.shards = value()?
                    .split(',')
                    .map(str::parse)
                    .collect::<std::result::Result<_, _>>()?;
            }
            "--tasks" => options.tasks = value()?.parse()?,
            "--concurrency" => options.concurrency = value()?.parse()?,
            "--workers" => options.workers = value()?.parse()?,
            "--rounds" => options.rounds = value()?.parse()?,
            other => bail!("unknown option {other} ({USAGE})"),
        }
    }
    if options.primaries < 3 {
        bail!("a Redis Cluster needs at least 3 primaries");
    }
    if options.tasks == 0
        || options.concurrency == 0
        || options.workers == 0
        || options.rounds == 0
        || options.shards.contains(&0)
    {
        bail!("--tasks, --concurrency, --workers, --rounds and every --shards must be at least 1");
    }
    Ok(options)
}

/// One run's figures.
struct ClusterDrain {
    shards: u32,
    tasks_per_second: f64,
    redis_cpu_us_per_task: f64,
    busiest_node_share: f64,
    worker_cpu_us_per_task: f64,
}

pub(crate) fn bench_cluster(args: &[String]) -> Result<()> {
    let options = options(args)?;
    let exo = build_exo(true)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut drains = Vec::new();
    // Rounds outside, so a drift of the machine spreads over every count.
    for round in 1..=options.rounds {
        for &shards in &options.shards {
            let (drain, line) = runtime.block_on(cluster_run(&exo, &options, shards))?;
            let mut line = line;
            line["round"] = json!(round);
            println!("{line}");
            drains.push(drain);
        }
    }
    println!();
    println!(
        "exo on a {}-primary Redis Cluster: {} no-op tasks per run, {} worker(s) × {} slots, {} round(s), medians with (min–max)",
        options.primaries, options.tasks, options.workers, options.concurrency, options.rounds
    );
    println!();
    let one_shard = median(
        drains
            .iter()
            .filter(|drain| drain.shards == 1)
            .map(|drain| drain.tasks_per_second),
    );
    let mut rows = Vec::new();
    for &shards in &options.shards {
        let runs: Vec<&ClusterDrain> = drains
            .iter()
            .filter(|drain| drain.shards == shards)
            .collect();
        let throughput = Spread::of(runs.iter().map(|drain| drain.tasks_per_second));
        rows.push(vec![
            shards.to_string(),
            throughput.show(0),
            if one_shard > 0.0 {
                format!("{:.2}", throughput.median / one_shard)
            } else {
                "-".into()
            },
            format!(
                "{:.0}",
                median(runs.iter().map(|drain| drain.redis_cpu_us_per_task))
            ),
            format!(
                "{:.0}%",
                100.0 * median(runs.iter().map(|drain| drain.busiest_node_share))
            ),
            format!(
                "{:.0}",
                median(runs.iter().map(|drain| drain.worker_cpu_us_per_task))
            ),
        ]);
    }
    print!(
        "{}",
        markdown_table(
            &[
                "shards",
                "tasks/s",
                "vs 1 shard",
                "Redis CPU µs/task (all nodes)",
                "busiest node's share of Redis CPU",
                "busiest node's CPU µs/task",
                "worker CPU µs/task",
            ],
            &rows,
        )
    );
    Ok(())
}

async fn cluster_run(
    exo: &std::path::Path,
    options: &Options,
    shards: u32,
) -> Result<(ClusterDrain, serde_json::Value)> {
    let cluster = exo_testkit::RedisCluster::start(options.primaries);
    if cluster.ports().len() != options.primaries {
        bail!("the cluster has {} nodes", cluster.ports().len());
    }
    let keys = Keys::with_prefix("{exo}:");
    let queue = Shards::connect(
        BrokerConfig::new(cluster.url()).with_keys(keys.clone()),
        shards,
    )
    .await?;
    let tasks = options.tasks;
    let mut submits = tokio::task::JoinSet::new();
    for index in 0..tasks {
        let queue = queue.clone();
        let payload = payload("noop", index);
        submits.spawn(async move { queue.submit(payload).await.map(|_| ()) });
        if submits.len() >= 64 {
            submits.join_next().await.context("submit")???;
        }
    }
    while let Some(result) = submits.join_next().await {
        result??;
    }
    let ports = cluster.ports();
    let before = ports
        .iter()
        .map(|&port| RedisCounters::read(port))
        .collect::<Result<Vec<_>>>()?;
    let mut workers = Vec::new();
    for _ in 0..options.workers {
        let metrics_port = exo_testkit::free_port();
        let mut worker = Process(
            Command::new(exo)
                .args(["start", "worker", "--log-format", "compact"])
                .args(["--concurrency", &options.concurrency.to_string()])
                .args(["--shards", &shards.to_string()])
                .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
                .env("EXO_REDIS_URL", cluster.url())
                .env("EXO_KEY_PREFIX", keys.prefix())
                .env("EXO_QUEUE", keys.queue())
                .env("RUST_LOG", "warn")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .spawn()
                .context("start a worker")?,
        );
        let cpu_at_start = cpu_when_listening(&mut worker, metrics_port).await?;
        workers.push((worker, metrics_port, cpu_at_start));
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(900);
    loop {
        let finished: f64 = workers
            .iter()
            .map(|(_, port, _)| metric_sum(*port, super::FINISHED_METRICS).unwrap_or(0.0))
            .sum();
        if finished >= tasks as f64 {
            break;
        }
        if std::time::Instant::now() > deadline {
            bail!("the workers finished {finished} of {tasks} tasks within 15 minutes");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The last final write's round trip is counted right after it lands.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let round_trips: f64 = workers
        .iter()
        .map(|(_, port, _)| metric_sum(*port, &["exo_redis_round_trips_total"]))
        .sum::<Result<f64>>()?;
    let worker_cpu: f64 = workers
        .iter()
        .map(|(worker, _, start)| cpu_seconds(worker.0.id()).map(|now| now - start))
        .sum::<Result<f64>>()?;
    let node_cpu: Vec<f64> = ports
        .iter()
        .zip(&before)
        .map(|(&port, earlier)| Ok(RedisCounters::read(port)?.since(earlier).cpu_seconds))
        .collect::<Result<_>>()?;
    // Every task of every shard, page by page.
    let mut done = Vec::new();
    for broker in queue.brokers() {
        finished_tasks(broker, &mut done).await?;
    }
    let first_start = done
        .iter()
        .filter_map(|task| task.started_at)
        .fold(f64::MAX, f64::min);
    let last_end = done
        .iter()
        .filter_map(|task| task.completed_at)
        .fold(0.0, f64::max);
    let completed = done
        .iter()
        .filter(|task| task.status == TaskStatus::Completed)
        .count();
    for (worker, _, _) in &mut workers {
        worker.terminate(Duration::from_secs(30))?;
    }
    queue.first().close().await;
    drop(cluster);
    let seconds = (last_end - first_start).max(1e-6);
    let redis_total: f64 = node_cpu.iter().sum();
    let busiest = node_cpu.iter().copied().fold(0.0, f64::max);
    if completed != tasks {
        bail!("{completed} of {tasks} tasks completed");
    }
    let drain = ClusterDrain {
        shards,
        tasks_per_second: tasks as f64 / seconds,
        redis_cpu_us_per_task: redis_total * 1e6 / tasks as f64,
        busiest_node_share: if redis_total > 0.0 {
            busiest / redis_total
        } else {
            0.0
        },
        worker_cpu_us_per_task: worker_cpu * 1e6 / tasks as f64,
    };
    let line = json!({
        "system": "exo",
        "cluster_primaries": options.primaries,
        "shards": shards,
        "workers": options.workers,
        "concurrency": options.concurrency,
        "tasks": tasks,
        "completed": completed,
        "drain_seconds": rounded(seconds, 3),
        "tasks_per_second": rounded(drain.tasks_per_second, 0),
        "redis_cpu_us_per_task": rounded(drain.redis_cpu_us_per_task, 1),
        "redis_cpu_us_per_task_by_node": node_cpu.iter().map(|cpu| rounded(cpu * 1e6 / tasks as f64, 1)).collect::<Vec<_>>(),
        "busiest_node_share": rounded(drain.busiest_node_share, 2),
        "worker_cpu_us_per_task": rounded(drain.worker_cpu_us_per_task, 1),
        "worker_round_trips_per_task": rounded(round_trips / tasks as f64, 2),
    });
    Ok((drain, line))
}
