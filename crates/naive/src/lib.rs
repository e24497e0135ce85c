//! attn-naive
