//! One large blob from the submitter to a worker, then from that worker to another (issue 15,
//! item 4): blobs stream from file to wire to file, never held whole, up to at least 4 GiB.
//!
//! ```text
//! cargo bench --profile dev -p peergrid-e2e --bench big_blob                 # 4 GiB
//! cargo bench --profile dev -p peergrid-e2e --bench big_blob -- --mib 1024   # any size
//! cargo bench --profile dev -p peergrid-e2e --bench big_blob -- --test       # CI size, 64 MiB
//! ```
//!
//! Two real `peergrid-worker` processes on loopback (A on 127.0.0.2, B on 127.0.0.3), each with
//! a blob store four times the blob (a key's quota is a quarter of the cap). This process is the
//! submitter: it writes the blob (pseudo-random bytes) to a file, uploads it to A with `PutBlob`
//! from that file, then asks B to fetch it from A (`FetchBlob`: bao-verified streaming over
//! `peergrid/blob/1`). It reports each leg's time and MB/s (10^6 bytes of blob), and the peak
//! resident memory (VmHWM) of A, B and itself against what each held before. It fails if B's
//! stored blob is not the original, or if any process's memory grew by half the blob or more.
//! The dependencies are optimised in the dev profile too, so its figures are the release ones
//! within noise.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use peergrid_e2e::{KeyPair, WorkerConfig, WorkerProcess, status_kb};
use peergrid_proto::ContentHash;
use peergrid_submitter::client::{Blob, BlobBody, Dialer, WorkerClient};

/// Writes `size` pseudo-random bytes to `path` 1 MiB at a time; returns their hash.
fn write_blob(path: &Path, size: u64) -> ContentHash {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut xof = blake3::Hasher::new().update(b"big blob").finalize_xof();
    let mut hasher = blake3::Hasher::new();
    let mut chunk = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        xof.fill(&mut chunk[..n]);
        hasher.update(&chunk[..n]);
        file.write_all(&chunk[..n]).unwrap();
        left -= n as u64;
    }
    file.flush().unwrap();
    ContentHash::from_blake3(hasher.finalize())
}

fn hash_file(path: &Path) -> ContentHash {
    let mut hasher = blake3::Hasher::new();
    hasher
        .update_reader(std::fs::File::open(path).unwrap())
        .unwrap();
    ContentHash::from_blake3(hasher.finalize())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mib: u64 = if args.iter().any(|arg| arg == "--test") {
        64
    } else {
        args.iter()
            .position(|arg| arg == "--mib")
            .map_or(4096, |at| args[at + 1].parse().expect("--mib N"))
    };
    let size = mib << 20;
    let dir = tempfile::tempdir().unwrap();
    let key = KeyPair::generate(dir.path(), "submitter");
    let store_cap = (4 * size + (64 << 20)).to_string();
    let start = |name: &str, host: &str| {
        WorkerProcess::start(
            &dir.path().join(name),
            WorkerConfig {
                extra_args: vec!["--blob-store-max-bytes", &store_cap],
                host: Some(host),
                ..WorkerConfig::trusting(&key)
            },
        )
    };
    let (a, b) = (start("a", "127.0.0.2"), start("b", "127.0.0.3"));
    let path = dir.path().join("blob.bin");
    let made = Instant::now();
    let hash = write_blob(&path, size);
    println!(
        "blob: {mib} MiB written in {:.1} s",
        made.elapsed().as_secs_f64()
    );
    let me = std::process::id();
    let blob = Blob {
        hash,
        size,
        body: BlobBody::File(path),
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (before, upload, fetch) = runtime.block_on(async {
        let dialer = Dialer::new(&key.identity(), &[]).await.unwrap();
        let mut to_a = WorkerClient::connect(&dialer, &a.addr).await.unwrap();
        let mut to_b = WorkerClient::connect(&dialer, &b.addr).await.unwrap();
        // Connected and idle: what each process holds without any blob in flight.
        let before = [a.pid(), b.pid(), me].map(|pid| status_kb(pid, "VmRSS:"));
        let started = Instant::now();
        to_a.put_blob(&blob).await.expect("A stores the blob");
        let upload = started.elapsed();
        let started = Instant::now();
        let stored = to_b
            .fetch_blob(hash, size, vec![a.addr.clone()])
            .await
            .expect("B fetches the blob from A");
        assert!(stored);
        let fetch = started.elapsed();
        dialer.close().await;
        (before, upload, fetch)
    });
    let mb = size as f64 / 1e6;
    println!(
        "upload to A (PutBlob, from a file): {:.1} s, {:.0} MB/s",
        upload.as_secs_f64(),
        mb / upload.as_secs_f64()
    );
    println!(
        "fetch by B from A (FetchBlob, verified): {:.1} s, {:.0} MB/s",
        fetch.as_secs_f64(),
        mb / fetch.as_secs_f64()
    );
    assert_eq!(
        hash_file(&b.data_dir.join("blobs").join(hash.to_hex())),
        hash,
        "B stored the original blob"
    );
    for ((name, pid), before) in [
        ("worker A", a.pid()),
        ("worker B", b.pid()),
        ("submitter", me),
    ]
    .into_iter()
    .zip(before)
    {
        let peak = status_kb(pid, "VmHWM:");
        println!(
            "{name}: {:.0} MiB resident before, peak {:.0} MiB ({:+.0} MiB for a {mib} MiB blob)",
            before as f64 / 1024.0,
            peak as f64 / 1024.0,
            (peak as f64 - before as f64) / 1024.0
        );
        assert!(
            (peak.saturating_sub(before)) < size / 1024 / 2,
            "{name} grew by half the blob or more"
        );
    }
}
