//! attn-flash
