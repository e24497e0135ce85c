//! Score modifiers in the flash forward: each alone and combined against the oracle, extremes, identical bits.
