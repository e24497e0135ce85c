//! Score modifiers in the flash backward: gradients (and dsinks) against the f64 oracle backward.
