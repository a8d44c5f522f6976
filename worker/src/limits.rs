//! Every bound the worker enforces, in one place, with what happens when it is reached.
//!
//! ## Limits
//!
//! Tasks: fuel, memory, tables, wall time, output caps and stack (`DEFAULT_*`, `MAX_*` below),
//! each ending a task with its own `Outcome` or refusing it with `OUT_OF_RANGE`. Manifests and
//! blobs: field counts and sizes, refused with `INVALID_ARGUMENT`. The module cache and stream
//! buffers: bounded, so memory does not grow with the number of tasks or callers.
//!
//! The network: whatever a peer sends, it is answered with a status or its connection is closed
//! within a known time, and the resources it holds meanwhile are bounded.
//!
//! | Bound | Value | Reached |
//! |---|---|---|
//! | [`MAX_CONNECTIONS`] | 512 QUIC connections | a new connection is refused before its handshake |
//! | [`MAX_CONNECTIONS_PER_IP`] | 64 per IPv4 address or IPv6 /64 | same, for that address only |
//! | [`MAX_GOSSIP_CONNECTIONS`], [`MAX_GOSSIP_CONNECTIONS_PER_IP`] | 128, 8 per address: gossip connections, once their ALPN is known, leave the caps above for these | closed after the handshake |
//! | (relayed connections, `daemon::connections`) | counted per claimed key instead of per address, at most half of each total above (256 of the general, 64 of the gossip) | refused before the handshake; direct peers keep the other half |
//! | `daemon::reach::ONLINE_TIMEOUT` | 10 s at start for a relay and the network report | the worker starts reachable at its address only, and says so |
//! | `peergrid_proto::relays::MAX_RELAYS`, `MAX_RELAY_URL_BYTES` | 16 relays, 200-byte URLs (also in member records) | the configuration, or the record, is refused |
//! | (trust policy) | the caller's proven key must be trusted | closed with code 1 after the handshake |
//! | [`HANDSHAKE_TIMEOUT`] | 10 s for the TLS handshake, 10 s per stream for the HTTP/2 preface, 10 s with no stream open | connection (or stream) closed |
//! | [`HTTP2_KEEPALIVE_INTERVAL`] + [`HTTP2_KEEPALIVE_TIMEOUT`] | ping after 20 s of silence, 10 s to answer | connection closed, its calls cancelled |
//! | [`MAX_STREAMS_PER_CONNECTION`] | 64 calls at once | the client waits (HTTP/2 flow), or the stream is refused |
//! | [`HTTP2_MAX_PENDING_RESET_STREAMS`] | 20 | `GOAWAY` (HTTP/2 "rapid reset") |
//! | [`HTTP2_MAX_LOCAL_ERROR_RESET_STREAMS`] | 1024 | `GOAWAY` |
//! | [`HTTP2_MAX_HEADER_LIST_BYTES`] | 16 KiB of metadata | HTTP 431 (tonic clients: `UNKNOWN`) |
//! | `peergrid_proto::MAX_MESSAGE_BYTES` | 24 MiB per message | `OUT_OF_RANGE` |
//! | (truncated message: the body ends inside it) | | `INTERNAL` |
//! | [`REQUEST_STALL_TIMEOUT`] | 10 s without a byte | `DEADLINE_EXCEEDED`, call abandoned |
//! | [`MAX_PARTIAL_REQUEST_BYTES`] | 256 MiB in partly received messages | `RESOURCE_EXHAUSTED` |
//! | [`MAX_CONCURRENT_UPLOADS`] | 16 | `RESOURCE_EXHAUSTED` |
//! | [`MAX_CONCURRENT_DOWNLOADS`], [`DOWNLOAD_MAX_DURATION`] | 16 `GetBlob` streams, 30 min each | `RESOURCE_EXHAUSTED`; the stream ends early |
//! | [`UPLOAD_MAX_DURATION`] | 30 min per `PutBlob` | `DEADLINE_EXCEEDED`, partial file removed |
//! | [`BLOB_REQUESTS_PER_CONNECTION`], [`BLOB_REQUEST_WAIT`] | 64 blob requests per peer connection, 10 s for each | connection closed |
//! | [`BLOB_STALL_TIMEOUT`] | 30 s without a byte of a blob between peers | transfer abandoned; the receiver tries its next source |
//! | [`MAX_FETCH_SOURCES`] | 8 sources per `FetchBlob` | `INVALID_ARGUMENT` |
//! | [`MAX_BLOB_BYTES`] | 16 GiB, checked on the first chunk | `INVALID_ARGUMENT` |
//! | [`MAX_MODULE_BYTES`] | 256 MiB of module, checked before it is read | invalid module |
//! | `--blob-store-max-bytes` ([`DEFAULT_BLOB_STORE_MAX_BYTES`]) | 4 GiB of blobs and reserved uploads, [`MAX_STORED_BLOBS`] blobs | least recently used blobs no task holds evicted; else `RESOURCE_EXHAUSTED` on the first chunk; a blob larger than the whole store `OUT_OF_RANGE` |
//! | `--blob-quota-bytes` ([`DEFAULT_BLOB_QUOTA_DIVISOR`]) | a quarter of the cap per submitter key | the key's own least recently used blobs evicted; else `RESOURCE_EXHAUSTED`; a blob larger than the quota `OUT_OF_RANGE` |
//! | [`MAX_CONCURRENT_UPLOADS_PER_KEY`] | 4 | `RESOURCE_EXHAUSTED` |
//! | (bytes not matching the announced hash or size) | | `INVALID_ARGUMENT`, nothing stored |
//! | `peergrid_proto::BLOB_CHUNK_BYTES` | 1 MiB per chunk | `INVALID_ARGUMENT` |
//! | [`MAX_CREDIT_STATEMENTS_PER_CALL`] | 256 credit statements per `Credit` call | `INVALID_ARGUMENT`, none kept |
//! | [`MAX_CREDIT_RECORDS`] | 1,048,576 statements in the credit ledger (320 MiB) | `RESOURCE_EXHAUSTED` "credit ledger full", none of the call kept |
//! | [`MAX_CREDIT_RECORDS_PER_SUBMITTER`] | 262,144 statements of one submitter (a quarter of the ledger) | `RESOURCE_EXHAUSTED` "… share of the credit ledger full", none of the call kept |
//! | [`MAX_RECENT_RECEIPTS`] | 65,536 receipts remembered (task digest, submitter, fuel) for the `Credit` check, ~5 MB | the oldest is forgotten: a statement for it is skipped (`CreditAck.unknown`) |
//! | (a torn tail of the credit ledger at start) | at most [`MAX_CREDIT_STATEMENTS_PER_CALL`] whole records and a partial one, cut off | more: the worker refuses to start (exit 2), naming the file |
//! | [`MAX_CONCURRENT_CREDIT_CALLS`] | 2 `Credit` calls checked at once | later calls wait (each bounded by the connection's 64 streams) |
//!
//! Worst case held by hostile peers at once: [`MAX_CONNECTIONS`] descriptors, HTTP/2 buffers of
//! 1 MiB (hyper's default connection window) per connection, and [`MAX_PARTIAL_REQUEST_BYTES`]
//! of partly received messages, each for at most [`REQUEST_STALL_TIMEOUT`] without progress.

