//! Training: loss, optimizer and schedules, checkpoints, validation.

pub mod checkpoint;
pub mod log;
pub mod optim;
pub mod schedule;
