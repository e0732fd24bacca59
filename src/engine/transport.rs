//! The one HTTP client the engine is spoken to through: bollard sends its
//! typed calls over it (as a custom transport), and the push, whose answer
//! bollard cannot read safely, is read from it directly. Connections are
//! kept and reused.

use std::path::PathBuf;

use bollard::BollardRequest;
use hyper::Response;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use hyperlocal::UnixConnector;

/// The body type of bollard's requests (which bollard does not name
/// publicly): the client must take exactly it.
pub(super) trait RequestBody {
    type Body;
}

impl<B> RequestBody for hyper::Request<B> {
    type Body = B;
}

pub(super) type EngineBody = <BollardRequest as RequestBody>::Body;

/// What bollard is told the engine's address is; every request is pointed
/// at the real socket or host here.
pub(super) const BOLLARD_ADDRESS: &str = "engine://publishd";

#[derive(Clone)]
pub(super) enum EngineTransport {
    Unix {
        client: Client<UnixConnector, EngineBody>,
        socket: PathBuf,
    },
    Tcp {
        client: Client<HttpConnector, EngineBody>,
        authority: String,
    },
}

impl EngineTransport {
    /// A transport to `host`: `unix:///path` or `tcp://host:port`.
    pub(super) fn new(host: &str) -> anyhow::Result<EngineTransport> {
        if let Some(path) = host.strip_prefix("unix://") {
            Ok(EngineTransport::Unix {
                client: Client::builder(TokioExecutor::new()).build(UnixConnector),
                socket: PathBuf::from(path),
            })
        } else if let Some(authority) = host
            .strip_prefix("tcp://")
            .or_else(|| host.strip_prefix("http://"))
        {
            Ok(EngineTransport::Tcp {
                client: Client::builder(TokioExecutor::new()).build(HttpConnector::new()),
                authority: authority.trim_end_matches('/').to_owned(),
            })
        } else {
            anyhow::bail!("DOCKER_HOST {host:?} is neither unix:// nor tcp://")
        }
    }

    /// The engine's address when it is reached over TCP, which is plain
    /// HTTP: what is sent to it (`X-Registry-Auth` included) can be read on
    /// the way.
    pub(super) fn plain_tcp(&self) -> Option<&str> {
        match self {
            EngineTransport::Tcp { authority, .. } => Some(authority),
            EngineTransport::Unix { .. } => None,
        }
    }

    /// Sends `request`, whatever address it names, to the engine.
    pub(super) async fn send(
        &self,
        mut request: BollardRequest,
    ) -> Result<Response<Incoming>, bollard::errors::Error> {
        let path = request
            .uri()
            .path_and_query()
            .map_or("/", |path| path.as_str())
            .to_owned();
        match self {
            EngineTransport::Unix { client, socket } => {
                *request.uri_mut() = hyperlocal::Uri::new(socket, &path).into();
                Ok(client.request(request).await?)
            }
            EngineTransport::Tcp { client, authority } => {
                *request.uri_mut() = format!("http://{authority}{path}").parse()?;
                Ok(client.request(request).await?)
            }
        }
    }
}