use std::time::Duration;

/// Fuel a guest burns in a second of CPU: the documented rule that turns seconds into fuel (a
/// job's `cpu_s`, `--cpu-s`). Measured on real guests with the sandbox's operator costs
/// (`benches/fuel_rate.rs`, BENCHMARKS.md "Fuel"): from 4.1 G/s (an interpreter's calls) to
/// 11.7 G/s (a tight integer loop) on one core of the reference machine, f64 Mandelbrot 5.2 G/s,
/// a renderer 7.5 G/s; 7 G, near their geometric middle, keeps every one within 2x of its
/// seconds (runs on that shared machine vary by up to a third).
pub const FUEL_PER_SECOND: u64 = 7_000_000_000;
/// Default fuel of a task that asks for none (`TaskLimits.fuel == 0`): ten seconds of CPU by
/// [`fuel_for_seconds`] (5 to 19 s on the reference machine, depending on the code). Reached:
/// the task ends with `OutOfFuel`.
pub const DEFAULT_FUEL: u64 = fuel_for_seconds(10);

/// The fuel for `seconds` of CPU, by the documented rule: `seconds × FUEL_PER_SECOND`
/// (saturating). Deterministic: the same seconds give the same fuel on every machine, so tasks
/// given in seconds agree like tasks given in fuel.
pub const fn fuel_for_seconds(seconds: u64) -> u64 {
    seconds.saturating_mul(FUEL_PER_SECOND)
}
/// Largest fuel a task may ask for: a day of CPU, as long as the largest wall-clock backstop
/// ([`MAX_TIMEOUT`]). Above: the task is refused with `OUT_OF_RANGE`.
pub const MAX_FUEL: u64 = fuel_for_seconds(24 * 60 * 60);

