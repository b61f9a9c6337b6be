//! Helpers of the end-to-end tests: the shared kit (`dwbase-testkit`: polling, ports, running
//! programs, guards) plus drivers of the real `dwbase`, `dwbase-node` and `dwbase-supervisor`
//! binaries of this package.
//!
//! Each test file includes this with `mod support;` and uses what it needs.
#![allow(dead_code)]

pub mod dwbase;
pub mod node;
pub mod supervisor;

pub use dwbase_testkit::*;
