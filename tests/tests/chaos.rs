//! A durability loop (issue 16): rounds of SIGKILL while writers upload blobs, put
//! manifests, move refs and record stage results at the same time; after every restart,
//! every write that was acknowledged is there and verified. `STAGECACHE_CHAOS_ROUNDS`
//! sets the rounds (default 3).

use stagecache_client::{Client, ClientConfig};
use stagecache_proto::v1::{RecordRequest, StageStatus, StatusRequest};
use stagecache_proto::{Digest, Manifest, ManifestEntry};
use stagecache_tests::{pseudo_random, ServerProcess};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Writes the server acknowledged.
#[derive(Default)]
struct Acked {
    blobs: Vec<(Digest, bytes::Bytes)>,
    manifests: Vec<Digest>,
    refs: Vec<(String, Digest)>,
    records: Vec<(Digest, String)>,
}

async fn client(url: &str) -> Client {
    let mut config = ClientConfig::new(url, "prod").unwrap();
    // A killed server refuses connections: writers stop at their first failure.
    config.retry.attempts = 1;
    Client::connect(config).await.unwrap()
}

/// Writes of one kind until the server stops answering (or `stop`), noting each ack.
async fn writer(
    url: String,
    kind: usize,
    round: usize,
    acked: Arc<Mutex<Acked>>,
    stop: Arc<AtomicBool>,
) {
    let Ok(c) = tokio::time::timeout(Duration::from_secs(10), client(&url)).await else {
        return;
    };
    let mut i = 0u64;
    while !stop.load(Ordering::SeqCst) {
        i += 1;
        let seed = (round as u64) << 40 | (kind as u64) << 32 | i;
        match kind {
            // Small blobs, many to a call.
            0 => {
                let items: Vec<(Digest, bytes::Bytes)> = (0..8)
                    .map(|n| {
                        let data =
                            bytes::Bytes::from(pseudo_random(seed * 8 + n, 1000 + n as usize));
                        (Digest::of_bytes(&data), data)
                    })
                    .collect();
                if c.batch_upload(items.clone()).await.is_err() {
                    return;
                }
                acked.lock().unwrap().blobs.extend(items);
            }
            // A blob, a manifest naming it, and a ref to the manifest.
            1 => {
                let data = bytes::Bytes::from(pseudo_random(seed, 4096));
                let d = Digest::of_bytes(&data);
                if c.batch_upload(vec![(d, data.clone())]).await.is_err() {
                    return;
                }
                acked.lock().unwrap().blobs.push((d, data));
                let m = Manifest::from_entries(vec![ManifestEntry {
                    path: format!("asset-{i}.bin"),
                    digest: d,
                    executable: false,
                }])
                .unwrap();
                let Ok(md) = c.put_manifest(&m).await else {
                    return;
                };
                acked.lock().unwrap().manifests.push(md);
                let name = format!("chaos/{round}/{i}");
                if c.set_ref(&name, md, Some(None), "chaos").await.is_err() {
                    return;
                }
                acked.lock().unwrap().refs.push((name, md));
            }
            // Stage results on manifests already acknowledged.
            _ => {
                let subject = acked.lock().unwrap().manifests.last().copied();
                let Some(subject) = subject else {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                };
                let stage = format!("Stage {kind}-{i}");
                let r = c
                    .record(RecordRequest {
                        subject: Some(subject.to_proto()),
                        stage: stage.clone(),
                        status: StageStatus::Succeeded as i32,
                        build_id: format!("run-{round}"),
                        actor: "chaos".into(),
                        ..Default::default()
                    })
                    .await;
                if r.is_err() {
                    return;
                }
                acked.lock().unwrap().records.push((subject, stage));
            }
        }
    }
}

/// Every acknowledged write, read back from `server` and verified.
async fn check(server: &ServerProcess, acked: &Acked) {
    let c = server.client("prod").await;
    let digests: Vec<Digest> = acked.blobs.iter().map(|(d, _)| *d).collect();
    for chunk in digests.chunks(10_000) {
        assert!(
            c.find_missing(chunk).await.unwrap().is_empty(),
            "acknowledged blobs are missing"
        );
    }
    for chunk in acked.blobs.chunks(500) {
        let ds: Vec<Digest> = chunk.iter().map(|(d, _)| *d).collect();
        let got = c.batch_download(&ds).await.unwrap();
        for ((d, want), got) in chunk.iter().zip(got) {
            assert_eq!(&got, want, "blob {d}");
        }
    }
    for m in &acked.manifests {
        c.get_manifest(*m).await.unwrap();
    }
    for (name, target) in &acked.refs {
        assert_eq!(c.resolve_ref(name).await.unwrap(), *target, "ref {name}");
    }
    for (subject, stage) in &acked.records {
        let lines = c
            .stage_status(StatusRequest {
                subject: Some(subject.to_proto()),
                stage: stage.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(
            lines
                .iter()
                .any(|l| l.status == StageStatus::Succeeded as i32),
            "record {stage} on {subject} is gone: {lines:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_writes_survive_rounds_of_sigkill() {
    let rounds: usize = std::env::var("STAGECACHE_CHAOS_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let mut server = ServerProcess::start_fresh();
    let acked = Arc::new(Mutex::new(Acked::default()));
    for round in 0..rounds {
        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..4)
            .map(|kind| {
                tokio::spawn(writer(
                    server.url(),
                    kind,
                    round,
                    acked.clone(),
                    stop.clone(),
                ))
            })
            .collect();
        // Let the writers get going (every kind acknowledged something this round, however
        // loaded the machine), then kill the server under them a little later.
        let (before, records_before) = {
            let a = acked.lock().unwrap();
            (a.blobs.len(), a.records.len())
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let going = {
                let a = acked.lock().unwrap();
                a.blobs.len() > before && a.records.len() > records_before
            };
            if going || std::time::Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(100 + 100 * round as u64)).await;
        tokio::task::block_in_place(|| server.crash_and_restart());
        stop.store(true, Ordering::SeqCst);
        for w in writers {
            tokio::time::timeout(Duration::from_secs(60), w)
                .await
                .expect("a writer hangs")
                .unwrap();
        }
        let snapshot = std::mem::take(&mut *acked.lock().unwrap());
        assert!(
            snapshot.blobs.len() > before && snapshot.records.len() > records_before,
            "round {round}: the writers acknowledged too little to test ({} blobs, {} records)",
            snapshot.blobs.len(),
            snapshot.records.len()
        );
        check(&server, &snapshot).await;
        *acked.lock().unwrap() = snapshot;
    }
    let total = acked.lock().unwrap();
    eprintln!(
        "{rounds} rounds: {} blobs, {} manifests, {} refs, {} records acknowledged and verified",
        total.blobs.len(),
        total.manifests.len(),
        total.refs.len(),
        total.records.len()
    );
}
