//! Which KV-cache layers decode attention may read before its PDL wait.
//!
//! `ops::rope_attention(.., early)` loads the cache positions before each row's own while the
//! previous kernel still runs. That is sound only for positions whose writers finished before
//! the previous kernel started. The embedding kernel lets the next kernel launch only after all
//! work queued before it has finished, so a layer last written before the latest embedding
//! qualifies; one written since (a prefill chunk, a store in this step) does not.

/// Per layer, the count of embeddings queued before its last write.
#[derive(Clone, Debug)]
pub(super) struct LayerWrites(Vec<u64>);

impl LayerWrites {
    /// No layer written since zero embeddings.
    pub(super) fn new(layers: usize) -> Self {
        LayerWrites(vec![0; layers])
    }
    /// Notes a write to `layer` (every layer: `None`) after `embeds` embeddings were queued.
    /// Layers out of range are ignored (the op itself reports them).
    pub(super) fn wrote(&mut self, layer: Option<usize>, embeds: u64) {
        match layer {
            Some(l) => self.0.get_mut(l).into_iter().for_each(|w| *w = embeds),
            None => self.0.iter_mut().for_each(|w| *w = embeds),
        }
    }
    /// True when every write to `layer` was queued before the latest of `embeds` embeddings.
    pub(super) fn settled(&self, layer: usize, embeds: u64) -> bool {
        self.0.get(layer).is_some_and(|&w| w < embeds)
    }
}

#[cfg(test)]
mod tests {
    use super::LayerWrites;

    #[test]
    fn a_layer_is_settled_only_after_an_embedding_since_its_last_write() {
        let mut w = LayerWrites::new(3);
        // Before any embedding nothing is settled (the cache was just zeroed).
        assert!(!w.settled(0, 0));
        // Step 1: embedding 1 queued, then layer 0 written (its own position) by attention.
        assert!(w.settled(0, 1));
        w.wrote(Some(0), 1);
        assert!(!w.settled(0, 1), "written in this step");
        assert!(w.settled(1, 1));
        // Step 2: after the next embedding layer 0 is settled again.
        assert!(w.settled(0, 2));
        // A one-kernel step writes every layer.
        w.wrote(None, 2);
        assert!((0..3).all(|l| !w.settled(l, 2)));
        assert!((0..3).all(|l| w.settled(l, 3)));
        // Out of range: never settled, and writes there are ignored.
        w.wrote(Some(7), 3);
        assert!(!w.settled(7, 9));
    }
}
