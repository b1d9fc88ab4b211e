//! rnmt: neural machine translation in the GNMT tradition.
//!
//! The modules follow the pipeline: corpus → subword → batch → model → train → search →
//! metrics.

pub mod batch;
pub mod cli;
pub mod corpus;
pub mod device;
pub mod dist;
pub mod hub;
pub mod io;
pub mod lm;
pub mod metrics;
pub mod model;
pub mod plot;
pub mod prepare;
pub mod search;
pub mod serve;
pub mod subword;
pub mod text;
pub mod train;
pub mod translate;
