//! attnlab