/// Default linear-memory cap of a task, in bytes. Reached: `memory.grow` traps and the task
/// ends with `MemoryLimit`.
pub const DEFAULT_MEMORY_BYTES: u64 = 256 * 1024 * 1024;
/// Largest memory cap a task may ask for. Above: refused with `OUT_OF_RANGE`.
pub const MAX_MEMORY_BYTES: u64 = 4 * 1024 * 1024 * 1024;

/// Default wall-clock backstop of a task. Reached: the task is dropped mid-flight (even inside a
/// sleeping host call) and ends with `TimedOut`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest wall-clock backstop a task may ask for. Above: refused with `OUT_OF_RANGE`.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 60 * 60);

/// Default caps on captured stdout and stderr, in bytes. Reached: the write that crosses the cap
/// traps and the task ends with `OutputLimit`; what fit is kept.
pub const DEFAULT_STDOUT_MAX_BYTES: u64 = 4 * 1024 * 1024;
pub const DEFAULT_STDERR_MAX_BYTES: u64 = 1024 * 1024;
/// Largest output caps a task may ask for: together they must fit in one gRPC message
/// (`peergrid_proto::MAX_MESSAGE_BYTES`). Above: refused with `OUT_OF_RANGE`.
pub const MAX_STDOUT_MAX_BYTES: u64 = 16 * 1024 * 1024;
pub const MAX_STDERR_MAX_BYTES: u64 = 4 * 1024 * 1024;

/// Default caps on what a task with outputs leaves under `/output`: the total size of its files
/// and their number (`peergrid.proto`, "Output files"). Reached: the task ends with
/// `OutputLimit` and its output files are dropped.
pub const DEFAULT_OUTPUT_MAX_BYTES: u64 = 64 * 1024 * 1024;
pub const DEFAULT_OUTPUT_MAX_FILES: u32 = 64;
/// Largest `/output` caps a task may ask for: the files are kept in the blob store until the
/// submitter fetches them, so one task's files must fit well within it. Above: `OUT_OF_RANGE`.
pub const MAX_OUTPUT_MAX_BYTES: u64 = 1024 * 1024 * 1024;
pub const MAX_OUTPUT_MAX_FILES: u32 = 1024;

/// Table elements a task may hold (each costs a pointer on the host). Reached: `table.grow`
/// fails and the task ends with `MemoryLimit`.
pub const MAX_TABLE_ELEMENTS: usize = 1_000_000;
/// Instances, memories and tables a task may create: a WASI preview 1 program is one module.
pub const MAX_INSTANCES: usize = 1;
pub const MAX_MEMORIES: usize = 1;
pub const MAX_TABLES: usize = 4;

/// Guest call-stack size, in bytes. Reached: the task traps with `stack_overflow`. Part of the
/// runtime fingerprint: where the overflow happens depends on it.
pub const MAX_WASM_STACK_BYTES: usize = 1024 * 1024;

