//! A TCP relay that can cut every connection through it and refuse new ones
//! for a while: a network partition between publishd and its database.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct TcpCut {
    pub address: SocketAddr,
    /// `true` while cut: relays end, new connections are dropped.
    cut: Arc<watch::Sender<bool>>,
}

impl TcpCut {
    pub async fn start(upstream: SocketAddr) -> TcpCut {
        Self::start_on("127.0.0.1:0".parse().unwrap(), upstream).await
    }

    /// A relay on `address` (a port of its own choosing: port 0).
    pub async fn start_on(address: SocketAddr, upstream: SocketAddr) -> TcpCut {
        let listener = TcpListener::bind(address)
            .await
            .unwrap_or_else(|error| panic!("listening on {address}: {error}"));
        let address = listener.local_addr().unwrap();
        let (cut, _) = watch::channel(false);
        let cut = Arc::new(cut);
        let cuts = cut.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if *cuts.borrow() {
                    continue;
                }
                let mut cut_now = cuts.subscribe();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (mut client, mut server) = (client, server);
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut_now.wait_for(|cut| *cut) => {}
                    }
                });
            }
        });
        TcpCut { address, cut }
    }

    /// Cuts every connection, refuses new ones for `outage`, then lets them
    /// through again.
    pub async fn cut_for(&self, outage: Duration) {
        self.cut.send_replace(true);
        tokio::time::sleep(outage).await;
        self.cut.send_replace(false);
    }
}
