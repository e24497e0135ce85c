//! Score modifiers in the f64 oracle and naive: finite differences of the softcap and sink gradients, naive against the oracle.
