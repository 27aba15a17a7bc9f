//! Serving: bind, run the router until told to stop, stop gracefully and write the state one
//! last time.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::api::router;
use super::app::Issuer;
use super::config::IssuerConfig;
use super::error::StartError;

/// How long a stop waits for requests in flight before cutting them off.
const DRAIN: Duration = Duration::from_secs(5);

/// A development issuer serving on a socket. Dropping it stops it (without the final state
/// write: call [`RunningIssuer::shutdown`] for a clean stop).
#[derive(Debug)]
pub struct RunningIssuer {
    addr: SocketAddr,
    issuer: Arc<Issuer>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

/// Start an issuer: open its state and keys (on a blocking thread), bind `config.listen`, and
/// serve in a background task of the current tokio runtime.
pub async fn serve(config: IssuerConfig) -> Result<RunningIssuer, StartError> {
    let listen = config.listen;
    let issuer = tokio::task::spawn_blocking(move || Issuer::open(&config))
        .await
        .map_err(|e| StartError::Config(format!("the issuer could not be set up: {e}")))??;
    let issuer = Arc::new(issuer);
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| StartError::Bind {
            addr: listen.to_string(),
            message: e.to_string(),
        })?;
    let addr = listener.local_addr().map_err(|e| StartError::Bind {
        addr: listen.to_string(),
        message: e.to_string(),
    })?;
    let app = router(issuer.clone());
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await
    });
    Ok(RunningIssuer {
        addr,
        issuer,
        stop: Some(stop),
        task: Some(task),
    })
}

impl RunningIssuer {
    /// The bound address (the real port when `listen` asked for port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`; for a wildcard listen address (`0.0.0.0`, `[::]`), the loopback address
    /// of the same family, which is how a client on this machine reaches it.
    pub fn url(&self) -> String {
        let mut addr = self.addr;
        if addr.ip().is_unspecified() {
            addr.set_ip(match addr.ip() {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
            });
        }
        format!("http://{addr}")
    }

    /// `http://ADDR/.well-known/jwks.json`.
    pub fn jwks_url(&self) -> String {
        format!("{}/.well-known/jwks.json", self.url())
    }

    /// The shared state (keys, store).
    pub fn issuer(&self) -> &Arc<Issuer> {
        &self.issuer
    }

    /// The `iss` of the tokens.
    pub fn iss(&self) -> &str {
        self.issuer.iss()
    }

    pub fn admin_key(&self) -> &str {
        self.issuer.admin_key()
    }

    /// `name -> id` of the seeded identities.
    pub fn identities(&self) -> &BTreeMap<String, String> {
        self.issuer.seeded()
    }

    /// What the `READY` line carries: `url`, `jwks`, `iss`, `admin_key`, `alg`, `identities`.
    pub fn ready_json(&self) -> Value {
        json!({
            "url": self.url(),
            "jwks": self.jwks_url(),
            "iss": self.iss(),
            "admin_key": self.admin_key(),
            "alg": self.issuer.algorithm().as_str(),
            "identities": self.identities(),
        })
    }

    /// Stop accepting, let requests in flight finish (up to a few seconds), then write the
    /// state directory one last time.
    pub async fn shutdown(mut self) -> Result<(), StartError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(mut task) = self.task.take()
            && tokio::time::timeout(DRAIN, &mut task).await.is_err()
        {
            task.abort();
        }
        let issuer = self.issuer.clone();
        tokio::task::spawn_blocking(move || issuer.flush_blocking())
            .await
            .map_err(|e| StartError::Config(e.to_string()))?
            .map_err(|e| StartError::State {
                path: self
                    .issuer
                    .state_dir()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                message: e.to_string(),
            })
    }
}

impl Drop for RunningIssuer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