/// Fuel between two yields of a running task to the executor, so that the wall-clock backstop
/// and shutdown are noticed promptly (about a millisecond of guest code).
pub const FUEL_YIELD_INTERVAL: u64 = 2_000_000;

/// Largest module or input file a worker stores, in bytes: blobs stream from file to wire to
/// file and are never held whole (ARCHITECTURE.md, "Peer-to-peer inputs"). Above: the upload
/// is refused with `INVALID_ARGUMENT` on its first chunk, which announces the size, before
/// anything is written. A blob must also fit the donor's store and the caller's quota
/// (`--blob-store-max-bytes`, a quarter of it per key): a 4 GiB input needs a 16 GiB store.
pub const MAX_BLOB_BYTES: u64 = 16 * 1024 * 1024 * 1024;
/// Largest module a worker compiles, in bytes: a module is read whole to be compiled. Above:
/// the task ends as an invalid module.
pub const MAX_MODULE_BYTES: u64 = 256 * 1024 * 1024;
/// Default cap on the whole blob store (`--blob-store-max-bytes`), in bytes: the files of every
/// blob and the room reserved by uploads in progress. Four jobs' worth of inputs at the
/// submitter's old `MAX_JOB_INPUT_BYTES` (1 GiB), or 16 blobs of 256 MiB; small beside a
/// donor's disk, and with the compiled-module cache ([`MODULE_DISK_CACHE_BYTES`]) it keeps a
/// worker's data directory near 6 GiB. Reached: the least recently used blobs no running or
/// queued task holds, of keys holding at least as much as the uploader will, are deleted to make
/// room; if that cannot make room, the upload is refused with `RESOURCE_EXHAUSTED` on its first
/// chunk, before anything is written.
pub const DEFAULT_BLOB_STORE_MAX_BYTES: u64 = 4 * 1024 * 1024 * 1024;
/// Smallest `--blob-store-max-bytes` accepted: one upload chunk.
pub const MIN_BLOB_STORE_MAX_BYTES: u64 = 1024 * 1024;
/// The default quota of one submitter key (`--blob-quota-bytes`) is the cap divided by this: a
/// quarter, so four keys at their quotas fill the store, and at the default cap one key holds a
/// whole job's inputs (1 GiB). Reached: the key's own least recently used blobs no task holds are
/// deleted to make room; if its tasks and uploads hold its whole quota, `RESOURCE_EXHAUSTED`.
pub const DEFAULT_BLOB_QUOTA_DIVISOR: u64 = 4;
/// Most blobs stored at once, whatever their size, and most charged to one key (a
/// [`DEFAULT_BLOB_QUOTA_DIVISOR`]th): bound the store's index in memory (about 150 bytes a blob,
/// so 15 MB at most) and the files in its directory. Reached: as for bytes, least recently used
/// blobs are evicted, then `RESOURCE_EXHAUSTED`.
pub const MAX_STORED_BLOBS: usize = 100_000;
/// Each blob is charged whole blocks of this size, at least one, as a file system stores it: a
/// flood of empty blobs costs room like any other.
pub const BLOB_BLOCK_BYTES: u64 = 4096;
/// Largest stdin a manifest may carry, and most input files per task. Above: `INVALID_ARGUMENT`.
pub const MAX_STDIN_BYTES: usize = 4 * 1024 * 1024;
pub const MAX_INPUT_FILES: usize = 1024;
/// Most args and env entries per task, and the longest id fields. Above: `INVALID_ARGUMENT`.
pub const MAX_ARGS: usize = 4096;
pub const MAX_ENV: usize = 1024;
pub const MAX_ID_BYTES: usize = 128;
/// Most hashes asked about in one `MissingBlobs` call. Above: `INVALID_ARGUMENT`.
pub const MAX_HASHES_PER_QUERY: usize = 4096;

/// Compiled modules kept in memory. Reached: the least recently used one is dropped (and
/// compiled again from its stored bytes when next needed).
pub const MODULE_CACHE_ENTRIES: usize = 64;

