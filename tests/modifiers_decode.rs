//! Score modifiers in split-KV decode and the KV cache path: softcap, ALiBi, sinks against the oracle.
