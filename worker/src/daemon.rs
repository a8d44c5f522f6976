//! Starting and stopping a worker: identity, storage, sandbox and gRPC server, wired together.

use std::net::SocketAddr;
use std::path::PathBuf;

use peergrid_proto::{Identity, KeyFileError, PublicKey};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

use crate::admission::TrustPolicy;
use crate::blobs::BlobStore;
use crate::sandbox::{Sandbox, SandboxOptions};
use crate::service::WorkerService;

/// How to run a worker.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub trust: Vec<PublicKey>,
    /// Tasks run at once; more are refused with RESOURCE_EXHAUSTED.
    pub slots: u32,
}

/// Why a worker could not start. Each names the file or address involved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    #[error("cannot use data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Key(#[from] KeyFileError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start the sandbox: {0}")]
    Sandbox(String),
    #[error("gRPC server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// A worker that is listening; [`Worker::serve`] runs it until shutdown.
pub struct Worker {
    listener: TcpListener,
    service: WorkerService,
    pub addr: SocketAddr,
    pub public_key: PublicKey,
    pub fingerprint: String,
}

impl Worker {
    /// Opens the data directory (creating the identity key on first start) and binds the port.
    pub async fn start(options: WorkerOptions) -> Result<Self, StartError> {
        let data_dir = options.data_dir.clone();
        let dir_error = |source| StartError::DataDir {
            path: data_dir.clone(),
            source,
        };
        std::fs::create_dir_all(&options.data_dir).map_err(dir_error)?;
        let identity = Identity::load_or_create(&options.data_dir.join("identity.key"))?;
        let blobs = BlobStore::open(&options.data_dir).map_err(dir_error)?;
        let sandbox = Sandbox::new(SandboxOptions {
            threads: options.slots.max(1) as usize,
            scratch_dir: options.data_dir.join("scratch"),
        })
        .map_err(|error| StartError::Sandbox(error.0))?;
        let listener = TcpListener::bind(options.listen)
            .await
            .map_err(|source| StartError::Listen {
                addr: options.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| StartError::Listen {
            addr: options.listen,
            source,
        })?;
        let public_key = identity.public_key();
        let fingerprint = sandbox.fingerprint().to_owned();
        let service = WorkerService::new(
            identity,
            sandbox,
            blobs,
            TrustPolicy::new(options.trust),
            options.slots.max(1),
        );
        Ok(Self {
            listener,
            service,
            addr,
            public_key,
            fingerprint,
        })
    }

    /// Serves until `shutdown` completes, then stops accepting and lets running calls finish.
    pub async fn serve(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> Result<(), StartError> {
        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        health_reporter
            .set_serving::<peergrid_proto::pb::worker_server::WorkerServer<WorkerService>>()
            .await;
        tonic::transport::Server::builder()
            .add_service(health_service)
            .add_service(self.service.into_server())
            .serve_with_incoming_shutdown(TcpListenerStream::new(self.listener), shutdown)
            .await?;
        Ok(())
    }
}