/// Compiled modules kept on disk, in `<data-dir>/compiled/` (only workers have one; `peergrid
/// run` does not). Reached (either bound): after a new artifact is written, the least recently
/// used ones are deleted until both hold again; a deleted one is compiled again when next needed.
/// A compiled artifact is several times its module's size (about 3–5×).
pub const MODULE_DISK_CACHE_ENTRIES: usize = 256;
pub const MODULE_DISK_CACHE_BYTES: u64 = 2 * 1024 * 1024 * 1024;

// The pooling instance allocator. wasmtime reserves, when the sandbox starts, address space for
// every slot of its pool: per slot one linear memory (`memory_reservation`, wasmtime's default of
// 4 GiB plus its 32 MiB guard, so that bounds checks stay elided: changing it would change
// compiled code), [`MAX_TABLES`] tables of [`MAX_TABLE_ELEMENTS`] pointers (8 MB each) and one
// async stack. That is about 4.1 GiB of *address space* per slot, none of it memory until a task
// touches it (`PROT_NONE`, not charged against overcommit): 8 slots on a 2-core worker reserve
// ~33 GiB of the 128 TiB a 64-bit process has. The price of the pool is this reservation and a
// fixed number of tasks that can hold an instance at once; the gain is that instantiating reuses
// a warm slot (no mmap/munmap per task, copy-on-write memory images kept mapped).

/// Times an instantiation that found every pool slot taken is retried, and the pause between:
/// the semaphore in front of the pool guarantees a free slot, but wasmtime's slot allocator is
/// sharded and misses a slot freed in a shard it already probed. Past the
/// retries (100 ms), the task ends `invalid_module` ("cannot instantiate").
pub const POOL_SHORTAGE_RETRIES: u32 = 50;
pub const POOL_SHORTAGE_RETRY_DELAY: Duration = Duration::from_millis(2);

/// Extra pool slots beyond one per sandbox thread. Tasks interleave on a thread (a guest yields
/// every [`FUEL_YIELD_INTERVAL`]) and a cancelled task frees its slot only when its executor
/// thread gets to drop it, so a few more than one per thread can be alive at once.
pub const POOL_HEADROOM_SLOTS: usize = 6;
/// Most pool slots (tasks holding an instance at once), whatever the number of threads: bounds
/// the address space reserved (~4.1 GiB per slot, so 1 TiB at most). Reached (by slots +
/// headroom): a task waits for a slot before its store is created, outside its wall-clock
/// backstop; it is never refused for it.
pub const MAX_POOL_SLOTS: usize = 256;
/// Pool slots for a sandbox with `threads` threads.
pub const fn pool_slots(threads: usize) -> usize {
    let slots = threads.saturating_add(POOL_HEADROOM_SLOTS);
    if slots > MAX_POOL_SLOTS {
        MAX_POOL_SLOTS
    } else {
        slots
    }
}
/// Largest instance state (`VMContext`: globals, table and function references) of a module,
/// in bytes. Above: the module fails to instantiate (`InvalidModule`). wasmtime's default.
pub const MAX_INSTANCE_STATE_BYTES: usize = 1024 * 1024;
/// Bytes of a released slot's linear memory, tables and async stack zeroed by `memset` instead
/// of being given back to the kernel (`madvise`). On Linux ≥ 6.7 wasmtime asks the kernel which
/// pages the task dirtied (`PAGEMAP_SCAN`) and zeroes only those, up to the budget: a task whose
/// working set fits needs no `madvise` at all, so no TLB shootdown across cores, and the next
/// task on the slot takes no page faults. Measured on `hello` (17 pages, a few dirtied): 85 µs →
/// 69 µs per trivial task. Without the scan (older kernels, other systems) the first bytes are
/// zeroed whether dirtied or not, and 1 MiB of that cost more than the faults it saved (47–54 µs
/// against 31–40 µs with 64 KiB), so the budget is chosen by what the kernel offers. Bounds what
/// an idle worker keeps resident: slots × (these).
pub const POOL_MEMORY_KEEP_RESIDENT_BYTES_WITH_SCAN: usize = 1024 * 1024;
pub const POOL_MEMORY_KEEP_RESIDENT_BYTES_WITHOUT_SCAN: usize = 64 * 1024;
pub const POOL_TABLE_KEEP_RESIDENT_BYTES: usize = 64 * 1024;
pub const POOL_STACK_KEEP_RESIDENT_BYTES: usize = 64 * 1024;

