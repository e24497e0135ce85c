//! attn-layer's tests: one binary, one module per topic.

// Shared helpers: seeded layers and inputs, the tolerance model, the worst-element assertion.
mod common;
// The f64 reference itself: its attention against the oracle, its gradient against finite differences.
mod reference;
// The layer's forward against the f64 reference: self, causal, cross, GQA, MQA, biases, modifiers, threads.
mod forward;
// The layer's gradients against the f64 reference's and against finite differences of the f64 layer.
mod grads;
// Incremental decoding: prefill + steps equal the causal forward; all-or-nothing on the cache.
mod decode;
// Bad input: wrong widths, batches and weight shapes, non-finite values, foreign caches, each named.
mod errors;
// Saturation statistics through the layer: unchanged outputs and gradients, values equal to the oracle's.
mod stats;
