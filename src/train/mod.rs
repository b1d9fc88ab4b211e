//! Training: loss, optimizer and schedules, checkpoints, validation.

pub mod checkpoint;
pub mod config;
pub mod data_parallel;
pub mod ema;
pub mod log;
pub mod loss;
pub mod optim;
pub mod schedule;
pub mod trainer;
pub mod tune;