/// Tasks that may wait for a slot, per slot, instead of being refused: a submitter keeps
/// `slots × (1 + this)` copies in flight, so a slot that finishes a task starts the next one at
/// once instead of idling for a round trip and the submitter's commit. Reached (all slots busy
/// and this many tasks per slot waiting): the task is refused with `RESOURCE_EXHAUSTED`, as
/// before the queue existed. A waiting task holds only its manifest (no sandbox, no memory
/// reservation); if the donor's machine becomes busy meanwhile it is refused, not run.
pub const QUEUED_TASKS_PER_SLOT: u32 = 8;

/// Requests held per `Execute` stream, from being read until their answer is taken to be sent.
/// Reached: the worker stops reading the stream (HTTP/2 flow control then holds the client), so
/// a client that sends without reading its answers stalls only itself.
pub const EXECUTE_STREAM_BUFFER: usize = 256;
/// `Execute` requests held over all streams together. Reached: a request is answered at once
/// with `RESOURCE_EXHAUSTED` (retryable), so no number of streams makes the worker hold more.
/// Each holds its decoded request, then its answer (at most `MAX_MESSAGE_BYTES` each).
pub const MAX_EXECUTE_PENDING: usize = 4096;

// The network. tonic and hyper provide the HTTP/2 settings; the connection caps, the handshake
// deadline and the request stall timeout are the worker's own (`daemon::connections`,
// `daemon::request_guard`), as neither has them.

/// QUIC connections served at once, from all peers together. Reached: a new connection is
/// refused before its handshake, until one ends. A QUIC connection holds no descriptor (all share
/// the endpoint's socket), only memory and a place under this cap.
pub const MAX_CONNECTIONS: usize = 512;
/// Connections served at once from one IPv4 address or one IPv6 /64 (what one host usually
/// holds). Reached: new connections from there are refused at once; other peers are unaffected,
/// so one flooding host cannot lock the others out. A submitter needs one connection per worker.
pub const MAX_CONNECTIONS_PER_IP: usize = 64;
/// Gossip connections accepted at once, and from one IPv4 address or IPv6 /64. Once its
/// handshake shows a connection is gossip it moves from the caps above to these, so members
/// cannot crowd submitters out. Reached: the new gossip connection is closed (members still
/// reach this worker over the connections it dials itself).
pub const MAX_GOSSIP_CONNECTIONS: usize = 128;
pub const MAX_GOSSIP_CONNECTIONS_PER_IP: usize = 8;
/// Time a new connection has for its TLS handshake, each stream for sending the HTTP/2 client
/// preface, and a connection for keeping a stream open. Reached: closed. Garbage (anything but
/// the preface) is closed at once by the HTTP/2 handshake itself; this is for peers that send
/// nothing, or too little. Once the preface is in, keepalive takes over.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Length of the HTTP/2 client preface (`PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`), which must
/// arrive within [`HANDSHAKE_TIMEOUT`].
pub const HTTP2_PREFACE_BYTES: usize = 24;

