//! Training: loss, optimizer and schedules, checkpoints, validation.

pub mod loss;
