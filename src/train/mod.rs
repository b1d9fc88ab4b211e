//! Training: loss, optimizer and schedules, checkpoints, validation.

pub mod optim;
pub mod schedule;