/// HTTP/2 keepalive: after this long without a frame from the peer, the worker pings it...
pub const HTTP2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
/// ...and closes the connection if the ping is not answered within this. Reached: the
/// connection is closed and its calls are cancelled, so a vanished peer holds nothing for more
/// than interval + timeout (30 s).
pub const HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Calls (HTTP/2 streams) open at once on one connection, announced as
/// `SETTINGS_MAX_CONCURRENT_STREAMS`. Reached: a well-behaved client waits for one to end; a
/// stream opened beyond it is refused (`REFUSED_STREAM`, seen as `UNAVAILABLE`).
pub const MAX_STREAMS_PER_CONNECTION: u32 = 64;
/// Streams a client may open and reset before the worker has accepted them (the HTTP/2 "rapid
/// reset" attack, CVE-2023-44487). Reached: the connection is closed with `GOAWAY`.
pub const HTTP2_MAX_PENDING_RESET_STREAMS: usize = 20;
/// Streams the worker may reset for a client's protocol errors on one connection. Reached: the
/// connection is closed with `GOAWAY`.
pub const HTTP2_MAX_LOCAL_ERROR_RESET_STREAMS: usize = 1024;
/// Largest header block of a request (gRPC metadata), in bytes, announced as
/// `SETTINGS_MAX_HEADER_LIST_SIZE`. Above: the call is answered with HTTP 431 and no
/// grpc-status (tonic clients report `UNKNOWN`), and its stream is reset.
pub const HTTP2_MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;

/// Longest a request body may go without a byte while the worker waits for one: inside a
/// message on any call, and anywhere before the end of the body on every call but `Execute`
/// (a long-lived stream that is idle between tasks by design; keepalive covers its peer).
/// Reached: the call ends with `DEADLINE_EXCEEDED`, and what it held (a partial upload, its
/// buffered bytes, its stream) is freed. Messages larger than `peergrid_proto::MAX_MESSAGE_BYTES`
/// are refused by tonic with `OUT_OF_RANGE`, and a body that ends inside a message with
/// `INTERNAL`.
pub const REQUEST_STALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes of partly received request messages held at once, over all calls. Reached: the call
/// whose bytes would pass it ends with `RESOURCE_EXHAUSTED`. With [`REQUEST_STALL_TIMEOUT`]
/// this bounds what stalled senders can make the worker hold.
pub const MAX_PARTIAL_REQUEST_BYTES: usize = 256 * 1024 * 1024;
/// `PutBlob` uploads in progress at once. Reached: `RESOURCE_EXHAUSTED` (retry later); each
/// holds a temporary file of up to [`MAX_BLOB_BYTES`] (within the store's cap).
pub const MAX_CONCURRENT_UPLOADS: usize = 16;
/// `PutBlob` uploads one submitter key may have in progress at once, so one key cannot take every
/// one of the [`MAX_CONCURRENT_UPLOADS`] places. Reached: `RESOURCE_EXHAUSTED` (retry later).
pub const MAX_CONCURRENT_UPLOADS_PER_KEY: usize = 4;
/// Longest one `PutBlob` upload may take (256 MiB at about 150 KB/s). Reached:
/// `DEADLINE_EXCEEDED`, and the partial file is removed.
pub const UPLOAD_MAX_DURATION: Duration = Duration::from_secs(30 * 60);
/// `GetBlob` downloads in progress at once (each holds an open file and two chunks in flight).
/// Reached: `RESOURCE_EXHAUSTED` (retry later).
pub const MAX_CONCURRENT_DOWNLOADS: usize = 16;
/// Longest one `GetBlob` download may take, as for uploads. Reached: the stream ends early, and
/// the caller's hash check refuses what it got.
pub const DOWNLOAD_MAX_DURATION: Duration = Duration::from_secs(30 * 60);
/// Blob requests one peer connection on `peergrid/blob/1` may make, one after another. Reached:
/// the connection is closed; the peer dials again.
pub const BLOB_REQUESTS_PER_CONNECTION: usize = 64;
/// Longest wait for a peer's next blob request (and for its 32 bytes). Reached: the connection
/// is closed.
pub const BLOB_REQUEST_WAIT: Duration = Duration::from_secs(10);
/// A blob transfer between peers in which no byte moves for this long is abandoned, on both
/// sides: the sender's place is freed, the receiver tries its next source.
pub const BLOB_STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Sources one `FetchBlob` may name. Above: `INVALID_ARGUMENT`.
pub const MAX_FETCH_SOURCES: usize = 8;

