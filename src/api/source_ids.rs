//! Submissions' source lookups, shared. Each submission asks the engine
//! which image id its source names now (`jobs::resolve_sources`); under
//! load that is one engine request per POST, which costs the engine more
//! CPU than the whole submission costs publishd. Concurrent submissions of
//! one source share a lookup instead, but only one that *started after they
//! asked*: a lookup already under way may predate a rebuild the submitter
//! has just finished, so they wait for the next round. Each answer thus
//! says what the source named at some moment after its submission arrived,
//! as a lookup of its own would.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;

use crate::engine::Engine;

/// Submissions waiting for the next lookup of one source.
type Asking = Vec<oneshot::Sender<Option<String>>>;

/// Submissions waiting for the next lookup of each source. A source is
/// here exactly while a task runs its rounds.
#[derive(Clone, Default)]
pub struct SourceIds {
    waiting: Arc<Mutex<HashMap<String, Asking>>>,
}

impl SourceIds {
    /// The image id `source` names, if the engine says within `timeout`.
    pub async fn image_id(
        &self,
        engine: &Arc<dyn Engine>,
        source: &str,
        timeout: Duration,
    ) -> Option<String> {
        let (sender, answer) = oneshot::channel();
        let first = {
            let mut waiting = self.waiting.lock().expect("source lookups poisoned");
            match waiting.get_mut(source) {
                Some(asking) => {
                    asking.push(sender);
                    false
                }
                None => {
                    waiting.insert(source.to_owned(), vec![sender]);
                    true
                }
            }
        };
        if first {
            tokio::spawn(
                self.clone()
                    .rounds(engine.clone(), source.to_owned(), timeout),
            );
        }
        // Bounded here too: a submission never waits for more than its own
        // lookup's time, even when it arrived during a slow round.
        tokio::time::timeout(timeout, answer)
            .await
            .ok()
            .and_then(Result::ok)
            .flatten()
    }

    /// Looks `source` up for everyone who asked before the lookup started,
    /// again and again until nobody is waiting.
    async fn rounds(self, engine: Arc<dyn Engine>, source: String, timeout: Duration) {
        loop {
            let asking = {
                let mut waiting = self.waiting.lock().expect("source lookups poisoned");
                let Some(asking) = waiting.get_mut(&source) else {
                    return;
                };
                if asking.is_empty() {
                    waiting.remove(&source);
                    return;
                }
                std::mem::take(asking)
            };
            let id = match tokio::time::timeout(timeout, engine.image_id(&source)).await {
                Ok(Ok(id)) => id,
                Ok(Err(_)) | Err(_) => None,
            };
            for sender in asking {
                // One that gave up waiting has gone.
                let _ = sender.send(id.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use async_trait::async_trait;
    use futures_util::future::join_all;
    use tokio::sync::Notify;

    use super::*;
    use crate::credentials::RegistryAuth;
    use crate::engine::{
        EngineDescription, EngineError, LabelBuild, LabelledImage, NoEngine, PushProgress,
        SourceImage,
    };

    /// An engine whose lookups wait for `release` and answer the number of
    /// the lookup: each answer says which lookup it came from.
    #[derive(Default)]
    struct Counting {
        lookups: AtomicUsize,
        release: Notify,
    }

    #[async_trait]
    impl Engine for Counting {
        async fn image_id(&self, _: &str) -> Result<Option<String>, EngineError> {
            let number = self.lookups.fetch_add(1, Ordering::SeqCst) + 1;
            self.release.notified().await;
            Ok(Some(format!("sha256:{number}")))
        }
        // Nothing else is asked of it: the rest answers as no engine does.
        async fn ping(&self) -> Result<(), EngineError> {
            NoEngine.ping().await
        }
        async fn describe(&self) -> Result<EngineDescription, EngineError> {
            NoEngine.describe().await
        }
        async fn inspect_image(&self, name: &str) -> Result<Option<SourceImage>, EngineError> {
            NoEngine.inspect_image(name).await
        }
        async fn load_image(&self, image: &LabelledImage, to: &str) -> Result<(), EngineError> {
            NoEngine.load_image(image, to).await
        }
        async fn build_image(&self, build: &LabelBuild, to: &str) -> Result<String, EngineError> {
            NoEngine.build_image(build, to).await
        }
        async fn push(
            &self,
            reference: &str,
            auth: &RegistryAuth,
            progress: &(dyn Fn(PushProgress) + Send + Sync),
        ) -> Result<String, EngineError> {
            NoEngine.push(reference, auth, progress).await
        }
        async fn remove_reference(&self, reference: &str) -> Result<(), EngineError> {
            NoEngine.remove_reference(reference).await
        }
        async fn tag_image(&self, id: &str, reference: &str) -> Result<(), EngineError> {
            NoEngine.tag_image(id, reference).await
        }
    }

    #[tokio::test]
    async fn who_asks_during_a_lookup_gets_the_next_one() {
        let counting = Arc::new(Counting::default());
        let engine: Arc<dyn Engine> = counting.clone();
        let ids = SourceIds::default();
        let timeout = Duration::from_secs(10);
        let ask = || {
            let (ids, engine) = (ids.clone(), engine.clone());
            tokio::spawn(async move { ids.image_id(&engine, "app:1", timeout).await })
        };
        let early: Vec<_> = (0..5).map(|_| ask()).collect();
        while counting.lookups.load(Ordering::SeqCst) < 1 {
            tokio::task::yield_now().await;
        }
        // Asked while the first lookup is under way: not answered by it.
        let late: Vec<_> = (0..5).map(|_| ask()).collect();
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        counting.release.notify_one();
        for answer in join_all(early).await {
            assert_eq!(answer.unwrap().as_deref(), Some("sha256:1"));
        }
        while counting.lookups.load(Ordering::SeqCst) < 2 {
            tokio::task::yield_now().await;
        }
        counting.release.notify_one();
        for answer in join_all(late).await {
            assert_eq!(answer.unwrap().as_deref(), Some("sha256:2"));
        }
        assert_eq!(counting.lookups.load(Ordering::SeqCst), 2);
        assert!(ids.waiting.lock().unwrap().is_empty());
    }
}
