//! attnlab's cross-crate tests: one binary, one module per topic.

// Shared helpers: seeded inputs, the tolerance model, the worst-element assertion.
mod common;
// Named seed cases (groupings, lengths around tile edges, every mask, d = 1..256, extreme logits) x every kernel.
mod seeds;
// Property tests: every kernel against the f64 oracle over random shapes, masks, layouts and tiles.
mod props;
// Flash-specific guarantees: identical bits for any thread count, f16/bf16 inputs, memory independent of N.
mod flash;
// Decode against a KV cache (every grouping, cache dtype, nq, ragged batches) and merge_partials.
mod decode;
// Hostile inputs: non-finite values named, huge finite values exact, no panics.
mod hardening;
// Gradients: naive and flash backward against the f64 oracle backward, GQA, masked rows, determinism.
mod backward;
// Score modifiers in the f64 oracle and naive: finite differences of the softcap and sink gradients, naive against the oracle.
mod modifiers_oracle;
// Score modifiers in the flash forward: each alone and combined against the oracle, extremes, identical bits.
mod modifiers_flash;
// Score modifiers in split-KV decode and the KV cache path: softcap, ALiBi, sinks against the oracle.
mod modifiers_decode;
// Score modifiers in the flash backward: gradients (and dsinks) against the f64 oracle backward.
mod modifiers_backward;
// Saturation statistics (max probability, entropy) of flash against the oracle.
mod stats;
// Backward statistics (off_argmax, key_grad) of the flash backward against the f64 oracle backward.
mod stats_backward;
// Chunks at global positions (flash and the oracle) and ring attention over in-process ranks: against flash and the oracle, identical bits, the plan, failures.
mod ring;
// Saturation statistics on flash's split-KV path: decode over every cache dtype and calls over plain K/V against the oracle.
mod stats_decode;