/// Credit statements one `Credit` call may carry (ARCHITECTURE.md, "Credit"): a submitter's
/// batch, about 90 KB on the wire, checked in ~13 ms. Above: `INVALID_ARGUMENT`, none kept.
pub const MAX_CREDIT_STATEMENTS_PER_CALL: usize = 256;
/// Statements the credit ledger keeps, 320 bytes each (320 MiB at the cap; its dedup set ~20 MB
/// of memory): a year of one-second tasks on one core, several months of a busy 8-core donor's
/// typical tasks. Reached: `RESOURCE_EXHAUSTED` "credit ledger full", nothing of the call kept;
/// the donor keeps the file elsewhere (`peergrid-worker credit` reads any copy) and starts a new
/// one.
pub const MAX_CREDIT_RECORDS: u64 = 1 << 20;
/// Statements of one submitter the credit ledger keeps: a quarter of [`MAX_CREDIT_RECORDS`], as
/// the blob store gives each key a share, so that no single key, trusted or let in by
/// `--trust-any-key`, fills the ledger for everyone. Reached: `RESOURCE_EXHAUSTED` naming the
/// submitter's share, nothing of the call kept; other submitters' credit is still taken.
pub const MAX_CREDIT_RECORDS_PER_SUBMITTER: u64 = MAX_CREDIT_RECORDS / 4;
/// Receipts this worker remembers signing (task digest and submitter → `fuel_used`), in memory
/// only: a credit statement is taken only for one of them, with its fuel (ARCHITECTURE.md,
/// "Credit"). About 80 bytes each, ~5 MB full; at a thousand tasks a second, a minute of them,
/// while a submitter sends its statements within seconds (every 2 s). Reached: the oldest is
/// forgotten. Lost: credit for a task signed before a restart or more than this many receipts
/// ago; such a statement is skipped and counted in `CreditAck.unknown`.
pub const MAX_RECENT_RECEIPTS: usize = 65_536;
/// `Credit` calls checked and written at once; each takes a blocking thread for its signature
/// checks and its fsync. Reached: later calls wait for a place.
pub const MAX_CONCURRENT_CREDIT_CALLS: usize = 2;

/// What an installed service may use beyond its tasks' `--memory-mb`, once: the worker itself
/// (about 10 MiB idle, 25 MiB at full task rate, +40 MB while serving blobs to peers:
/// BENCHMARKS.md), its compiled-module cache ([`MODULE_CACHE_ENTRIES`] modules' machine code),
/// compiling a new module, the pool's resident pages for its [`POOL_HEADROOM_SLOTS`] spare slots,
/// and gossip state. Its unit's `MemoryMax=` is `--memory-mb` plus this plus
/// [`SERVICE_MEMORY_PER_CORE_BYTES`] per core (`install::memory_max_bytes`). Reached: the kernel
/// kills the worker (out of memory in its cgroup), systemd restarts it (`Restart=on-failure`), and
/// its tasks in flight are lost like a crash's: the submitter places them again.
pub const SERVICE_MEMORY_HEADROOM_BYTES: u64 = 256 * 1024 * 1024;
/// What each running task may hold outside its linear memory (which `--memory-mb` already
/// counts), at the largest caps a submitter may ask for: stdout and stderr pipes
/// ([`MAX_STDOUT_MAX_BYTES`] + [`MAX_STDERR_MAX_BYTES`]), stdin ([`MAX_STDIN_BYTES`]), instance
/// state ([`MAX_INSTANCE_STATE_BYTES`]), wasm stack ([`MAX_WASM_STACK_BYTES`]) and [`MAX_TABLES`]
/// tables of [`MAX_TABLE_ELEMENTS`] 8-byte references: 58 MiB, rounded up to 64. Part of an
/// installed service's `MemoryMax=`, as above.
pub const SERVICE_MEMORY_PER_CORE_BYTES: u64 = 64 * 1024 * 1024;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_slots_are_threads_plus_headroom_up_to_the_cap() {
        assert_eq!(pool_slots(1), 1 + POOL_HEADROOM_SLOTS);
        assert_eq!(pool_slots(MAX_POOL_SLOTS), MAX_POOL_SLOTS);
        assert_eq!(pool_slots(usize::MAX), MAX_POOL_SLOTS);
    }
}
