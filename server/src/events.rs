//! Change events for `Ledger.Watch`: refs set and stage results recorded, fanned out to
//! every watcher through a bounded broadcast channel.

use stagecache_proto::v1::{RefChange, StageResult};
use stagecache_proto::Namespace;
use tokio::sync::broadcast;

#[derive(Debug, Clone)]
pub enum Change {
    RefSet(RefChange),
    StageRecorded(StageResult),
}

#[derive(Debug, Clone)]
pub struct Event {
    pub namespace: Namespace,
    pub change: Change,
}

/// The publishing side; cheap to clone.
#[derive(Clone)]
pub struct Events {
    tx: broadcast::Sender<Event>,
}

impl Default for Events {
    fn default() -> Self {
        let (tx, _) = broadcast::channel(4096);
        Events { tx }
    }
}

impl Events {
    pub fn publish(&self, namespace: &Namespace, change: Change) {
        // No watcher is not an error.
        let _ = self.tx.send(Event {
            namespace: namespace.clone(),
            change,
        });
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }
}
