//! The fence around callbacks: a callback's host is resolved once, every
//! address it resolved to is checked against `--allow-callback`
//! (`domain::callback`), and the request goes through a client that
//! connects to those addresses only and looks no name up itself. A name
//! that resolves elsewhere the second time (DNS rebinding) never gets a
//! connection.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::domain::callback::{CallbackPolicy, CallbackRefusal};
use crate::domain::spec::Callback;

/// Longest a callback's host may take to resolve.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a receiver may take to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Clients kept, one per host and set of checked addresses; past this the
/// cache starts over (a client is cheap to build again, its pool is lost).
const CLIENTS_KEPT: usize = 256;

/// Why a callback was not sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fenced {
    /// An address is one the operator does not allow.
    Refused(CallbackRefusal),
    /// The host did not resolve (now: it may later).
    Unresolved(String),
}

impl std::fmt::Display for Fenced {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fenced::Refused(refusal) => refusal.fmt(f),
            Fenced::Unresolved(why) => f.write_str(why),
        }
    }
}

/// Checks callbacks and makes the clients that send them.
#[derive(Clone)]
pub struct CallbackFence {
    policy: Arc<CallbackPolicy>,
    clients: Arc<Mutex<HashMap<Pinned, reqwest::Client>>>,
}

/// A host and the addresses checked for it: what a kept client reaches.
type Pinned = (String, Vec<SocketAddr>);

impl CallbackFence {
    pub fn new(policy: CallbackPolicy) -> CallbackFence {
        CallbackFence {
            policy: Arc::new(policy),
            clients: Arc::default(),
        }
    }

    /// The addresses `callback` may be sent to: its host resolved once,
    /// each address allowed, or why not.
    pub async fn addresses(&self, callback: &Callback) -> Result<Vec<SocketAddr>, Fenced> {
        let addresses = match callback.host.parse::<IpAddr>() {
            Ok(address) => vec![SocketAddr::new(address, callback.port)],
            Err(_) => resolve(&callback.host, callback.port).await?,
        };
        for address in &addresses {
            self.policy
                .check(&callback.host, callback.port, address.ip())
                .map_err(Fenced::Refused)?;
        }
        Ok(addresses)
    }

    /// A client that reaches `callback`'s host only at addresses checked
    /// now.
    pub async fn client(&self, callback: &Callback) -> Result<reqwest::Client, Fenced> {
        let mut addresses = self.addresses(callback).await?;
        addresses.sort();
        let key = (callback.host.clone(), addresses);
        let mut clients = self
            .clients
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(client) = clients.get(&key) {
            return Ok(client.clone());
        }
        if clients.len() >= CLIENTS_KEPT {
            clients.clear();
        }
        let client = pinned_client(&key.0, &key.1);
        clients.insert(key, client.clone());
        Ok(client)
    }
}

/// A client whose only name is `host`, at `addresses`: receivers are
/// reached as given, with no proxy from the environment, no redirects (a
/// delivery goes only where the job said), and no lookup of its own.
fn pinned_client(host: &str, addresses: &[SocketAddr]) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(CONNECT_TIMEOUT)
        .resolve_to_addrs(host, addresses)
        .dns_resolver(Arc::new(NoLookups))
        .build()
        .expect("a plain HTTP client builds")
}

/// Resolves nothing: every name a pinned client may reach is given to it.
struct NoLookups;

impl reqwest::dns::Resolve for NoLookups {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let name = name.as_str().to_owned();
        Box::pin(async move { Err(format!("{name} was not checked for this callback").into()) })
    }
}

async fn resolve(host: &str, port: u16) -> Result<Vec<SocketAddr>, Fenced> {
    let unresolved = |why: String| Fenced::Unresolved(format!("{host} does not resolve: {why}"));
    let found = tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((host, port)))
        .await
        .map_err(|_| unresolved(format!("no answer in {}s", RESOLVE_TIMEOUT.as_secs())))?
        .map_err(|error| unresolved(error.to_string()))?;
    let mut addresses: Vec<SocketAddr> = found.collect();
    addresses.dedup();
    if addresses.is_empty() {
        return Err(unresolved("no addresses".to_owned()));
    }
    Ok(addresses)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn callback(url: &str) -> Callback {
        Callback::parse(url).unwrap()
    }

    #[tokio::test]
    async fn loopback_is_reached_only_where_the_list_names_it() {
        let open = CallbackFence::new(CallbackPolicy::default());
        for url in [
            "http://127.0.0.1:9/hooks",
            "http://localhost:9/hooks",
            "http://[::1]:9/hooks",
            "http://[::ffff:127.0.0.1]:9/hooks",
            "http://0x7f.1:9/hooks",
        ] {
            assert!(
                matches!(
                    open.addresses(&callback(url)).await,
                    Err(Fenced::Refused(_))
                ),
                "{url}"
            );
        }
        let listed = CallbackFence::new(CallbackPolicy::new(&["127.0.0.1".to_owned()]).unwrap());
        assert_eq!(
            listed
                .addresses(&callback("http://127.0.0.1:9/hooks"))
                .await
                .unwrap(),
            ["127.0.0.1:9".parse().unwrap()]
        );
        assert!(matches!(
            listed.addresses(&callback("http://[::1]:9/hooks")).await,
            Err(Fenced::Refused(_))
        ));
    }
}
