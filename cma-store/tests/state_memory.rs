//! The conformance suite against the in-memory store (clones share one store).

use std::sync::Arc;

use cma_store::state::{MemoryStateStore, StateStore, conformance};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_store_passes_the_conformance_suite() {
    let store = MemoryStateStore::new();
    conformance::run(|| {
        let store = store.clone();
        async move { Ok(Arc::new(store) as Arc<dyn StateStore>) }
    })
    .await;
}
