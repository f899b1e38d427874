//! Unit tests of the JIT: filled below.
